#!/usr/bin/env python3
"""Verify every DKIM signature of a message with dkimpy, an implementation independent of
mailwarden, using given DNS TXT records instead of the network.

  dkim_verify.py --records records.txt < message.eml

records.txt holds lines `NAME TXT "string" ["string"...]` (zone-file style). Output: JSON
{"signatures": [{"d": ..., "s": ..., "a": ..., "ok": true}, ...]}.
"""
import argparse
import json
import re
import sys

import dkim


def load_records(path):
    recs = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, rest = line.split(None, 1)
        rest = re.sub(r"^(IN\s+)?TXT\s+", "", rest)
        value = "".join(re.findall(r'"([^"]*)"', rest)) or rest
        recs[name.rstrip(".").lower() + "."] = value.encode()
    return recs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--records", required=True)
    args = p.parse_args()
    recs = load_records(args.records)
    msg = sys.stdin.buffer.read()

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        n = n.rstrip(".").lower() + "."
        return recs.get(n)

    d = dkim.DKIM(msg)
    out = []
    count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    for i in range(count):
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
        sig = d.signature_fields
        out.append({
            "d": sig.get(b"d", b"").decode(),
            "s": sig.get(b"s", b"").decode(),
            "a": sig.get(b"a", b"").decode(),
            "h": sig.get(b"h", b"").decode(),
            "ok": bool(ok),
        })
    print(json.dumps({"signatures": out}))


if __name__ == "__main__":
    main()
