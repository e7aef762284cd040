#!/usr/bin/env python3
"""Send one message with Python's smtplib, the way a mail client does, and report as JSON.

  send.py --port 2465 --mode ssl --user alice@example.test --password pw \
          --auth PLAIN --from alice@example.test --to bob@example.test --subject hi

Modes: plain (port 25 style), starttls (587), ssl (465, implicit TLS).
Output: {"ok": true, "refused": {...}} or {"ok": false, "stage": "...", "code": 554,
"message": "..."}.
"""
import argparse
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage
from email.utils import make_msgid


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["plain", "starttls", "ssl"], default="plain")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--auth", choices=["PLAIN", "LOGIN"], default=None)
    p.add_argument("--from", dest="sender", required=True)
    p.add_argument("--header-from")
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--subject", default="test")
    p.add_argument("--body", default="Hello from smtplib.\n")
    p.add_argument("--count", type=int, default=1, help="messages on one connection")
    p.add_argument("--raw", action="store_true", help="send the message read from stdin as is")
    p.add_argument("--source", help="client address to connect from (127.0.0.0/8)")
    args = p.parse_args()

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stage = "connect"
    try:
        src = (args.source, 0) if args.source else None
        if args.mode == "ssl":
            s = smtplib.SMTP_SSL(args.host, args.port, context=ctx, timeout=30, source_address=src)
        else:
            s = smtplib.SMTP(args.host, args.port, timeout=30, source_address=src)
        stage = "ehlo"
        s.ehlo("client.example.net")
        if args.mode == "starttls":
            stage = "starttls"
            s.starttls(context=ctx)
            s.ehlo("client.example.net")
        if args.user:
            stage = "auth"
            if args.auth:
                s.user, s.password = args.user, args.password
                code, resp = s.auth(args.auth, getattr(s, "auth_" + args.auth.lower()), initial_response_ok=True)
            else:
                s.login(args.user, args.password)
        refused = {}
        if args.raw:
            stage = "send"
            r = s.sendmail(args.sender, args.to, sys.stdin.buffer.read())
            refused.update({k: [v[0], v[1].decode()] for k, v in r.items()})
            s.quit()
            json.dump({"ok": True, "refused": refused}, sys.stdout)
            return
        for i in range(args.count):
            msg = EmailMessage()
            msg["From"] = args.header_from or args.sender
            msg["To"] = ", ".join(args.to)
            msg["Subject"] = args.subject if args.count == 1 else f"{args.subject} {i}"
            msg["Message-ID"] = make_msgid(domain="client.example.net")
            msg.set_content(args.body)
            stage = "send"
            r = s.send_message(msg, from_addr=args.sender, to_addrs=args.to)
            refused.update({k: [v[0], v[1].decode()] for k, v in r.items()})
        s.quit()
        json.dump({"ok": True, "refused": refused}, sys.stdout)
    except smtplib.SMTPRecipientsRefused as e:
        json.dump({"ok": False, "stage": "rcpt",
                   "code": list(e.recipients.values())[0][0],
                   "message": list(e.recipients.values())[0][1].decode()}, sys.stdout)
    except smtplib.SMTPResponseException as e:
        json.dump({"ok": False, "stage": stage, "code": e.smtp_code,
                   "message": e.smtp_error.decode() if isinstance(e.smtp_error, bytes) else str(e.smtp_error)},
                  sys.stdout)
    except (smtplib.SMTPException, OSError) as e:
        json.dump({"ok": False, "stage": stage, "code": None, "message": repr(e)}, sys.stdout)


if __name__ == "__main__":
    main()
