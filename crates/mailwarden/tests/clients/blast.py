#!/usr/bin/env python3
"""A hijacked account as spammers use it: log in once and send message after message to
random external recipients until the server stops accepting. Reports JSON:
{"accepted": N, "code": 550, "message": "..."}.

  blast.py [--host 127.0.0.1] --port 2465 --user u --password p --count 10000
"""
import argparse
import json
import smtplib
import ssl


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--count", type=int, default=10000)
    args = p.parse_args()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    accepted, code, message = 0, None, ""
    s = smtplib.SMTP_SSL(args.host, args.port, context=ctx, timeout=30)
    s.login(args.user, args.password)
    try:
        for i in range(args.count):
            to = f"x{i * 7919 % 100003}@victim{i % 97}.test"
            msg = (f"From: <{args.user}>\r\nTo: <{to}>\r\nSubject: cheap pills {i}\r\n\r\n"
                   "Buy now.\r\n")
            s.sendmail(args.user, [to], msg)
            accepted += 1
    except smtplib.SMTPResponseException as e:
        code, message = e.smtp_code, e.smtp_error.decode(errors="replace")
    except smtplib.SMTPRecipientsRefused as e:
        v = list(e.recipients.values())[0]
        code, message = v[0], v[1].decode(errors="replace")
    except (smtplib.SMTPException, OSError) as e:
        message = repr(e)
    print(json.dumps({"accepted": accepted, "code": code, "message": message}))


if __name__ == "__main__":
    main()
