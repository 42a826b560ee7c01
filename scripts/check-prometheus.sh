#!/usr/bin/env bash
# The observability assets against a real Prometheus:
#   offline (always):
#     1. deploy/grafana/hookbridge.json is JSON (python3 -m json.tool);
#     2. promtool check rules deploy/prometheus/alerts.yml;
#     3. promtool test rules deploy/prometheus/alerts.test.yml (the alerts' unit tests);
#     4. promtool check config deploy/prometheus/prometheus.yml (the example scrape config);
#     5. scripts/check-dashboard.py: every metric, label and reason code the dashboard and the
#        alerts name exists in src/, docs/metrics.md lists every metric, runbook links resolve;
#        then promtool parses each dashboard query (written out as recording rules).
#   live (with a hookbridge binary as $1, e.g. target/debug/hookbridge):
#     6. hookbridge serve on free loopback ports (file sink and spool in a temp dir, one
#        shared-secret source `t`); one accepted and one wrongly signed request;
#     7. its /metrics through `promtool check metrics`: every family has HELP text, so no lint
#        is tolerated by default (lint output printed); the latency buckets reach 15 s; the
#        spool's bytes and limit (spool.max_bytes) are exported; two scrapes list the same
#        series in the same, sorted order;
#     8. a real `prometheus` scraping it every second with alerts.yml loaded: waits (30 s at
#        most) until hookbridge_requests_total{source="t"} holds the accepted and the
#        bad_signature request, the spool's bytes/limit ratio (HookbridgeSpoolNearlyFull's
#        expression) has a value, and every alert rule evaluates without error.
# promtool and prometheus come from Debian's `prometheus` package, installed (as root or with
# sudo) when promtool is missing. If installing it starts a packaged Prometheus service on
# :9090, that one is left alone: this script uses its own, on a free port.
#
# Usage: scripts/check-prometheus.sh [HOOKBRIDGE_BINARY]
# HOOKBRIDGE_METRICS_LINT_ALLOW: extended regex of `promtool check metrics` lines tolerated
# (default: empty, none; e.g. "no help text" to check an older binary whose metrics had none).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/brokers.sh   # install_debian_package

step() { printf '\n==> %s\n' "$*"; }
die() { echo "check-prometheus: $*" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
  step "installing Debian's prometheus package (promtool, prometheus)"
  install_debian_package prometheus --no-install-recommends
fi
promtool --version 2>&1 | head -1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-prometheus.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------- offline
step "dashboard JSON"
python3 -m json.tool deploy/grafana/hookbridge.json >/dev/null
echo "ok -- deploy/grafana/hookbridge.json is well-formed"

step "promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

step "promtool test rules deploy/prometheus/alerts.test.yml"
promtool test rules deploy/prometheus/alerts.test.yml

step "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

step "dashboard and alerts against src/metrics.rs; dashboard queries through promtool's parser"
python3 scripts/check-dashboard.py --promql-rules "$tmp/dashboard-rules.yml"
promtool check rules "$tmp/dashboard-rules.yml"

[ $# -ge 1 ] || { echo; echo "offline checks passed (no hookbridge binary given: live part skipped)"; exit 0; }

# ------------------------------------------------------------------------------------- live
bin=$1
[ -x "$bin" ] || die "$bin is not an executable"
command -v curl >/dev/null || die "curl is needed for the live part"
command -v prometheus >/dev/null || die "prometheus is needed for the live part (Debian's prometheus package)"

# Three free loopback ports (held together while chosen, so they differ).
read -r main_port admin_port prom_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks: s.close()')
main=http://127.0.0.1:$main_port
admin=http://127.0.0.1:$admin_port
prom=http://127.0.0.1:$prom_port

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.5 s.
wait_for() {
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  echo "check-prometheus: $what: not within $secs s" >&2
  return 1
}
# alive PID NAME LOG: dies at once, with the log's tail, when the process has exited.
alive() {
  kill -0 "$1" 2>/dev/null && return 0
  tail -n 30 "$3" >&2
  die "$2 exited"
}

spool_max=12345678
step "hookbridge serve ($bin) on 127.0.0.1:$main_port, admin 127.0.0.1:$admin_port"
cat >"$tmp/hookbridge.toml" <<EOF
[server]
listen = "127.0.0.1:$main_port"
admin_listen = "127.0.0.1:$admin_port"

# On with the file sink too, so the spool's series are exported and linted.
[spool]
enabled = true
path = "$tmp/spool.redb"
max_bytes = $spool_max

[sinks.out]
type = "file"
path = "$tmp/events.jsonl"

[sources.t]
verify = { scheme = "shared-secret", header = "x-token", secrets = ["tok"] }
EOF
"$bin" serve --config "$tmp/hookbridge.toml" >"$tmp/hookbridge.log" 2>&1 &
hb_pid=$!
pids+=("$hb_pid")
ready() { alive "$hb_pid" hookbridge "$tmp/hookbridge.log" && curl -fsS -o /dev/null "$admin/readyz" 2>/dev/null; }
if ! wait_for 30 "hookbridge /readyz answering 200" ready; then
  tail -n 30 "$tmp/hookbridge.log" >&2
  die "hookbridge did not become ready"
fi
echo "ok -- /readyz 200"

post() { # token -> HTTP status
  curl -sS -o "$tmp/answer" -w '%{http_code}' -H "x-token: $1" -H 'content-type: application/json' \
    -d '{"id":"e1"}' "$main/hooks/t"
}
status=$(post tok)
[ "$status" = 200 ] || die "accepted request: expected 200, got $status: $(cat "$tmp/answer")"
echo "ok -- right token: 200 $(cat "$tmp/answer")"
status=$(post wrong)
[ "$status" = 401 ] || die "refused request: expected 401, got $status: $(cat "$tmp/answer")"
echo "ok -- wrong token: 401 $(cat "$tmp/answer")"

step "promtool check metrics on $admin/metrics"
curl -fsS "$admin/metrics" >"$tmp/metrics.txt"
grep -q '^hookbridge_ack_latency_seconds_bucket{' "$tmp/metrics.txt" \
  || die "/metrics has no hookbridge_ack_latency_seconds_bucket: histograms not exported as buckets"
grep -q '^hookbridge_ack_latency_seconds_bucket{.*le="15"' "$tmp/metrics.txt" \
  || die "/metrics: hookbridge_ack_latency_seconds has no 15 s bucket (docs/metrics.md lists the buckets)"
echo "ok -- latency buckets reach 15 s"
# The spool gauges are set every 5 s by the housekeeping task: wait for them.
spool_gauges() {
  curl -fsS "$admin/metrics" >"$tmp/metrics.txt" 2>/dev/null \
    && grep -q '^hookbridge_spool_bytes ' "$tmp/metrics.txt" \
    && grep -q '^hookbridge_spool_max_bytes ' "$tmp/metrics.txt"
}
wait_for 10 "hookbridge_spool_bytes and hookbridge_spool_max_bytes on /metrics" spool_gauges \
  || die "/metrics lacks the spool's byte gauges"
max=$(awk '$1 == "hookbridge_spool_max_bytes" { print $2 }' "$tmp/metrics.txt")
python3 -c 'import sys; sys.exit(float(sys.argv[1]) != float(sys.argv[2]))' "$max" "$spool_max" \
  || die "hookbridge_spool_max_bytes is $max, not spool.max_bytes = $spool_max"
echo "ok -- $(grep '^hookbridge_spool_bytes ' "$tmp/metrics.txt"), hookbridge_spool_max_bytes $max (spool.max_bytes)"
# Sorted and stable: families by name, series in the same order in a second scrape.
curl -fsS "$admin/metrics" >"$tmp/metrics2.txt"
python3 - "$tmp/metrics.txt" "$tmp/metrics2.txt" <<'PY' || die "/metrics is not sorted, or two scrapes order it differently"
import sys
def series(path):
    lines = [l for l in open(path).read().splitlines() if l and not l.startswith("#")]
    return [l.rsplit(" ", 1)[0] for l in lines]
def families(path):
    return [l.split()[2] for l in open(path) if l.startswith("# TYPE ")]
one, two = series(sys.argv[1]), series(sys.argv[2])
fams = families(sys.argv[1])
if fams != sorted(fams):
    sys.exit(f"families not sorted by name: {fams}")
if one != two:
    diff = next((a, b) for a, b in zip(one + [None], two + [None]) if a != b)
    sys.exit(f"two scrapes differ in their series or order; first difference: {diff}")
print(f"ok -- {len(fams)} families sorted by name; two scrapes list {len(one)} series in the same order")
PY
lint_rc=0
promtool check metrics <"$tmp/metrics.txt" >"$tmp/lint.txt" 2>&1 || lint_rc=$?
if [ -s "$tmp/lint.txt" ]; then echo "promtool check metrics said (exit $lint_rc):"; sed 's/^/  /' "$tmp/lint.txt"; fi
allow=${HOOKBRIDGE_METRICS_LINT_ALLOW:-}
case $lint_rc in
  0) echo "ok -- no lint" ;;
  3) # lint findings (1 would be an unparsable exposition)
    if [ -n "$allow" ]; then
      grep -Ev "$allow" "$tmp/lint.txt" >"$tmp/lint-left.txt" || true
    else
      cp "$tmp/lint.txt" "$tmp/lint-left.txt"
    fi
    if [ -s "$tmp/lint-left.txt" ]; then
      die "/metrics has lint problems beyond the tolerated ones (${allow:-none})"
    fi
    echo "ok -- only tolerated lint (HOOKBRIDGE_METRICS_LINT_ALLOW=${allow})" ;;
  *) die "promtool check metrics failed (exit $lint_rc): the exposition does not parse" ;;
esac

step "prometheus on 127.0.0.1:$prom_port scraping 127.0.0.1:$admin_port every second, alerts.yml loaded"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: hookbridge
    static_configs:
      - targets: ["127.0.0.1:$admin_port"]
EOF
promtool check config "$tmp/prometheus.yml" >/dev/null
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
pids+=("$prom_pid")

# query EXPR: the API's answer to an instant query, on stdout.
query() { curl -fsS --get --data-urlencode "query=$1" "$prom/api/v1/query" 2>/dev/null; }

scraped() {
  alive "$prom_pid" prometheus "$tmp/prometheus.log"
  query 'hookbridge_requests_total{source="t"}' >"$tmp/series.json" || return 1
  python3 - "$tmp/series.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))["data"]["result"]
values = {r["metric"].get("outcome"): float(r["value"][1]) for r in result}
sys.exit(0 if values.get("accepted") == 1 and values.get("bad_signature") == 1 else 1)
PY
}
if ! wait_for 30 'hookbridge_requests_total{source="t"} with outcome accepted and bad_signature' scraped; then
  cat "$tmp/series.json" >&2 2>/dev/null || true
  tail -n 20 "$tmp/prometheus.log" >&2
  die "prometheus did not get the series"
fi
python3 - "$tmp/series.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["data"]["result"]:
    print(f'  {r["metric"]["__name__"]}{{source="{r["metric"]["source"]}",outcome="{r["metric"]["outcome"]}"}} {r["value"][1]}')
PY
echo "ok -- scraped: accepted 1, bad_signature 1"

# HookbridgeSpoolNearlyFull's division matches the two gauges one to one (same labels).
spool_ratio() {
  query 'hookbridge_spool_bytes / hookbridge_spool_max_bytes' >"$tmp/ratio.json" || return 1
  python3 -c 'import json, sys; sys.exit(len(json.load(open(sys.argv[1]))["data"]["result"]) != 1)' "$tmp/ratio.json"
}
if ! wait_for 15 "hookbridge_spool_bytes / hookbridge_spool_max_bytes with one result" spool_ratio; then
  cat "$tmp/ratio.json" >&2 2>/dev/null || true
  die "the spool ratio of HookbridgeSpoolNearlyFull has no value in prometheus"
fi
echo "ok -- hookbridge_spool_bytes / hookbridge_spool_max_bytes = $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"]["result"][0]["value"][1])' "$tmp/ratio.json")"

# Every rule evaluated at least once, none with an error (e.g. duplicate label sets).
rules_ok() {
  curl -fsS "$prom/api/v1/rules" >"$tmp/rules.json" 2>/dev/null || return 1
  python3 - "$tmp/rules.json" <<'PY'
import json, sys
rules = [r for g in json.load(open(sys.argv[1]))["data"]["groups"] for r in g["rules"]]
bad = [f'{r["name"]}: {r.get("lastError")}' for r in rules if r["health"] == "err"]
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(2)
sys.exit(0 if rules and all(r["health"] == "ok" for r in rules) else 1)
PY
}
if ! wait_for 15 "every alert rule evaluated without error" rules_ok; then
  die "alert rules do not evaluate cleanly in prometheus"
fi
python3 - "$tmp/rules.json" <<'PY'
import json, sys
rules = [r for g in json.load(open(sys.argv[1]))["data"]["groups"] for r in g["rules"]]
firing = sorted({a["labels"]["alertname"] for r in rules for a in r.get("alerts", [])})
print(f"ok -- {len(rules)} alert rules evaluate; active now: {', '.join(firing) or 'none'}")
PY

echo
echo "offline and live checks passed"
