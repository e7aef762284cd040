#!/usr/bin/env python3
"""Send numbered messages to port 25 from several threads, one connection per message, and
append the number of every message that got a 250 to --acks (flushed at once), so a test can
kill the server mid-load and know exactly which messages were promised.

  load.py --port 2525 --count 400 --threads 16 --to bob@example.test --acks acks.txt
"""
import argparse
import smtplib
import threading


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--to", required=True)
    p.add_argument("--acks", required=True)
    args = p.parse_args()
    lock = threading.Lock()
    acks = open(args.acks, "a", buffering=1)
    next_i = [0]
    failures = [0]

    def worker():
        while True:
            with lock:
                if next_i[0] >= args.count or failures[0] > 50:
                    return
                i = next_i[0]
                next_i[0] += 1
            body = (f"From: load@remote.test\r\nTo: {args.to}\r\nSubject: load-{i}\r\n"
                    f"Message-ID: <load-{i}@remote.test>\r\n\r\nmessage {i}\r\n")
            try:
                with smtplib.SMTP("127.0.0.1", args.port, timeout=20) as s:
                    s.ehlo("load.remote.test")
                    code, _ = s.mail("load@remote.test")
                    if code != 250:
                        raise smtplib.SMTPException("mail")
                    code, _ = s.rcpt(args.to)
                    if code != 250:
                        raise smtplib.SMTPException("rcpt")
                    code, _ = s.data(body)
                    if code == 250:
                        with lock:
                            acks.write(f"{i}\n")
            except (smtplib.SMTPException, OSError):
                with lock:
                    failures[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
