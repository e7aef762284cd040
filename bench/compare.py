#!/usr/bin/env python3
"""Run mailwarden and a private Postfix side by side, interleaved A B A B, and compare.

Called by bench/compare.sh, which builds the binaries and sets up both servers. For each
scenario and repetition, it runs the load generator (mwload) against each server in turn, waits
until every accepted message is in the Maildir, and records:

  msg/s        accepted messages per second, as mwload measured it
  cpu us/msg   server CPU (user + system) per accepted message, summed over the server's whole
               process tree from /proc/PID/stat: mailwarden is one process; Postfix is master
               plus its children (smtpd, cleanup, qmgr, virtual, ...), exited children counted
               through the master's cutime/cstime
  peak memory  the highest sum of PSS (/proc/PID/smaps_rollup) over the process tree, sampled
               every 100 ms during the run: PSS shares common pages fairly between Postfix's
               many processes
  client cpu   mwload's own CPU per message, to show when the client is the limit

A server's process tree includes the processes named by its "extra_pidfiles" while they run
(Postfix's OpenDKIM milter in the sender-authentication scenario), so their CPU and memory count.
In that scenario, a delivered message is also checked for a dkim=pass result, so that a server
that silently skipped verification could not look fast.

It prints a table of medians with the ratio mailwarden/Postfix and writes bench/results/*.json.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # comm may contain spaces; fields after the closing paren are fixed.
    rest = s[s.rindex(")") + 2:].split()
    return rest  # rest[0] is state (field 3)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(stat_fields(d)[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


def cpu_seconds(roots):
    """CPU of the whole trees: each root incl. reaped children, plus live descendants."""
    total = 0.0
    for root in roots:
        total += tree_cpu_ticks(root)
    return total / CLK


def tree_cpu_ticks(root):
    total = 0
    for p in tree(root):
        try:
            f = stat_fields(p)
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(x) for x in f[11:15])
        total += utime + stime
        if p == root:
            total += cutime + cstime
    return total


def pss_kb(roots):
    total = 0
    for p in (p for root in roots for p in tree(root)):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.peak, self.stop = root, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, pss_kb(self.root))
            self.stop.wait(0.1)


def count_files(d):
    try:
        return len(os.listdir(d))
    except FileNotFoundError:
        return 0


_moved = [0]


def delivered_dirs(d):
    """Where delivered mail lands: the inbox and, for mail a server filed as spam, Junk."""
    return [os.path.join(d, "new"), os.path.join(d, ".Junk", "new")]


def clear_maildir(d):
    """Start each run with an empty new/ without deleting anything: mass deletion makes the
    next run's file creation scan recently freed inodes (ext4 without a journal does), a cost
    a steady-state server never pays. Old files are removed when the benchmark ends."""
    for new in delivered_dirs(d):
        clear_dir(new)


def clear_dir(new):
    if os.path.isdir(new) and os.listdir(new):
        _moved[0] += 1
        st = os.stat(new)
        os.rename(new, f"{new}.done.{_moved[0]}")
        os.mkdir(new, 0o700)
        os.chown(new, st.st_uid, st.st_gid)


def auth_results(maildir):
    """The Authentication-Results header lines of one delivered message, unfolded."""
    new = os.path.join(maildir, "new")
    names = sorted(os.listdir(new))
    if not names:
        return ""
    with open(os.path.join(new, names[-1]), "rb") as f:
        head = f.read(65536).split(b"\r\n\r\n")[0].split(b"\n\n")[0].decode("latin-1")
    out, on = [], False
    for line in head.splitlines():
        if line.lower().startswith("authentication-results:"):
            on = True
            out.append(line)
        elif on and line[:1] in (" ", "\t"):
            out[-1] += " " + line.strip()
        else:
            on = False
    return "\n".join(out)


def maildirs(server):
    """A server's Maildirs: one, or one per node of a cluster."""
    m = server["maildir"]
    return m if isinstance(m, list) else [m]


def run_once(server, scenario, mwload, subst):
    """One measurement of one scenario on one server."""
    for m in maildirs(server):
        clear_maildir(m)
    args = [mwload, "--json", "--server", server[scenario.get("port", "mx")]] + [
        a.format(**subst) for a in scenario["args"]]
    if scenario.get("auth"):
        args += ["--auth", server["auth"]]
    root = server["pid"]()
    resource_children_delta()
    cpu0 = cpu_seconds(root)
    sampler = Sampler(root)
    sampler.start()
    t0 = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    client_cpu = resource_children_delta()
    if p.returncode != 0:
        raise RuntimeError(f"mwload failed: {err}")
    report = json.loads(out)
    result = {"server": server["name"], "load": report}
    if report["mode"] == "load":
        want = report["accepted"] * scenario.get("rcpts", 1)
        deadline = time.time() + 120
        dirs = [d for m in maildirs(server) for d in delivered_dirs(m)]
        delivered = lambda: sum(count_files(d) for d in dirs)
        # Real mail: a server may hold some accepted messages (quarantine), so the drain also
        # ends when deliveries have stopped for 3 seconds.
        last, since = -1, time.time()
        while (n := delivered()) < want and time.time() < deadline:
            if n != last:
                last, since = n, time.time()
            elif scenario.get("settle") and time.time() - since > 3:
                break
            time.sleep(0.05)
        result["delivered"] = delivered()
        result["drain_s"] = round(time.time() - t0 - report["elapsed_s"], 2)
        cpu1 = cpu_seconds(root)
        sampler.stop.set()
        sampler.join()
        acc = max(report["accepted"], 1)
        result["msg_per_s"] = report["msg_per_s"]
        result["cpu_us_per_msg"] = round((cpu1 - cpu0) * 1e6 / acc, 1)
        result["peak_pss_mb"] = round(sampler.peak / 1024, 1)
        result["client_cpu_us_per_msg"] = round(client_cpu * 1e6 / acc, 1)
        result["txn_p50_us"] = report["txn_us"]["p50"]
        result["txn_p99_us"] = report["txn_us"]["p99"]
        result["setup_p50_us"] = report["setup_us"]["p50"]
        result["errors"] = report["conn_errors"] + report["replies"]["4xx"] + report["replies"]["5xx"]
        if scenario.get("profile") == "auth":
            ar = auth_results(maildirs(server)[0])
            result["dkim_pass"] = "dkim=pass" in ar
            if not result["dkim_pass"]:
                raise RuntimeError(f"{server['name']} delivered signed mail without dkim=pass: {ar!r}")
    else:
        time.sleep(0.2)
        sampler.stop.set()
        sampler.join()
        result["peak_pss_mb"] = round(sampler.peak / 1024, 1)
        result["idle_opened"] = report["idle_opened"]
        result["banner_p99_ms"] = report["banner_ms"]["p99"]
        result["banner_max_ms"] = report["banner_ms"]["max"]
        result["probe_failures"] = report["probe_failures"]
    return result


_last_children = [0.0]


def resource_children_delta():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = r.ru_utime + r.ru_stime
    d = now - _last_children[0]
    _last_children[0] = now
    return d


SCENARIOS = {
    "mx-1k-c1": {"title": "MX 1 KB, 1 connection", "args": ["-c", "1", "-n", "1500", "-s", "1024"]},
    "mx-1k-c50": {"title": "MX 1 KB, 50 connections", "args": ["-c", "50", "-n", "15000", "-s", "1024"]},
    "mx-100k-c50": {"title": "MX 100 KB, 50 connections", "args": ["-c", "50", "-n", "3000", "-s", "102400"]},
    "mx-1k-c50-k10": {"title": "MX 1 KB, 50 conn, 10 msg/conn",
                      "args": ["-c", "50", "-n", "20000", "-k", "10", "-s", "1024"]},
    "mx-1k-c50-auth": {"title": "MX 1 KB signed, c50, sender checks", "profile": "auth",
                       "args": ["-c", "50", "-n", "15000", "--message-file", "{signed_message}",
                                "--from", "load@signed.bench.example"]},
    # Real messages (the SpamAssassin public corpus, read in place): ham and spam of every
    # size and shape, so parsing, the classifier's tokens and the heuristics do real work.
    "mx-corpus-c50": {"title": "MX real messages (corpus), 50 connections", "settle": True,
                      "args": ["-c", "50", "-n", "8000", "--corpus", "{corpus}"]},
    "starttls-1k-c50": {"title": "STARTTLS 1 KB, 50 connections",
                        "args": ["-c", "50", "-n", "5000", "-s", "1024", "--mode", "starttls"]},
    "submit-tls-auth": {"title": "Submission, implicit TLS + AUTH", "port": "submissions", "auth": True,
                        "args": ["-c", "50", "-n", "5000", "-s", "1024", "--mode", "tls",
                                 # mailwarden lets an account send only as its own address
                                 "--from", "bob@bench.test"]},
    "idle-10k": {"title": "10,000 idle sessions", "args": ["--idle", "10000", "--probes", "20", "--idle-secs", "3",
                                                          "--source", ",".join(f"127.0.{i}.1" for i in range(1, 41))]},
}


def live_pids(pidfiles):
    """The pids named by the pidfiles that exist now; the first must. A pidfile's first word
    is the pid (PostgreSQL's postmaster.pid has more lines after it)."""
    pids = [int(open(pidfiles[0]).read().split()[0])]
    for pf in pidfiles[1:]:
        try:
            pids.append(int(open(pf).read().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", required=True, help="JSON file describing both servers")
    ap.add_argument("--mwload", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--signed-message", default="", help="DKIM-signed message for the auth scenario")
    ap.add_argument("--corpus", default="", help="directory of real messages for mx-corpus-c50")
    args = ap.parse_args()
    servers = json.load(open(args.servers))
    for s in servers:
        s["pid"] = (lambda pfs: lambda: live_pids(pfs))([s["pidfile"]] + s.get("extra_pidfiles", []))
    subst = {"signed_message": args.signed_message, "corpus": args.corpus}
    names = [x for x in args.scenarios.split(",") if x]
    if not args.corpus and "mx-corpus-c50" in names:
        print("  mx-corpus-c50 skipped: no corpus directory (CORPUS=...)", flush=True)
        names.remove("mx-corpus-c50")
    results = {}
    resource_children_delta()
    for name in names:
        sc = SCENARIOS[name]
        runs = []
        # Fresh processes for each scenario: memory peaks must not carry over.
        for srv in servers:
            subprocess.run([srv["stop"]], check=True)
            subprocess.run([srv["start"], sc.get("profile", "plain")], check=True)
        time.sleep(1)
        for rep in range(args.reps):
            order = servers if rep % 2 == 0 else list(reversed(servers))
            for srv in order:
                r = run_once(srv, sc, args.mwload, subst)
                r["rep"] = rep
                runs.append(r)
                print(f"  {name} rep {rep} {srv['name']}: " + ", ".join(
                    f"{k}={v}" for k, v in r.items() if k not in ("load", "server", "rep")), flush=True)
                time.sleep(1)
        results[name] = runs

    table = []
    keys = ["msg_per_s", "cpu_us_per_msg", "peak_pss_mb", "txn_p99_us", "client_cpu_us_per_msg",
            "banner_p99_ms", "idle_opened"]
    for name in names:
        row = {"scenario": name, "title": SCENARIOS[name]["title"]}
        for s in servers:
            runs = [r for r in results[name] if r["server"] == s["name"]]
            row[s["name"]] = {k: median([r.get(k) for r in runs]) for k in keys}
        a, b = row[servers[0]["name"]], row[servers[1]["name"]]
        row["ratio"] = {k: (round(a[k] / b[k], 2) if a[k] and b[k] else None) for k in keys}
        # More than two: each against the first (the cluster comparison).
        row["vs_first"] = {s["name"]: {k: (round(row[s["name"]][k] / a[k], 2) if a[k] and row[s["name"]][k] else None)
                                       for k in keys} for s in servers[1:]}
        table.append(row)

    a, b = servers[0]["name"], servers[1]["name"]
    print()
    if len(servers) > 2:
        print(f"{'scenario':<32} {'server':<16} {'msg/s':>8} {'CPU µs/msg':>11} {'× first':>8} {'PSS MB':>8}")
        for row in table:
            for s in servers:
                r = row[s["name"]]
                vs = row["vs_first"].get(s["name"], {}).get("cpu_us_per_msg")
                fmt = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"
                print(f"{row['title']:<32} {s['name']:<16} {fmt(r['msg_per_s']):>8} {fmt(r['cpu_us_per_msg']):>11} "
                      f"{fmt(vs if s is not servers[0] else 1.0, 2):>8} {fmt(r['peak_pss_mb'], 1):>8}")
    else:
        print_pair(table, a, b)
    for srv in servers:
        subprocess.run([srv["stop"]], check=False)
    write(args, servers, table, results)


def print_pair(table, a, b):
    print(f"{'scenario':<32} {'msg/s ' + a:>16} {'msg/s ' + b:>14} {'ratio':>6} "
          f"{'CPU µs/msg ' + a:>18} {b:>8} {'ratio':>6} {'PSS MB ' + a:>14} {b:>8}")
    for row in table:
        ra, rb, rr = row[a], row[b], row["ratio"]
        fmt = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"
        print(f"{row['title']:<32} {fmt(ra['msg_per_s']):>16} {fmt(rb['msg_per_s']):>14} {fmt(rr['msg_per_s'], 2):>6} "
              f"{fmt(ra['cpu_us_per_msg']):>18} {fmt(rb['cpu_us_per_msg']):>8} {fmt(rr['cpu_us_per_msg'], 2):>6} "
              f"{fmt(ra['peak_pss_mb'], 1):>14} {fmt(rb['peak_pss_mb'], 1):>8}")
        if ra.get("idle_opened") is not None:
            print(f"{'':<32} idle opened {a} {ra['idle_opened']}, {b} {rb['idle_opened']}; "
                  f"new-session banner p99 {a} {ra['banner_p99_ms']} ms, {b} {rb['banner_p99_ms']} ms")


def write(args, servers, table, results):
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")},
        "servers": [{k: v for k, v in s.items() if k != "pid"} for s in servers],
        "reps": args.reps,
        "table": table,
        "runs": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
