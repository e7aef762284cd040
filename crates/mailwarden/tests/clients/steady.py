#!/usr/bin/env python3
"""A heavy but legitimate sender over a simulated week: `--per-hour` messages an hour, each to
one of its usual correspondents, and once a day one message to all its colleagues. Between
messages it moves the server's clock (the file named by MAILWARDEN_TEST_CLOCK) forward, so a
week passes in a minute or two. Stops at the first refusal. Reports JSON:
{"sent": N, "code": null or the refusal's code, "message": "...", "hour": H}.

  steady.py --port 2465 --user u --password p --clock FILE --hours 168 --per-hour 150 \
            --to a@x --to b@x ... --colleague c@x ...
"""
import argparse
import json
import smtplib
import ssl

# Reconnect before the server's messages-per-session limit.
PER_SESSION = 500


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--clock", required=True)
    p.add_argument("--hours", type=int, default=168)
    p.add_argument("--per-hour", type=int, default=150)
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--colleague", action="append", default=[])
    args = p.parse_args()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    step_ms = 3_600_000 // args.per_hour
    offset = 0
    sent, code, message, hour = 0, None, "", 0
    s = None

    def send(to, subject):
        nonlocal s, sent
        if s is None or sent % PER_SESSION == 0:
            if s is not None:
                s.quit()
            s = smtplib.SMTP_SSL("127.0.0.1", args.port, context=ctx, timeout=30)
            s.login(args.user, args.password)
        msg = (f"From: <{args.user}>\r\nTo: colleagues\r\nSubject: {subject}\r\n\r\n"
               "Minutes of today's meeting attached.\r\n")
        s.sendmail(args.user, to, msg)
        sent += 1

    try:
        n = 0
        for hour in range(args.hours):
            for _ in range(args.per_hour):
                send([args.to[(n * 7919) % len(args.to)]], f"note {n}")
                n += 1
                offset += step_ms
                with open(args.clock, "w") as f:
                    f.write(str(offset))
            if args.colleague and hour % 24 == 9:
                send(args.colleague, f"daily {hour // 24}")
    except smtplib.SMTPResponseException as e:
        code, message = e.smtp_code, e.smtp_error.decode(errors="replace")
    except smtplib.SMTPRecipientsRefused as e:
        v = list(e.recipients.values())[0]
        code, message = v[0], v[1].decode(errors="replace")
    except (smtplib.SMTPException, OSError) as e:
        message = repr(e)
    print(json.dumps({"sent": sent, "code": code, "message": message, "hour": hour}))


if __name__ == "__main__":
    main()
