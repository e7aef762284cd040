#!/usr/bin/env python3
"""Sign a message with dkimpy, an implementation independent of mailwarden's, and print it.

  dkim_sign.py --domain sender.test --selector test --key rsa.pem [--ed25519-seed seed.b64
               --ed25519-selector brisbane] < message > signed

With both keys the message is dual-signed (RSA first, then Ed25519, as RFC 8463 suggests).
"""
import argparse
import sys

import dkim


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--domain", required=True)
    p.add_argument("--selector")
    p.add_argument("--key", help="RSA private key, PEM")
    p.add_argument("--ed25519-seed", help="Ed25519 seed, base64")
    p.add_argument("--ed25519-selector")
    args = p.parse_args()
    msg = sys.stdin.buffer.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    out = msg
    if args.key:
        key = open(args.key, "rb").read()
        sig = dkim.sign(out, args.selector.encode(), args.domain.encode(), key,
                        canonicalize=(b"relaxed", b"relaxed"), include_headers=headers)
        out = sig + out
    if args.ed25519_seed:
        seed = open(args.ed25519_seed, "rb").read().strip()
        sig = dkim.sign(out, args.ed25519_selector.encode(), args.domain.encode(), seed,
                        canonicalize=(b"relaxed", b"relaxed"), include_headers=headers,
                        signature_algorithm=b"ed25519-sha256")
        out = sig + out
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
