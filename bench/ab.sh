#!/usr/bin/env bash
# Two mailwarden binaries, A and B, under the same MX load, interleaved A B A B: server CPU
# (utime + stime of the one process, /proc/PID/stat) per message and msg/s. No Postfix: this
# answers "did a change cost anything", not "how do we compare".
#
#   bench/ab.sh OLD/target/release/mailwarden target/release/mailwarden [PAIRS]
#
# Build both first (cargo build --release in each tree). Load: mwload -c 50 -n 15000 -s 1024
# (the mx-1k-c50 scenario of compare.sh), DNS from mwdns with the bench's zone.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=${1:?binary A}
B=${2:?binary B}
PAIRS=${3:-4}
L=$ROOT/target/release/mwload
Z=$(mktemp -d /tmp/abz.XXXX)
$ROOT/bench/auth-fixture.sh $Z/auth >/dev/null
$ROOT/target/release/mwdns $Z/auth/zone 127.0.2.54:53 > $Z/dns.out &
DNSPID=$!
for _ in $(seq 100); do grep -q "^listening" $Z/dns.out 2>/dev/null && break; sleep 0.1; done
DNS=$(awk '$1 == "listening" {print $2}' $Z/dns.out)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() {
  local bin=$1 tag=$2
  local W; W=$(mktemp -d /tmp/ab.XXXX)
  local MX; MX=$(free_port)
  cat > $W/c.toml <<CF
hostname = "mw.bench.test"
data_dir = "$W/data"
domains = ["bench.test"]
[listen]
mx = "127.0.0.1:$MX"
submission = ""
submissions = ""
metrics = ""
[dns]
nameservers = ["$DNS"]
[smtp]
max_connections = 30000
max_connections_per_ip = 20000
CF
  cat $ROOT/bench/limits-off.toml >> $W/c.toml
  echo "bench-horse-battery-staple" | $bin user add bob@bench.test --password-stdin -c $W/c.toml >/dev/null
  $bin serve -c $W/c.toml > $W/out 2>$W/log &
  local pid=$!
  for i in $(seq 100); do grep -q "^listening mx" $W/out && break; sleep 0.1; done
  sleep 0.5
  local t0; t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local r; r=$($L --json --server 127.0.0.1:$MX -c 50 -n 15000 -s 1024)
  sleep 1
  local t1; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null
  local rate; rate=$(echo "$r" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d.get("msg_per_s", 0), 1))')
  echo "$tag msg_per_s=$rate cpu_us_per_msg=$(( (t1-t0)*10000/15000 ))"
  rm -rf $W
}
trap 'kill $DNSPID; rm -rf $Z' EXIT
for i in $(seq $PAIRS); do run $A A; run $B B; done
