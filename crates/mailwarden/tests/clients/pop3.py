#!/usr/bin/env python3
"""Read a mailbox with Python's poplib, the way a POP3 client does, and report as JSON.

  pop3.py --port 2995 --mode ssl --user alice@example.test --password pw list uidl retr:1 dele:1

Modes: ssl (implicit TLS, port 995), stls (port 110, then STLS), plain (port 110, no TLS).
--source IP connects from that loopback address. Operations, in order, after the login
(which `login` places elsewhere; without --user there is none):
  capa stat list uidl rset noop  retr:N  top:N:LINES  dele:N  login  raw:COMMAND
  noquit (drop the connection without QUIT; QUIT is sent at the end otherwise)
  touch:PATH (create a file: "I am here")  waitfile:PATH (wait, up to 60 s, for a file)
Output: {"welcome": ..., "ops": [{"op": ..., "resp": ..., "lines": [...]} or
{"op": ..., "error": "-ERR ..."}], "quit": ...}. A failed login is reported as its op.
"""
import argparse, json, os, poplib, socket, ssl, sys, time


class Source:
    """poplib connects with socket.create_connection; give it a source address."""

    def __init__(self, source):
        self.source = source

    def __call__(self, addr, timeout=None, source_address=None):
        return Source.orig(addr, timeout, (self.source, 0) if self.source else source_address)


Source.orig = socket.create_connection


def text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["ssl", "stls", "plain"], default="ssl")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--source")
    p.add_argument("ops", nargs="*")
    a = p.parse_args()
    socket.create_connection = Source(a.source)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = {"ops": []}
    if a.mode == "ssl":
        c = poplib.POP3_SSL(a.host, a.port, context=ctx, timeout=30)
    else:
        c = poplib.POP3(a.host, a.port, timeout=30)
    out["welcome"] = text(c.getwelcome())
    if a.mode == "stls":
        out["stls"] = text(c.stls(context=ctx))
    ops = list(a.ops)
    if a.user and "login" not in ops:
        ops.insert(0, "login")
    quit = True
    for op in ops:
        r = {"op": op}
        try:
            name, _, arg = op.partition(":")
            if name == "login":
                c.user(a.user)
                r["resp"] = text(c.pass_(a.password))
            elif name == "capa":
                r["caps"] = {k: v for k, v in c.capa().items()}
            elif name == "stat":
                r["count"], r["size"] = c.stat()
            elif name in ("list", "uidl"):
                resp, lines, _ = getattr(c, name)()
                r["resp"], r["lines"] = text(resp), [text(l) for l in lines]
            elif name in ("rset", "noop"):
                r["resp"] = text(getattr(c, name)())
            elif name == "retr":
                resp, lines, octets = c.retr(int(arg))
                r["resp"], r["lines"], r["octets"] = text(resp), [text(l) for l in lines], octets
            elif name == "top":
                n, lines_wanted = arg.split(":")
                resp, lines, octets = c.top(int(n), int(lines_wanted))
                r["resp"], r["lines"] = text(resp), [text(l) for l in lines]
            elif name == "dele":
                r["resp"] = text(c.dele(int(arg)))
            elif name == "raw":
                r["resp"] = text(c._shortcmd(arg))
            elif name == "touch":
                open(arg, "w").close()
            elif name == "waitfile":
                for _ in range(600):
                    if os.path.exists(arg):
                        break
                    time.sleep(0.1)
                else:
                    raise SystemExit("waited in vain for " + arg)
            elif name == "noquit":
                quit = False
                c.sock.close()
                break
            else:
                raise SystemExit("unknown op " + op)
        except poplib.error_proto as e:
            r["error"] = text(e.args[0])
        except (OSError, EOFError) as e:
            r["error"] = "connection: %s" % e
            quit = False
            out["ops"].append(r)
            break
        out["ops"].append(r)
    if quit:
        try:
            out["quit"] = text(c.quit())
        except (poplib.error_proto, OSError, EOFError) as e:
            out["quit"] = "error: %s" % e
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
