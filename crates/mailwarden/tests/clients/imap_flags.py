#!/usr/bin/env python3
"""A real IMAP client (imaplib) that sets and reads the flags of INBOX messages, for the
tests that share a Maildir between POP3 and IMAP.

  imap_flags.py --port N --user U --password P [--flag SUBJECT FLAG]... [--expunge SUBJECT]...

Prints {"SUBJECT": ["\\\\Seen", ...], ...} for INBOX after the changes.
"""
import argparse, email, imaplib, json, re, sys


def listing(m):
    m.select("INBOX")
    typ, data = m.uid("SEARCH", None, "ALL")
    out = {}
    for uid in data[0].split():
        typ, d = m.uid("FETCH", uid, "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        meta = d[0][0].decode() if isinstance(d[0], tuple) else ""
        raw = d[0][1] if isinstance(d[0], tuple) else b""
        flags = re.search(r"FLAGS \(([^)]*)\)", meta)
        subject = email.message_from_bytes(raw).get("Subject", "")
        out[subject] = {"uid": uid.decode(), "flags": sorted(flags.group(1).split()) if flags else []}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--flag", nargs=2, action="append", default=[], metavar=("SUBJECT", "FLAG"))
    p.add_argument("--expunge", action="append", default=[], metavar="SUBJECT")
    a = p.parse_args()
    m = imaplib.IMAP4("127.0.0.1", a.port)
    m.login(a.user, a.password)
    now = listing(m)
    for subject, flag in a.flag:
        m.uid("STORE", now[subject]["uid"], "+FLAGS", "(%s)" % flag)
    for subject in a.expunge:
        m.uid("STORE", now[subject]["uid"], "+FLAGS", "(\\Deleted)")
    if a.expunge:
        m.expunge()
    json.dump({k: v["flags"] for k, v in listing(m).items()}, sys.stdout)
    m.logout()


if __name__ == "__main__":
    main()
