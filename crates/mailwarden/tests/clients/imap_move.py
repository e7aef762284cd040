#!/usr/bin/env python3
"""A real IMAP client (imaplib) for the learning tests: logs in, optionally moves messages
between folders as a mail client does (UID MOVE, or COPY + \\Deleted + EXPUNGE when the
server lacks MOVE), and prints every folder's subjects as JSON.

  imap_move.py --port N --user U --password P [--move SUBJECT FROM TO]...
"""
import argparse, email, email.header, imaplib, json, re, sys


def subjects(m, folder):
    typ, _ = m.select(folder)
    if typ != "OK":
        return None
    typ, data = m.uid("SEARCH", None, "ALL")
    out = []
    for uid in data[0].split():
        typ, d = m.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        raw = d[0][1] if d and isinstance(d[0], tuple) else b""
        subj = email.message_from_bytes(raw).get("Subject", "")
        text = "".join(
            p.decode(c or "utf-8", "replace") if isinstance(p, bytes) else p
            for p, c in email.header.decode_header(subj)
        )
        out.append((uid, text))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--move", nargs=3, action="append", default=[],
                   metavar=("SUBJECT", "FROM", "TO"))
    a = p.parse_args()
    m = imaplib.IMAP4("127.0.0.1", a.port)
    m.login(a.user, a.password)
    moved = 0
    for subject, src, dst in a.move:
        for uid, text in subjects(m, src) or []:
            if subject in text:
                if b"MOVE" in b" ".join(m.capabilities if isinstance(m.capabilities[0], bytes)
                                        else [c.encode() for c in m.capabilities]):
                    typ, _ = m.uid("MOVE", uid, dst)
                else:
                    typ, _ = m.uid("COPY", uid, dst)
                    m.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
                    m.expunge()
                if typ != "OK":
                    sys.exit(f"move {subject} to {dst}: {typ}")
                moved += 1
    typ, listed = m.list()
    folders = {}
    for line in listed:
        name = re.search(rb'"([^"]*)"$|(\S+)$', line)
        n = (name.group(1) or name.group(2)).decode()
        folders[n] = [t for _, t in subjects(m, n) or []]
    m.logout()
    json.dump({"moved": moved, "folders": folders}, sys.stdout)


if __name__ == "__main__":
    main()
