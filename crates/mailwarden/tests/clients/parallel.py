#!/usr/bin/env python3
"""A stolen password used from many sessions at once: every session logs in, names its
recipients, then sends one message. Reports JSON with what the server accepted:
{"rcpt_ok": N, "messages_ok": N, "rcpts_delivered": N, "codes": {"451": n, ...}}

  parallel.py --port 2465 --user u --password p --sessions 50 --rcpts 100
"""
import argparse
import collections
import json
import smtplib
import ssl
import threading


def session(args, n, out, lock, start):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    codes = collections.Counter()
    rcpt_ok, msg_ok, delivered = 0, 0, 0
    try:
        s = smtplib.SMTP_SSL("127.0.0.1", args.port, context=ctx, timeout=60)
        s.login(args.user, args.password)
        start.wait()
        code, _ = s.mail(args.user)
        codes[str(code)] += 1
        if code == 250:
            mine = 0
            for i in range(args.rcpts):
                code, _ = s.rcpt(f"r{n}-{i}@victim{i % 13}.test")
                codes[str(code)] += 1
                if code == 250:
                    mine += 1
            rcpt_ok += mine
            if mine:
                msg = f"From: <{args.user}>\r\nTo: undisclosed-recipients:;\r\nSubject: offer {n}\r\n\r\nBuy now.\r\n"
                try:
                    # data() raises for a refused DATA command, but returns the final reply.
                    code, _ = s.data(msg)
                    codes[f"{code}-data"] += 1
                    if code == 250:
                        msg_ok += 1
                        delivered += mine
                except smtplib.SMTPResponseException as e:
                    codes[f"{e.smtp_code}-data"] += 1
        s.quit()
    except (smtplib.SMTPException, OSError) as e:
        codes[type(e).__name__] += 1
    with lock:
        out["rcpt_ok"] += rcpt_ok
        out["messages_ok"] += msg_ok
        out["rcpts_delivered"] += delivered
        for k, v in codes.items():
            out["codes"][k] = out["codes"].get(k, 0) + v


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--rcpts", type=int, default=100)
    args = p.parse_args()
    out = {"rcpt_ok": 0, "messages_ok": 0, "rcpts_delivered": 0, "codes": {}}
    lock = threading.Lock()
    # Everyone logs in first, then all start the transaction together.
    start = threading.Barrier(args.sessions, timeout=120)
    threads = [threading.Thread(target=session, args=(args, n, out, lock, start))
               for n in range(args.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
