#!/usr/bin/env python3
"""A throwaway Dovecot IMAP server over mailwarden's Maildir tree, for tests.

  dovecot.py DATA_DIR USER PASSWORD [USER PASSWORD ...]     (MW_DOVECOT_PORT=N to fix the port)

With MW_DOVECOT_LMTP=1 it also delivers over LMTP (Debian `dovecot-lmtpd`) on another
loopback port, printed as `lmtp=N` before `port=N`; only the listed users exist then (an
unknown recipient gets 550 from LMTP).

Serves {DATA_DIR}/mail/{domain}/{localpart}/Maildir (Maildir++: `.Junk` is the
Junk folder) on 127.0.0.1 only, plaintext LOGIN/AUTHENTICATE PLAIN, no TLS.
Prints `port=N` once Dovecot greets, then runs until stdin closes (spawn it with
a piped stdin) or SIGTERM/SIGINT/SIGHUP, then stops Dovecot. Exit 3 if Dovecot
is missing (apt-get install dovecot-imapd), 1 if it fails to start (log on stderr).
Config, sockets, log and Dovecot's index/uidlist files live in /tmp/mw-dovecot-*
(kept if MW_KEEP_DOVECOT is set), so the Maildir tree only sees message files.
Written for Dovecot 2.3 (Debian 12 ships 2.3.19); 2.4 renamed much of this.
Dovecot runs unprivileged and touches mail as the calling user; as root it
runs as "nobody" in a user namespace mapped to real root (needs `unshare`).

  from dovecot import Dovecot
  d = Dovecot(data_dir, {"bob@example.test": "secret"}); port = d.start(); d.stop()
"""
import ctypes, grp, os, pwd, shutil, signal, socket, stat, subprocess, sys, tempfile, time

NOBODY = 65534
# Services chrooted by default; an unprivileged master cannot chroot.
NO_CHROOT = ("anvil", "ipc", "old-stats", "imap-urlauth-login")
MISSING = "dovecot is not installed: apt-get install dovecot-imapd"


def dovecot_binary():
    for p in (shutil.which("dovecot"), "/usr/sbin/dovecot"):
        if p and os.access(p, os.X_OK):
            return p
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # Dovecot's master gets SIGTERM if this Python process dies (even by SIGKILL).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Dovecot:
    def __init__(self, data_dir, users, port=None, indexes_in_maildir=False, lmtp=False):
        # indexes_in_maildir=True: Dovecot's stock layout, with dovecot.index*
        # and dovecot-uidlist files inside Maildir/ and each .Folder/.
        self.data_dir, self.users, self.port = os.path.abspath(data_dir), dict(users), port
        self.indexes_in_maildir, self.proc, self.tmp = indexes_in_maildir, None, None
        self.lmtp_port = free_port() if lmtp else None

    def _config(self):
        # Dovecot always runs unprivileged here: as the current user, or, as
        # root, as "nobody" inside a user namespace that maps it to real root
        # (Dovecot refuses mail access as uid 0, and mail must be read as root).
        uid = os.geteuid() or NOBODY
        gid = os.getegid() if os.geteuid() else pwd.getpwuid(NOBODY).pw_gid
        user, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name
        t, data = self.tmp, self.data_dir.replace("%", "%%")
        loc = "maildir:%s/mail/%%d/%%n/Maildir" % data
        if not self.indexes_in_maildir:
            loc += ":INDEX={0}/index/%d/%n:CONTROL={0}/control/%d/%n".format(t)
        lines = []
        for name, pw in self.users.items():
            if any(c in name + pw for c in ":\n") or "@" not in name:
                raise ValueError("bad user or password: %r" % name)
            lines.append("%s:{PLAIN}%s::::::\n" % (name, pw))
        with open(os.path.join(t, "passwd"), "w") as f:
            f.writelines(lines)
        if self.lmtp_port:
            # LMTP must know who exists: users come from the passwd file, homes are static.
            userdb = f"""userdb {{
  driver = passwd-file
  args = username_format=%u {t}/passwd
  default_fields = home={t}/home/%d/%n
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.test
}}
"""
        else:
            userdb = f"""userdb {{
  driver = static
  args = home={t}/home/%d/%n
}}
"""
        return f"""
protocols = imap{" lmtp" if self.lmtp_port else ""}
listen = 127.0.0.1
base_dir = {t}/run
state_dir = {t}/state
log_path = {t}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_privileged_group =
first_valid_uid = 1
first_valid_gid = 1
mail_uid = {uid}
mail_gid = {gid}
mail_location = {loc}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Junk {{
    special_use = \\Junk
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {t}/passwd
}}
{userdb}service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""" + "".join("service %s {\n  chroot =\n}\n" % n for n in NO_CHROOT)

    def start(self, timeout=20.0):
        """Start Dovecot; return its port once it greets on 127.0.0.1."""
        if dovecot_binary() is None:
            raise FileNotFoundError(MISSING)
        for _ in range(5):
            pick = self.port is None
            if pick:
                self.port = free_port()
            try:
                return self._start_once(timeout)
            except RuntimeError as e:
                # Another process took the free port in between: pick again.
                if not pick or "Address already in use" not in str(e):
                    raise
                self.port = None
        raise RuntimeError("dovecot: no free port after 5 tries")

    def _start_once(self, timeout):
        # Short path: Dovecot's unix sockets live under it (108-byte limit).
        self.tmp = tempfile.mkdtemp(prefix="mw-dovecot-", dir="/tmp")
        for d in ("run", "state", "index", "control", "home"):
            os.mkdir(os.path.join(self.tmp, d))
        self.conf = os.path.join(self.tmp, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(self._config())
        cmd = [dovecot_binary(), "-F", "-c", self.conf]
        if os.geteuid() == 0:
            cmd = ["unshare", "--user", "--map-user=%d" % NOBODY,
                   "--map-group=%d" % pwd.getpwuid(NOBODY).pw_gid] + cmd
        with open(os.path.join(self.tmp, "master.out"), "w") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None or "Fatal:" in self.tail():
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return self.port
            except OSError:
                time.sleep(0.05)
        why = self.tail()
        self.stop()
        raise RuntimeError("dovecot did not start on port %d:\n%s" % (self.port, why))

    def tail(self, n=4000):
        out = ""
        for name in ("master.out", "dovecot.log"):
            path = os.path.join(self.tmp, name)
            if os.path.exists(path):
                out += open(path, errors="replace").read()[-n:]
        return out

    def stop(self):
        """Stop Dovecot and remove its temp dir (kept if MW_KEEP_DOVECOT is set)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # master stops its children on SIGTERM
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.tmp and not os.environ.get("MW_KEEP_DOVECOT"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv):
    if len(argv) < 4 or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    if dovecot_binary() is None:
        print(MISSING, file=sys.stderr)
        return 3
    users = dict(zip(argv[2::2], argv[3::2]))
    dv = Dovecot(argv[1], users, port=int(os.environ.get("MW_DOVECOT_PORT", 0)) or None,
                 lmtp=bool(os.environ.get("MW_DOVECOT_LMTP")))

    def on_signal(signum, frame):
        raise SystemExit(0)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        port = dv.start()
        if dv.lmtp_port:
            print("lmtp=%d" % dv.lmtp_port, flush=True)
        print("port=%d" % port, flush=True)
        mode = os.fstat(0).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(0):
            while sys.stdin.buffer.read(4096):
                pass
        else:  # stdin is /dev/null or a file: wait for a signal
            while True:
                signal.pause()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        dv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
