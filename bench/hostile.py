#!/usr/bin/env python3
"""What hostile message shapes cost mailwarden, against a plain message of the same size.

Called by bench/hostile.sh, which builds the release binaries and starts the DNS fixture.
For each shape it sends the same message REPS times over the MX port (two connections at a
time) and reads the server's CPU time (user + system, /proc/PID/stat) before and after,
waiting until the server is idle again, so parsing, checks, the queue and local delivery all
count. It reports CPU milliseconds per MB and the ratio to the plain message.

The shapes, each about SIZE MB, each DKIM-signed by the sender's domain as real mail is:
  plain     varied text in lines of words (not one line repeated: nothing caches it)
  urls      HTML with tens of thousands of links to distinct hosts
  headers   a header section of SIZE MB of distinct fields (refused: limits.max_header_*)
  dkim      900 DKIM-Signature fields of distinct domains over a plain body
  mime      multiparts nested 5,000 deep, then plain text (refused: limits.max_mime_depth)
  longline  one line of SIZE MB (refused: RFC 5321 line length)

Then, on a fresh server, it sends CONC messages of BIG MB at once (one connection each) and
reads the server's peak resident memory (VmHWM).

Writes bench/results/hostile-TIMESTAMP.json and prints a table.
"""
import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time

import dkim

CLK = os.sysconf("SC_CLK_TCK")
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when "
         "what more if out so said can who them some could him into its then two than time "
         "only new like our first also after well over other way even because these people "
         "meeting invoice report schedule project budget review draft agenda thursday library "
         "students committee research department colleague proposal deadline conference").split()


def words_line(rng, n=12):
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "\r\n"


def plain_body(rng, size):
    out, n = [], 0
    while n < size:
        line = words_line(rng)
        out.append(line)
        n += len(line)
    return "".join(out)


HEAD = ("From: Load <load@signed.bench.example>\r\nTo: <bob@bench.test>\r\n"
        "Subject: {subj}\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n"
        "Message-ID: <{subj}@signed.bench.example>\r\nMIME-Version: 1.0\r\n")


def shapes(size):
    rng = random.Random(14)
    mb = size * 1024 * 1024
    out = {}
    out["plain"] = HEAD.format(subj="plain") + "Content-Type: text/plain\r\n\r\n" + plain_body(rng, mb)
    links, n, i = [], 0, 0
    while n < mb:
        a = f'<a href="http://h{i}.x{i % 997}.example/p{i}">site {i}</a> '
        if i % 8 == 7:
            a += "\r\n"
        links.append(a)
        n += len(a)
        i += 1
    out["urls"] = (HEAD.format(subj="urls") + "Content-Type: text/html\r\n\r\n<html><body>\r\n"
                   + "".join(links) + "\r\n</body></html>\r\n")
    fields, n, i = [], 0, 0
    while n < mb:
        f = f"X-Field-{i}: {words_line(rng, 6)}"
        fields.append(f)
        n += len(f)
        i += 1
    out["headers"] = HEAD.format(subj="headers") + "".join(fields) + "\r\nbody\r\n"
    sigs = "".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=d{i}.nowhere.example; s=s{i};"
        f" h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA{i}\r\n"
        for i in range(900))
    out["dkim"] = (sigs + HEAD.format(subj="dkim") + "Content-Type: text/plain\r\n\r\n"
                   + plain_body(rng, mb - len(sigs)))
    nest = "".join(f'Content-Type: multipart/mixed; boundary="b{d}"\r\n\r\n--b{d}\r\n'
                   for d in range(5000))
    out["mime"] = (HEAD.format(subj="mime") + nest + "Content-Type: text/plain\r\n\r\n"
                   + plain_body(rng, mb - len(nest)))
    out["longline"] = (HEAD.format(subj="longline") + "Content-Type: text/plain\r\n\r\n"
                       + "".join(rng.choice("abcdefghij ") for _ in range(mb)) + "\r\n")
    return out


def sign(msg, key):
    raw = msg.encode()
    sig = dkim.sign(raw, b"bench", b"signed.bench.example", key,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + raw


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wait_idle(pid, quiet=0.5, limit=120):
    """Until the server's CPU time stops growing (deliveries and records done)."""
    end = time.time() + limit
    last = cpu_ticks(pid)
    while time.time() < end:
        time.sleep(quiet)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now


class Server:
    def __init__(self, args, work, name):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        cfg = os.path.join(self.dir, "mailwarden.toml")
        with open(cfg, "w") as f:
            f.write(f"""hostname = "mx.bench.test"
data_dir = "{self.dir}/data"
domains = ["bench.test"]
[listen]
mx = "127.0.0.1:0"
submission = ""
submissions = ""
metrics = ""
[dns]
nameservers = ["{args.dns}"]
[smtp]
max_connections_per_ip = 1000
""")
            with open(args.limits_off) as lo:
                f.write(lo.read())
            if args.extra_config:
                f.write("\n" + args.extra_config.replace("\\n", "\n") + "\n")
        self.cfg = cfg
        added = subprocess.run([args.mw, "user", "add", "bob@bench.test", "--generate", "-c", cfg],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if added.returncode != 0:
            # A build from before --generate (to measure what a change bought).
            subprocess.run([args.mw, "user", "add", "bob@bench.test", "--password-stdin", "-c",
                            cfg], input=b"bench-horse-battery-staple\n", check=True,
                           stdout=subprocess.DEVNULL)
        self.out = open(os.path.join(self.dir, "stdout"), "w+")
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen([args.mw, "serve", "-c", cfg], stdout=self.out,
                                     stderr=self.log)
        self.mx = None
        for _ in range(300):
            self.out.seek(0)
            for line in self.out.read().splitlines():
                w = line.split()
                if len(w) >= 3 and w[0] == "listening" and w[1] == "mx":
                    self.mx = w[2]
            if self.mx:
                break
            time.sleep(0.1)
        if not self.mx:
            sys.exit(f"mailwarden did not start: see {self.dir}/log")
        self.pid = self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(args, server, msg_file, count, conns):
    r = subprocess.run(
        [args.load, "--json", "--server", server.mx, "-c", str(conns), "-n", str(count),
         "--duration", "3600", "--message-file", msg_file,
         "--from", "load@signed.bench.example"],
        check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mw", required=True)
    p.add_argument("--load", required=True)
    p.add_argument("--dns", required=True)
    p.add_argument("--key", required=True, help="the DKIM key of signed.bench.example")
    p.add_argument("--limits-off", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--size", type=int, default=4, help="MB per hostile message")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--conc", type=int, default=200)
    p.add_argument("--big", type=int, default=20, help="MB per message in the memory run")
    p.add_argument("--results", default="bench/results")
    p.add_argument("--memory-only", action="store_true", help="skip the shapes")
    p.add_argument("--extra-config", default="", help="TOML appended to the server's config")
    args = p.parse_args()
    key = open(args.key, "rb").read()

    print(f"building {args.size} MB messages ...", flush=True)
    files = {}
    for name, msg in ([] if args.memory_only else shapes(args.size).items()):
        path = os.path.join(args.work, f"{name}.eml")
        with open(path, "wb") as f:
            f.write(sign(msg, key))
        files[name] = path

    s = Server(args, args.work, "cpu")
    rows = {}
    for name, path in files.items():
        mb = os.path.getsize(path) / (1024 * 1024)
        wait_idle(s.pid)
        before = cpu_ticks(s.pid)
        r = load(args, s, path, args.reps, 2)
        wait_idle(s.pid)
        ms = (cpu_ticks(s.pid) - before) * 1000 / CLK
        rows[name] = {
            "mb": round(mb, 2),
            "messages": args.reps,
            "replies": r["replies"],
            "cpu_ms_per_mb": round(ms / (mb * args.reps), 2),
        }
        print(f"  {name:9} {rows[name]}", flush=True)
    s.stop()
    base = rows.get("plain", {}).get("cpu_ms_per_mb")
    for r in rows.values():
        r["ratio_to_plain"] = round(r["cpu_ms_per_mb"] / base, 2) if base else None

    print(f"building a {args.big} MB message ...", flush=True)
    big = os.path.join(args.work, "big.eml")
    rng = random.Random(20)
    with open(big, "wb") as f:
        f.write(sign(HEAD.format(subj="big") + "Content-Type: text/plain\r\n\r\n"
                     + plain_body(rng, args.big * 1024 * 1024), key))
    s = Server(args, args.work, "rss")
    idle_rss = peak_rss_kib(s.pid)
    t = time.time()
    r = load(args, s, big, args.conc, args.conc)
    wait_idle(s.pid)
    memory = {
        "messages": args.conc,
        "mb_each": round(os.path.getsize(big) / (1024 * 1024), 2),
        "replies": r["replies"],
        "seconds": round(time.time() - t, 1),
        "peak_rss_mb": round(peak_rss_kib(s.pid) / 1024, 1),
        "rss_at_start_mb": round(idle_rss / 1024, 1),
    }
    s.stop()

    print()
    print(f"{'shape':10} {'MB':>6} {'replies':>22} {'CPU ms/MB':>10} {'x plain':>8}")
    for name, r in rows.items():
        rep = " ".join(f"{k}:{v}" for k, v in r["replies"].items() if v)
        print(f"{name:10} {r['mb']:>6} {rep:>22} {r['cpu_ms_per_mb']:>10} {r['ratio_to_plain']:>8}")
    print()
    print(f"{memory['messages']} concurrent messages of {memory['mb_each']} MB: "
          f"peak RSS {memory['peak_rss_mb']} MB (at start {memory['rss_at_start_mb']} MB), "
          f"replies {memory['replies']}, {memory['seconds']} s")
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.join(args.results, f"hostile-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"when": stamp, "cores": os.cpu_count(), "size_mb": args.size,
                   "reps": args.reps, "shapes": rows, "memory": memory}, f, indent=1)
    print(f"written to {out}")
    worst = max((r["ratio_to_plain"] for r in rows.values()), default=0)
    print(f"targets: every shape <= 3x plain per MB: {'met' if worst <= 3 else 'NOT met'} "
          f"(worst {worst}x); peak RSS <= 300 MB: "
          f"{'met' if memory['peak_rss_mb'] <= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
