#!/usr/bin/env python3
"""Send many prepared messages on the MX port with Python's smtplib, one connection each,
each from its own client address and HELO, and report one JSON line per message.

  send_many.py --port 2525 < jobs.json

jobs.json: [{"file": PATH, "ip": "127.0.0.2", "helo": NAME, "mail_from": ADDR, "rcpt": ADDR}]
Output lines: {"file": PATH, "stage": "data"|"rcpt"|..., "code": 250, "message": "..."}.
The file's bytes are sent as they are (already CRLF).
"""
import argparse
import json
import smtplib
import sys


def send(port, job):
    out = {"file": job["file"]}
    with open(job["file"], "rb") as f:
        raw = f.read()
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname=job["helo"],
                         source_address=(job["ip"], 0), timeout=60)
        try:
            s.ehlo(job["helo"])
            code, msg = s.mail(job["mail_from"])
            if code != 250:
                return {**out, "stage": "mail", "code": code, "message": msg.decode()}
            code, msg = s.rcpt(job["rcpt"])
            if code != 250:
                return {**out, "stage": "rcpt", "code": code, "message": msg.decode()}
            code, msg = s.data(raw)
            return {**out, "stage": "data", "code": code, "message": msg.decode()}
        finally:
            try:
                s.quit()
            except Exception:
                pass
    except smtplib.SMTPResponseException as e:
        return {**out, "stage": "error", "code": e.smtp_code, "message": str(e.smtp_error)}
    except Exception as e:  # noqa: BLE001 - reported, the test decides
        return {**out, "stage": "error", "code": 0, "message": repr(e)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    for job in json.load(sys.stdin):
        print(json.dumps(send(args.port, job)), flush=True)


if __name__ == "__main__":
    main()
