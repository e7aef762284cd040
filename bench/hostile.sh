#!/usr/bin/env bash
# What hostile message shapes cost mailwarden per MB, against a plain message of the same
# size, and its peak memory with 200 messages of 20 MB arriving at once (bench/hostile.py
# says how). Targets (issue 14): every shape at most 3x a plain message per MB; peak RSS at
# most 300 MB. Not run in CI (it needs release builds and about 10 GB of scratch disk).
#
#   bench/hostile.sh [--size MB] [--reps N] [--conc N] [--big MB]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
cargo build -q --release -p mailwarden -p mailwarden-bench -p mailwarden-testdns
W=$(mktemp -d)
trap 'kill "${DNSPID:-0}" 2>/dev/null || true; rm -rf "$W"' EXIT
bench/auth-fixture.sh "$W/auth"
target/release/mwdns "$W/auth/zone" > "$W/dns.out" &
DNSPID=$!
for _ in $(seq 100); do grep -q "^listening" "$W/dns.out" 2>/dev/null && break; sleep 0.1; done
DNS=$(awk '$1 == "listening" {print $2}' "$W/dns.out")
python3 bench/hostile.py --mw "$ROOT/target/release/mailwarden" \
  --load "$ROOT/target/release/mwload" --dns "$DNS" --key "$W/auth/key.pem" \
  --limits-off "$ROOT/bench/limits-off.toml" --work "$W" --results "$ROOT/bench/results" "$@"
