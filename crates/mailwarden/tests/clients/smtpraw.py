#!/usr/bin/env python3
"""A scripted raw SMTP client for end-to-end tests: sends exact bytes (bare LF, pipelining,
injection) that a well-behaved library would never send, and records every reply.

Reads a JSON object on stdin:
  {"host": "127.0.0.1", "port": 2525, "implicit_tls": false, "source": "127.0.0.2",
   "steps": [["read"], ["cmd", "EHLO x"], ["send", "raw\\r\\n"], ["starttls"],
             ["sleep", 0.5], ["until_close"]]}
Writes a JSON object on stdout: {"replies": ["250-a\\n250 b", ...], "closed": bool, "error": str}
  read         read one complete (possibly multi-line) reply
  cmd          send the text plus CRLF, then read one reply
  send         send the text as is (no CRLF added), read nothing
  starttls     wrap the connection in TLS (certificate not verified: test server)
  until_close  read replies until the server closes the connection
"""
import json
import socket
import ssl
import sys
import time


def main():
    spec = json.load(sys.stdin)
    timeout = spec.get("timeout", 15)
    out = {"replies": [], "closed": False, "error": None}
    sock = socket.create_connection(
        (spec["host"], spec["port"]),
        timeout=timeout,
        source_address=(spec["source"], 0) if spec.get("source") else None,
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if spec.get("implicit_tls"):
        sock = ctx.wrap_socket(sock)
    buf = b""

    def read_reply():
        nonlocal buf
        lines = []
        while True:
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    out["closed"] = True
                    if lines or buf:
                        out["replies"].append("\n".join(lines + ([buf.decode("utf-8", "replace")] if buf else [])))
                        buf = b""
                    return False
                buf += chunk
            line, buf = buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                out["replies"].append("\n".join(lines))
                return True

    try:
        for step in spec["steps"]:
            op = step[0]
            if op == "read":
                if not read_reply():
                    break
            elif op == "cmd":
                sock.sendall(step[1].encode("utf-8") + b"\r\n")
                if not read_reply():
                    break
            elif op == "send":
                sock.sendall(step[1].encode("utf-8", "surrogateescape"))
            elif op == "starttls":
                sock = ctx.wrap_socket(sock)
                buf = b""
            elif op == "sleep":
                time.sleep(step[1])
            elif op == "until_close":
                while read_reply():
                    pass
                break
            else:
                raise ValueError("unknown step " + op)
    except (OSError, ssl.SSLError) as e:
        out["error"] = repr(e)
        if isinstance(e, (ConnectionResetError, BrokenPipeError)):
            out["closed"] = True
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
