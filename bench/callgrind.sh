#!/usr/bin/env bash
# Instructions per request under callgrind, for the file-sink paths: the one figure on this
# shared 2-core box that does not move with whatever else runs (callgrind counts instructions,
# not time: the same binary, config and requests give the same count, so a 5 % change shows).
#
#   bench/callgrind.sh                      # build (production profile), then every path
#   SKIP_BUILD=1 EVENTS=2000 bench/callgrind.sh hmac standard   # some paths only
#   KEEP=1 …   keeps the callgrind files (callgrind_annotate --inclusive=yes FILE)
#
# For each path: hookbridge runs under callgrind with instrumentation off, a warm-up of 300
# requests runs uninstrumented (connections, allocator, lazy statics), then instrumentation is
# on for EVENTS more requests from the load generator (8 keep-alive connections), and the
# server's total instructions are divided by EVENTS. The `-traced` variants turn tracing on,
# exporting to a local OTLP receiver, to measure what tracing costs per request.
# Prints one line per path and writes bench/results/callgrind-<time>.txt. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/brokers.sh   # port_open, wait_port

PROFILE=${PROFILE:-production}
EVENTS=${EVENTS:-3000}
HB=target/$PROFILE/hookbridge
LG=target/$PROFILE/hookbridge-loadgen
export BENCH_DIR; BENCH_DIR=$(mktemp -d)
OUT="bench/results/callgrind-$(date -u +%Y%m%d-%H%M%S).txt"
mkdir -p bench/results
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $BENCH_DIR" >&2; else rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT

command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --profile "$PROFILE" --locked -p hookbridge -p hookbridge-loadgen --bins
fi


# A local OTLP/HTTP receiver that answers 200 to every export (what it receives is not read).
OTLP_PORT=4399
python3 - "$OTLP_PORT" >/dev/null 2>&1 <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
PIDS+=($!)
wait_port "$OTLP_PORT" 30 "the OTLP receiver"

# The benchmark's file-sink config, and the same with tracing on.
sed "s|\${BENCH_DIR}|$BENCH_DIR|g" bench/hookbridge-file.toml >"$BENCH_DIR/plain.toml"
{ printf '[tracing]\nenabled = true\nendpoint = "http://127.0.0.1:%s/v1/traces"\n\n' "$OTLP_PORT"
  cat "$BENCH_DIR/plain.toml"; } >"$BENCH_DIR/traced.toml"

# measure NAME CONFIG SOURCE SCHEME
measure() {
  local name=$1 config=$2 source=$3 scheme=$4 out="$BENCH_DIR/$1.callgrind"
  rm -f "$BENCH_DIR"/events.jsonl "$BENCH_DIR"/audit-file.jsonl
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$HB" serve --config "$config" >"$BENCH_DIR/$name.log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  wait_port 8081 30 hookbridge
  local url="http://127.0.0.1:8081/hooks/$source"
  "$LG" run --quiet --url "$url" --scheme "$scheme" --events 300 --connections 8 --id-prefix "warm-$name" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  "$LG" run --quiet --url "$url" --scheme "$scheme" --events "$EVENTS" --connections 8 --id-prefix "run-$name" >/dev/null
  callgrind_control -i off "$pid" >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local total
  total=$(awk '/^totals:/ {print $2; exit}' "$out")
  printf '%-24s %12s instructions / %d requests = %8d per request\n' \
    "$name" "$total" "$EVENTS" "$((total / EVENTS))" | tee -a "$OUT"
}

paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(hmac standard cobo hmac-traced standard-traced cobo-traced)
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $PROFILE, $EVENTS requests per path" | tee "$OUT"
for p in "${paths[@]}"; do
  config="$BENCH_DIR/plain.toml"
  case $p in *-traced) config="$BENCH_DIR/traced.toml" ;; esac
  case ${p%-traced} in
    hmac) measure "$p" "$config" hmac hmac-sha256 ;;
    standard) measure "$p" "$config" standard standard-webhooks ;;
    cobo) measure "$p" "$config" cobo cobo-waas2 ;;
    rsa) measure "$p" "$config" rsa rsa-sha256 ;;
    *) echo "unknown path $p (hmac, standard, cobo, rsa, each optionally -traced)" >&2; exit 64 ;;
  esac
done
