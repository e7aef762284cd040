#!/usr/bin/env bash
# Compare mailwarden with Postfix on this machine, in one run, interleaved A B A B.
#
#   bench/compare.sh                  # every scenario, 3 repetitions
#   bench/compare.sh --reps 5 --scenarios mx-1k-c50,mx-100k-c50
#   bench/compare.sh --cluster        # one node on SQLite, one on PostgreSQL, two on one
#                                     # PostgreSQL (scripts/postgres); MX 1 KB, 50 connections
#
# In --cluster mode the servers are mailwarden three ways, not Postfix: the embedded store, one
# node on a PostgreSQL on the same machine, and two nodes sharing it with mwload spreading its
# connections over both. CPU per message counts the whole of each: every node's process tree
# and PostgreSQL's (its postmaster and every backend).
#
# The sender-authentication scenario (mx-1k-c50-auth) sends DKIM-signed mail from a domain
# with SPF and DMARC records, served by mwdns on loopback. mailwarden checks SPF, DKIM, DMARC,
# ARC and iprev as it always does; Postfix gets OpenDKIM as a verifying milter for that scenario
# only (Postfix has no sender checks of its own), resolving through the same mwdns.
#
# Builds release binaries, installs Postfix from apt if needed (without configuring or starting
# the system instance), runs a private Postfix instance under a temporary directory on its own
# loopback ports, and never touches port 25 or /etc/postfix. Results: a table on stdout and
# bench/results/<date>.json. Needs root (Postfix's master runs as root and drops privileges).
set -euo pipefail
# The benchmark account's password: strong enough for `user add` (auth.min_password_*).
BENCH_PW="bench-horse-battery-staple"
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REPS=3
SCENARIOS=""
CLUSTER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --cluster) CLUSTER=1; shift ;;
    *) echo "usage: $0 [--reps N] [--scenarios a,b] [--cluster]" >&2; exit 2 ;;
  esac
done

if ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix sasl2-bin libsasl2-modules >/dev/null
fi
if ! command -v opendkim >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends opendkim >/dev/null
fi
cargo build --release -q -p mailwarden -p mailwarden-bench -p mailwarden-testdns
MW=$ROOT/target/release/mailwarden
MWLOAD=$ROOT/target/release/mwload

# mx-corpus-c50 replays the SpamAssassin public corpus subset, read in place (never copied).
CORPUS=${CORPUS:-${MAILWARDEN_TESTDATA:-$ROOT/../shared/testdata}/spam-corpus-spamassassin-public}
ulimit -n "$(ulimit -Hn)"
W=$(mktemp -d /tmp/mwbench.XXXXXX)
chmod 755 "$W"   # Postfix's daemons run as the postfix user and must reach their queue
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MW_MX=$(free_port); MW_SUB=$(free_port); MW_SUBS=$(free_port); PF_MX=$(free_port); PF_TLS=$(free_port)
MILTER=$(free_port)

cleanup() {
  for n in pg1 pg2; do [ -x "$W/$n/stop" ] && "$W/$n/stop" || true; done
  [ -d "$W/pg" ] && "$ROOT/scripts/postgres" stop "$W/pg" || true
  [ -x "$W/mw/stop" ] && "$W/mw/stop" || true
  [ -x "$W/pf/stop" ] && "$W/pf/stop" || true
  kill "${DNSPID:-0}" 2>/dev/null || true
  postfix -c "$W/pf/etc" stop >/dev/null 2>&1 || true
  sleep 1
  if [ -n "${KEEP_WORKDIR:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

# DNS for both servers: the sender-authentication records, on loopback port 53 (OpenDKIM's
# Nameservers option takes addresses without ports).
"$ROOT/bench/auth-fixture.sh" "$W/auth"
chmod 644 "$W/auth/signed.eml"
"$ROOT/target/release/mwdns" "$W/auth/zone" 127.0.2.53:53 > "$W/dns.out" &
DNSPID=$!
for _ in $(seq 100); do grep -q "^listening" "$W/dns.out" 2>/dev/null && break; sleep 0.1; done
DNS=$(awk '$1 == "listening" {print $2}' "$W/dns.out")

# mailwarden: same durability as always (group commit, fsynced Maildir); limits raised only
# where the scenarios need it (50 connections and 10,000 idle sessions from loopback).
mkdir -p "$W/mw"
cat > "$W/mw/mailwarden.toml" <<CF
hostname = "mw.bench.test"
data_dir = "$W/mw/data"
domains = ["bench.test"]
[listen]
mx = "127.0.0.1:$MW_MX"
submission = "127.0.0.1:$MW_SUB"
submissions = "127.0.0.1:$MW_SUBS"
metrics = "127.0.0.1:0"
admin = ""
pop3s = ""
[dns]
nameservers = ["$DNS"]
[smtp]
max_connections = 30000
max_connections_per_ip = 20000
CF
cat "$ROOT/bench/limits-off.toml" >> "$W/mw/mailwarden.toml"
# MW_EXTRA=FILE appends more config, to measure one feature's cost (e.g. bench/reports-off.toml).
if [ -n "${MW_EXTRA:-}" ]; then cat "$MW_EXTRA" >> "$W/mw/mailwarden.toml"; fi
echo "$BENCH_PW" | "$MW" user add bob@bench.test --password-stdin -c "$W/mw/mailwarden.toml" >/dev/null
# A trained classifier, so every message is tokenised and scored as in a deployment (without
# a model, scoring skips the classifier). Trained on the corpus mx-corpus-c50 replays: the
# cost per message is what is measured, not the verdicts.
if [ -d "$CORPUS" ]; then
  LEARN=()
  for d in "$CORPUS"/*/; do
    case "$(basename "$d")" in spam*) LEARN+=(--spam "$d") ;; *ham*) LEARN+=(--ham "$d") ;; esac
  done
  "$MW" learn "${LEARN[@]}" -c "$W/mw/mailwarden.toml" >/dev/null
fi

# Start/stop scripts: compare.py restarts both servers before each scenario, so every memory
# figure belongs to its own scenario.
cat > "$W/mw/start" <<SH
#!/bin/sh
: > "$W/mw/stdout"
"$MW" serve -c "$W/mw/mailwarden.toml" >"$W/mw/stdout" 2>>"$W/mw/log" &
echo \$! > "$W/mw/pid"
for i in \$(seq 300); do grep -q "^listening submissions" "$W/mw/stdout" && exit 0; sleep 0.1; done
exit 1
SH
cat > "$W/mw/stop" <<SH
#!/bin/sh
[ -s "$W/mw/pid" ] || exit 0
pid=\$(cat "$W/mw/pid"); kill \$pid 2>/dev/null
while kill -0 \$pid 2>/dev/null; do sleep 0.1; done
: > "$W/mw/pid"
SH
chmod +x "$W/mw/start" "$W/mw/stop"
# The first start generates mailwarden's ECDSA P-256 certificate; Postfix gets the same one.
"$W/mw/start" && "$W/mw/stop"

if [ -n "$CLUSTER" ]; then
  # One PostgreSQL on this machine, durable as ever (fsync, synchronous_commit on).
  PGURL=$("$ROOT/scripts/postgres" start "$W/pg")
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  PGPORT=$(cat "$W/pg/port")
  for db in mw_pg1 mw_pg2; do
    "$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U mailwarden -d postgres -c "CREATE DATABASE $db"
  done
  # node NAME DB NODE: a mailwarden node on the shared store, its own ports and data_dir.
  node() {
    mkdir -p "$W/$1"
    cat > "$W/$1/mailwarden.toml" <<CF
hostname = "mw.bench.test"
data_dir = "$W/$1/data"
domains = ["bench.test"]
[store]
url = "${PGURL%/*}/$2"
node = "$3"
[listen]
mx = "127.0.0.1:$(free_port)"
submission = "127.0.0.1:$(free_port)"
submissions = "127.0.0.1:$(free_port)"
metrics = "127.0.0.1:0"
admin = ""
pop3s = ""
[dns]
nameservers = ["$DNS"]
[smtp]
max_connections = 30000
max_connections_per_ip = 20000
CF
    cat "$ROOT/bench/limits-off.toml" >> "$W/$1/mailwarden.toml"
  }
  node pg1 mw_pg1 pg1
  node pg2a mw_pg2 pg2a
  node pg2b mw_pg2 pg2b
  for cfg in pg1 pg2a; do
    echo "$BENCH_PW" | "$MW" user add bob@bench.test --password-stdin -c "$W/$cfg/mailwarden.toml" >/dev/null
    [ -d "$CORPUS" ] && "$MW" learn "${LEARN[@]}" -c "$W/$cfg/mailwarden.toml" >/dev/null
  done
  # start/stop for a server of one or more nodes: pidfile of the first, the rest extra.
  group() {
    local name=$1; shift
    mkdir -p "$W/$name"
    {
      echo "#!/bin/sh"
      for n in "$@"; do
        echo ": > \"$W/$n/stdout\""
        echo "\"$MW\" serve -c \"$W/$n/mailwarden.toml\" >\"$W/$n/stdout\" 2>>\"$W/$n/log\" &"
        echo "echo \$! > \"$W/$n/pid\""
      done
      for n in "$@"; do
        echo "i=0; until grep -q '^listening submissions' \"$W/$n/stdout\"; do i=\$((i+1)); [ \$i -gt 300 ] && exit 1; sleep 0.1; done"
      done
    } > "$W/$name/start"
    {
      echo "#!/bin/sh"
      for n in "$@"; do
        echo "[ -s \"$W/$n/pid\" ] && { pid=\$(cat \"$W/$n/pid\"); kill \$pid 2>/dev/null; while kill -0 \$pid 2>/dev/null; do sleep 0.1; done; : > \"$W/$n/pid\"; }"
      done
      echo "exit 0"
    } > "$W/$name/stop"
    chmod +x "$W/$name/start" "$W/$name/stop"
  }
  group pg1 pg1
  group pg2 pg2a pg2b
  mx_of() { awk -F'"' '/^mx = / {print $2}' "$W/$1/mailwarden.toml"; }
  subs_of() { awk -F'"' '/^submissions = / {print $2}' "$W/$1/mailwarden.toml"; }
  PGPID="$W/pg/data/postmaster.pid"
  cat > "$W/servers.json" <<JS
[
 {"name": "sqlite", "version": "$("$MW" --version | awk '{print $2}')", "pidfile": "$W/mw/pid",
  "start": "$W/mw/start", "stop": "$W/mw/stop",
  "mx": "127.0.0.1:$MW_MX", "submissions": "127.0.0.1:$MW_SUBS", "auth": "bob@bench.test:$BENCH_PW",
  "maildir": "$W/mw/data/mail/bench.test/bob/Maildir"},
 {"name": "postgres-1-node", "version": "$("$PGBIN/postgres" --version | awk '{print $3}')", "pidfile": "$W/pg1/pid",
  "extra_pidfiles": ["$PGPID"],
  "start": "$W/pg1/start", "stop": "$W/pg1/stop",
  "mx": "$(mx_of pg1)", "submissions": "$(subs_of pg1)", "auth": "bob@bench.test:$BENCH_PW",
  "maildir": "$W/pg1/data/mail/bench.test/bob/Maildir"},
 {"name": "postgres-2-nodes", "version": "", "pidfile": "$W/pg2a/pid",
  "extra_pidfiles": ["$W/pg2b/pid", "$PGPID"],
  "start": "$W/pg2/start", "stop": "$W/pg2/stop",
  "mx": "$(mx_of pg2a),$(mx_of pg2b)", "submissions": "$(subs_of pg2a),$(subs_of pg2b)",
  "auth": "bob@bench.test:$BENCH_PW",
  "maildir": ["$W/pg2a/data/mail/bench.test/bob/Maildir", "$W/pg2b/data/mail/bench.test/bob/Maildir"]}
]
JS
  OUT="$ROOT/bench/results/cluster-$(date -u +%Y%m%dT%H%M%SZ).json"
  python3 "$ROOT/bench/compare.py" --servers "$W/servers.json" --mwload "$MWLOAD" --reps "$REPS" \
    --scenarios "${SCENARIOS:-mx-1k-c50}" --out "$OUT"
  exit 0
fi
"$ROOT/bench/postfix/setup.sh" "$W/pf" "$PF_MX" "$PF_TLS" "$W/mw/data/tls/cert.pem" "$W/mw/data/tls/key.pem" </dev/null \
  || { echo "Postfix did not start; its log:" >&2; cat "$W/pf/maillog" >&2; exit 1; }
# OpenDKIM in verify mode, resolving through mwdns. (ResolverConfiguration is not used: its
# unbound config parser is not thread-safe and fails under concurrent milter connections.)
mkdir -p "$W/dkim"
chown opendkim "$W/dkim" 2>/dev/null || true
cat > "$W/dkim/opendkim.conf" <<CF
Mode v
Socket inet:$MILTER@127.0.0.1
PidFile $W/dkim/pid
Nameservers ${DNS%:*}
Syslog no
AlwaysAddARHeader yes
AuthservID pf.bench.test
UserID opendkim
CF
# start PROFILE: "auth" adds the OpenDKIM milter, anything else runs Postfix alone.
cat > "$W/pf/start" <<SH
#!/bin/sh
if [ "\$1" = auth ]; then
  opendkim -f -x "$W/dkim/opendkim.conf" >>"$W/dkim/log" 2>&1 &
  for i in \$(seq 100); do ss -ltn | grep -q ":$MILTER " && break; sleep 0.1; done
  postconf -c "$W/pf/etc" smtpd_milters=inet:127.0.0.1:$MILTER milter_default_action=tempfail
else
  postconf -c "$W/pf/etc" -X smtpd_milters
fi
postfix -c "$W/pf/etc" start >/dev/null 2>&1 || exit 1
for i in \$(seq 300); do [ -s "$W/pf/queue/pid/master.pid" ] && ss -ltn | grep -q ":$PF_MX " && exit 0; sleep 0.1; done
exit 1
SH
cat > "$W/pf/stop" <<SH
#!/bin/sh
postfix -c "$W/pf/etc" stop >/dev/null 2>&1
while pgrep -f "master -w" >/dev/null && [ -s "$W/pf/queue/pid/master.pid" ] && kill -0 \$(cat "$W/pf/queue/pid/master.pid") 2>/dev/null; do sleep 0.2; done
if [ -s "$W/dkim/pid" ]; then
  pid=\$(cat "$W/dkim/pid"); kill \$pid 2>/dev/null
  while kill -0 \$pid 2>/dev/null; do sleep 0.1; done
  rm -f "$W/dkim/pid"
fi
exit 0
SH
chmod +x "$W/pf/start" "$W/pf/stop"
"$W/pf/stop"

cat > "$W/servers.json" <<JS
[
 {"name": "mailwarden", "version": "$("$MW" --version | awk '{print $2}')", "pidfile": "$W/mw/pid",
  "start": "$W/mw/start", "stop": "$W/mw/stop",
  "mx": "127.0.0.1:$MW_MX", "submissions": "127.0.0.1:$MW_SUBS", "auth": "bob@bench.test:$BENCH_PW",
  "maildir": "$W/mw/data/mail/bench.test/bob/Maildir"},
 {"name": "postfix", "version": "$(postconf -c "$W/pf/etc" -h mail_version)", "pidfile": "$W/pf/queue/pid/master.pid",
  "extra_pidfiles": ["$W/dkim/pid"],
  "start": "$W/pf/start", "stop": "$W/pf/stop",
  "mx": "127.0.0.1:$PF_MX", "submissions": "127.0.0.1:$PF_TLS", "auth": "bob@bench.test:pw",
  "maildir": "$W/pf/mail/bench.test/bob/Maildir"}
]
JS

OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ).json"
python3 "$ROOT/bench/compare.py" --servers "$W/servers.json" --mwload "$MWLOAD" --reps "$REPS" \
  --signed-message "$W/auth/signed.eml" --corpus "$([ -d "$CORPUS" ] && echo "$CORPUS")" \
  ${SCENARIOS:+--scenarios "$SCENARIOS"} --out "$OUT"
