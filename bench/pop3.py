#!/usr/bin/env python3
"""POP3: mailwarden's pop3s against Dovecot's (Debian `dovecot-pop3d`), same machine, same
Maildirs, same certificate, same clients, interleaved.

  bench/pop3.py target/release/mailwarden [--accounts 8] [--messages 200] [--sessions 15] [--rounds 3]
  bench/pop3.py target/release/mailwarden --first-login 20000

--first-login N: one account with N messages, never opened; the time from PASS to the answer
of STAT for a first session, when each server must read the mailbox for the first time
(sizes, Dovecot's index), then for a second one. mailwarden goes first, then Dovecot on the
same files.

What the scenario stands for: mail clients that "leave mail on the server", the common POP3
setting, checking in and downloading the whole inbox each time: log in (USER/PASS over
implicit TLS), STAT, UIDL, LIST, RETR of every message, QUIT; no DELE, so every session sees
the same maildrop. One client per account at a time (POP3 locks the maildrop), all accounts
at once. Messages are generated, not repeated: headers as delivered mail has them and bodies
of varied words and line lengths, sizes log-normal around 4 KB with one in ten between 40
and 200 KB. Half of each inbox is in new/, half in cur/ with flags.

Both servers get a warm-up pass first (Dovecot builds its indexes, mailwarden counts and
caches sizes); measured rounds alternate the servers. Reported per server: sessions/s,
MB/s of message content, and server CPU per session (utime + stime; for Dovecot summed over
its whole process tree, with the exited per-session processes reaped into the master's
cutime/cstime). Dovecot runs as configured by tests/clients/dovecot.py (its defaults: a
login process and a pop3 process per session) plus pop3s on the same certificate.
The clients are Python's poplib, in one process per account; they run on the same two cores,
so wall-clock figures are shared with them and CPU per session is the fairer ratio.
"""
import argparse, json, multiprocessing, os, poplib, random, secrets, shutil, socket, ssl
import statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "crates/mailwarden/tests/clients"))
from dovecot import Dovecot, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when "
         "invoice meeting schedule report quarterly shipment attached please review budget "
         "project deadline customer support password account update server network release "
         "東京 会議 資料 確認 お願い").split()


def message(rng, i, domain):
    size = min(int(rng.lognormvariate(8.3, 0.6)), 60000)
    if rng.random() < 0.1:
        size = rng.randint(40_000, 200_000)
    sender = "sender%d@example.net" % rng.randint(1, 500)
    head = (
        "Return-Path: <%s>\nDelivered-To: user@%s\n"
        "Received: from mx%d.example.net (mx%d.example.net [192.0.2.%d])\n\tby mw.%s with ESMTPS id B%06d;\n\t"
        "Mon, 30 Nov 2026 10:%02d:%02d +0000\nFrom: Sender <%s>\nTo: user@%s\nSubject: %s %d\n"
        "Date: Mon, 30 Nov 2026 10:%02d:%02d +0000\nMessage-ID: <%d.%d@example.net>\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
    ) % (sender, domain, i % 9, i % 9, i % 250, domain, i, i % 60, i % 60, sender, domain,
         " ".join(rng.choice(WORDS) for _ in range(4)), i, i % 60, i % 60, i, rng.randint(0, 1 << 30))
    body, n = [], len(head)
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        if rng.random() < 0.02:
            line = "." + line  # lines that need dot-stuffing
        body.append(line)
        n += len(line.encode()) + 1
    return (head + "\n".join(body) + "\n").encode()


def populate(data_dir, domain, accounts, count, seed=7):
    rng = random.Random(seed)
    total = 0
    for a in range(accounts):
        md = os.path.join(data_dir, "mail", domain, "user%d" % a, "Maildir")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        for i in range(count):
            m = message(rng, i, domain)
            total += len(m)
            name = "%d.B%dQ%d.bench" % (1796000000 + i, a, i)
            path = os.path.join(md, "new", name) if i % 2 else os.path.join(md, "cur", name + ":2,S")
            with open(path, "wb") as f:
                f.write(m)
    return total


def proc_times(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17).
    return [int(x) for x in fields[11:15]], int(fields[1])


def tree_cpu(root):
    """CPU seconds of `root` and every live descendant, plus what root reaped."""
    kids, stats = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                t, ppid = proc_times(int(d))
            except OSError:
                continue
            stats[int(d)] = t
            kids.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        t = stats.get(p, [0, 0, 0, 0])
        total += sum(t)  # children reaped by p are in its cutime/cstime
        todo.extend(kids.get(p, []))
    return total / TICK


def session(port, user, password):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=60)
    c.user(user)
    c.pass_(password)
    count, _ = c.stat()
    uids = c.uidl()[1]
    c.list()
    octets = 0
    for n in range(1, count + 1):
        octets += c.retr(n)[2]
    c.quit()
    assert len(uids) == count
    return count, octets


def first_login(port, user, password):
    """Seconds from PASS to STAT's answer (a server may list the mailbox at either), and
    STAT's count."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=600)
    c.user(user)
    t0 = time.monotonic()
    c.pass_(password)
    count = c.stat()[0]
    secs = time.monotonic() - t0
    c.quit()
    return {"login_s": round(secs, 3), "messages": count}


def client(args):
    port, user, password, sessions = args
    done = [0, 0]
    for _ in range(sessions):
        n, o = session(port, user, password)
        done[0] += n
        done[1] += o
    return done


def load(port, users, sessions, pid):
    before = tree_cpu(pid)
    t0 = time.monotonic()
    with multiprocessing.Pool(len(users)) as pool:
        res = pool.map(client, [(port, u, p, sessions) for u, p in users])
    wall = time.monotonic() - t0
    cpu = tree_cpu(pid) - before
    n = len(users) * sessions
    octets = sum(r[1] for r in res)
    return {"sessions": n, "wall_s": round(wall, 3), "sessions_per_s": round(n / wall, 2),
            "mb_per_s": round(octets / wall / 1e6, 2), "cpu_ms_per_session": round(cpu * 1000 / n, 2),
            "messages": sum(r[0] for r in res)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--accounts", type=int, default=8)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--sessions", type=int, default=15, help="per account per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--first-login", type=int, default=0, metavar="N")
    a = p.parse_args()
    if a.first_login:
        a.accounts, a.messages = 1, a.first_login
    work = tempfile.mkdtemp(prefix="mw-pop3bench-")
    domain = "bench.test"
    data = os.path.join(work, "data")
    key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=mw." + domain],
                   check=True, capture_output=True)
    os.chmod(key, 0o644)  # Dovecot reads it as nobody in its user namespace
    conf = os.path.join(work, "mailwarden.toml")
    with open(conf, "w") as f:
        f.write(f"""hostname = "mw.{domain}"
data_dir = "{data}"
domains = ["{domain}"]
[listen]
mx = ""
submission = ""
submissions = ""
metrics = ""
admin = ""
pop3s = "127.0.0.1:0"
[tls]
cert = "{cert}"
key = "{key}"
[log]
level = "warn"
""")
    users = []
    for i in range(a.accounts):
        u, pw = "user%d@%s" % (i, domain), secrets.token_urlsafe(18)
        subprocess.run([a.binary, "user", "add", u, "--password-stdin", "-c", conf],
                       input=(pw + "\n").encode(), check=True, capture_output=True)
        users.append((u, pw))
    total = populate(data, domain, a.accounts, a.messages)
    srv = subprocess.Popen([a.binary, "serve", "-c", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    ours = None
    for line in srv.stdout:
        w = line.split()
        if w[:2] == ["listening", "pop3s"]:
            ours = int(w[2].rsplit(":", 1)[1])
            break

    class Pop3Dovecot(Dovecot):
        def _config(self):
            c = super()._config()
            c = c.replace("protocols = imap", "protocols = imap pop3", 1)
            c = c.replace("ssl = no", "ssl = yes\nssl_cert = <%s\nssl_key = <%s" % (cert, key), 1)
            return c + ("service pop3-login {\n  chroot =\n  inet_listener pop3 {\n    port = 0\n  }\n"
                        "  inet_listener pop3s {\n    address = 127.0.0.1\n    port = %d\n    ssl = yes\n  }\n}\n"
                        % self.pop3_port)

    dv = Pop3Dovecot(data, dict(users))
    dv.pop3_port = free_port()
    dv.start()
    servers = {"mailwarden": (ours, srv.pid), "dovecot": (dv.pop3_port, dv.proc.pid)}
    try:
        if a.first_login:
            out = {"messages": a.messages, "mailbox_mb": round(total / 1e6, 1)}
            for name, (port, pid) in servers.items():
                out[name] = [first_login(port, *users[0]) for _ in range(2)]
            print(json.dumps(out, indent=1))
            return
        for name, (port, pid) in servers.items():
            load(port, users, 1, pid)  # warm-up
        results = {k: [] for k in servers}
        for r in range(a.rounds):
            order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
            for name, (port, pid) in order:
                res = load(port, users, a.sessions, pid)
                results[name].append(res)
                print(name, json.dumps(res), flush=True)
        med = {k: {m: statistics.median(x[m] for x in v) for m in
                   ("sessions_per_s", "mb_per_s", "cpu_ms_per_session")} for k, v in results.items()}
        out = {
            "scenario": {"accounts": a.accounts, "messages_per_account": a.messages,
                         "maildrop_mb": round(total / a.accounts / 1e6, 2),
                         "sessions_per_round": a.accounts * a.sessions, "rounds": a.rounds},
            "median": med,
            "ratio_mailwarden_over_dovecot": {
                m: round(med["mailwarden"][m] / med["dovecot"][m], 2) for m in med["mailwarden"]},
        }
        print(json.dumps(out, indent=1))
    finally:
        dv.stop()
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
