#!/usr/bin/env bash
# Keep the load generator working: a few hundred messages against a debug mailwarden, in each
# mode the benchmarks use. Checks that every message was accepted and delivered; asserts
# nothing about speed (that is compare.sh's job, on a quiet machine).
set -euo pipefail
# The benchmark account's password: strong enough for `user add` (auth.min_password_*).
BENCH_PW="bench-horse-battery-staple"
cd "$(dirname "$0")/.."
cargo build -q -p mailwarden -p mailwarden-bench -p mailwarden-testdns
MW=target/debug/mailwarden
LOAD=target/debug/mwload
W=$(mktemp -d)
trap 'kill "${PID:-0}" "${DNSPID:-0}" 2>/dev/null || true; rm -rf "$W"' EXIT
# Sender checks need DNS: the benchmarks' records on a loopback server.
bench/auth-fixture.sh "$W/auth"
target/debug/mwdns "$W/auth/zone" > "$W/dns.out" &
DNSPID=$!
for _ in $(seq 100); do grep -q "^listening" "$W/dns.out" 2>/dev/null && break; sleep 0.1; done
DNS=$(awk '$1 == "listening" {print $2}' "$W/dns.out")
cat > "$W/mw.toml" <<CF
hostname = "mx.bench.test"
data_dir = "$W/data"
domains = ["bench.test"]
[listen]
mx = "127.0.0.1:0"
submission = "127.0.0.1:0"
submissions = "127.0.0.1:0"
metrics = "127.0.0.1:0"
admin = ""
pop3s = ""
[dns]
nameservers = ["$DNS"]
[smtp]
max_connections_per_ip = 1000
CF
cat bench/limits-off.toml >> "$W/mw.toml"
echo "$BENCH_PW" | "$MW" user add bob@bench.test --password-stdin -c "$W/mw.toml" >/dev/null
"$MW" serve -c "$W/mw.toml" >"$W/out" 2>"$W/log" &
PID=$!
for _ in $(seq 300); do grep -q "^listening submissions" "$W/out" 2>/dev/null && break; sleep 0.1; done
addr() { awk -v n="$1" '$1 == "listening" && $2 == n {print $3}' "$W/out"; }
total=0
run() {
  local want=$1; shift
  "$LOAD" --json "$@" > "$W/r.json"
  python3 - "$W/r.json" "$want" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); want = int(sys.argv[2])
assert r["accepted"] == want and r["conn_errors"] == 0, r
print(f"  ok: {r['accepted']} accepted, {r['msg_per_s']} msg/s (not a benchmark)")
PY
  total=$((total + want))
}
run 300 --server "$(addr mx)" -c 10 -n 300 -s 1024
run 100 --server "$(addr mx)" -c 5 -n 100 -k 10 -s 20000
run 50 --server "$(addr mx)" -c 5 -n 50 --message-file "$W/auth/signed.eml" --from load@signed.bench.example
run 50 --server "$(addr submission)" --mode starttls --auth "bob@bench.test:$BENCH_PW" --from bob@bench.test -c 5 -n 50
run 50 --server "$(addr submissions)" --mode tls --auth "bob@bench.test:$BENCH_PW" --from bob@bench.test -c 5 -n 50
"$LOAD" --json --server "$(addr mx)" --idle 200 --probes 3 --idle-secs 0.5 > "$W/idle.json"
python3 - "$W/idle.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["idle_opened"] == 200 and r["probe_failures"] == 0, r
print(f"  ok: {r['idle_opened']} idle sessions held, new sessions still greeted")
PY
for _ in $(seq 300); do
  [ "$(ls "$W/data/mail/bench.test/bob/Maildir/new" | wc -l)" -ge "$total" ] && break; sleep 0.1
done
n=$(ls "$W/data/mail/bench.test/bob/Maildir/new" | wc -l)
[ "$n" -eq "$total" ] || { echo "delivered $n of $total"; exit 1; }
# sed, not head: head would close the pipe early and pipefail would report SIGPIPE.
signed=$(grep -l "^Subject: signed load" "$W/data/mail/bench.test/bob/Maildir/new/"* | sed -n 1p)
[ -n "$signed" ] || { echo "no signed message delivered"; exit 1; }
awk '/^Authentication-Results:/ {on=1; print; next} on && /^[ \t]/ {print; next} {on=0}' "$signed" > "$W/ar"
for want in spf=pass dkim=pass dmarc=pass; do
  grep -q "$want" "$W/ar" || { echo "signed message lacks $want:"; cat "$W/ar"; exit 1; }
done
echo "smoke: $total messages delivered; the signed ones with spf, dkim and dmarc pass"
