#!/usr/bin/env python3
"""Many logins at the same moment: every session connects (implicit TLS), says EHLO, waits
for the others, then sends one AUTH PLAIN. Reports JSON: {"codes": {"535": n, ...},
"texts": {"454 ...": n}}.

  authflood.py --port 2465 --user u --password p --sessions 30 [--sources 127.0.0.10-39]
"""
import argparse
import base64
import collections
import json
import smtplib
import ssl
import threading


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--sessions", type=int, default=30)
    p.add_argument("--sources", default="",
                   help="127.0.0.A-B or a comma-separated list: source addresses, in turn")
    args = p.parse_args()
    sources = [None] * args.sessions
    if "," in args.sources:
        pool = args.sources.split(",")
        sources = [pool[i % len(pool)] for i in range(args.sessions)]
    elif args.sources:
        prefix, rng = args.sources.rsplit(".", 1)
        lo, hi = (int(x) for x in rng.split("-"))
        pool = [f"{prefix}.{i}" for i in range(lo, hi + 1)]
        sources = [pool[i % len(pool)] for i in range(args.sessions)]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    start = threading.Barrier(args.sessions, timeout=60)
    lock = threading.Lock()
    codes, texts = collections.Counter(), collections.Counter()
    token = base64.b64encode(f"\0{args.user}\0{args.password}".encode()).decode()

    def one(src):
        try:
            s = smtplib.SMTP_SSL("127.0.0.1", args.port, context=ctx, timeout=60,
                                 source_address=(src, 0) if src else None)
            s.ehlo("flood.test")
            start.wait()
            code, msg = s.docmd("AUTH", "PLAIN " + token)
            text = f"{code} {msg.decode(errors='replace')}"
            try:
                s.quit()
            except smtplib.SMTPException:
                pass
        except (smtplib.SMTPException, OSError, threading.BrokenBarrierError) as e:
            code, text = type(e).__name__, repr(e)
        with lock:
            codes[str(code)] += 1
            texts[text] += 1

    threads = [threading.Thread(target=one, args=(src,)) for src in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"codes": codes, "texts": texts}))


if __name__ == "__main__":
    main()
