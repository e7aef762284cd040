#!/usr/bin/env bash
# Checks the alert rules, and every PromQL expression of the Grafana dashboard, with promtool
# (Debian's `prometheus`): the dashboard's queries become recording rules in a scratch file.
set -euo pipefail
cd "$(dirname "$0")"
promtool check rules alerts.yml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - grafana-dashboard.json > "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
assert exprs, "no queries in the dashboard"
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    # $__rate_interval is Grafana's; promtool needs a duration.
    e = e.replace("$__rate_interval", "5m")
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}")
PY
promtool check rules "$tmp/dashboard-rules.yml"
