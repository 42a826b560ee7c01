#!/usr/bin/env bash
# One benchmark run on this machine (load generator, servers and brokers on the same box):
# ceilings (Ed25519 verification, a minimal warp server, bare rdkafka and lapin clients),
# hookbridge on each sink, and the docs-style Python baseline, measured side by side.
# Writes bench/results/<time>/ and docs/benchmarks.md. Takes about 10 minutes. Not part of CI.
#
#   bench/run.sh            # everything
#   QUICK=1 bench/run.sh    # shorter runs (a smoke test of the script)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/brokers.sh

OUT="bench/results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
export BENCH_DIR; BENCH_DIR=$(mktemp -d)
export BENCH_RUN; BENCH_RUN=$(date +%s)
SECS=${QUICK:+4}; SECS=${SECS:-10}
EVENTS=${QUICK:+20000}; EVENTS=${EVENTS:-120000}
# The profile the Dockerfile ships (fat LTO); PROFILE=release measures the quick-start build.
export PROFILE=${PROFILE:-production}
LG=target/$PROFILE/hookbridge-loadgen
HB=target/$PROFILE/hookbridge
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${started_tansu:-}" ]; then stop_tansu; fi
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
log() { printf '\n==> %s\n' "$*"; }

log "build ($PROFILE profile, with the load generator)"
cargo build --profile "$PROFILE" --locked -p hookbridge -p hookbridge-loadgen --bins --example decision-service

log "brokers"
ensure_rabbitmq
ensure_tansu_installed
port_open 9092 || started_tansu=yes
start_tansu
bench/baseline/run.sh --setup

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
# The broker's CPU is counted too: on one machine it competes with hookbridge for the same
# cores, and the report sets its cost per message beside the bare client's and hookbridge's.
broker_pid() { case $1 in rabbitmq) pgrep -o -x beam.smp ;; kafka) pgrep -o -x tansu ;; esac || true; }
BROKER_PID=""
broker_ticks() { if [ -n "$BROKER_PID" ]; then ticks "$BROKER_PID"; else echo 0; fi; }
hz=$(getconf CLK_TCK)
wait_http() { for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# start NAME PORT CMD...: starts a server in the background, records its pid.
start() {
  local name=$1 port=$2; shift 2
  "$@" >"$OUT/$name.server.log" 2>&1 &
  SERVER=$!; PIDS+=("$SERVER")
  wait_http "$port"
}
stop() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }

# load NAME URL SCHEME CONNECTIONS [extra loadgen args]: runs the generator against $SERVER and
# records the server's CPU time per request and peak RSS next to the loadgen's JSON.
load() {
  local name=$1 url=$2 scheme=$3 conns=$4; shift 4
  local before; before=$(ticks "$SERVER")
  local broker_before; broker_before=$(broker_ticks)
  $LG run --quiet --url "$url" --scheme "$scheme" --connections "$conns" --events "$EVENTS" \
    --max-secs "$SECS" --id-prefix "$name-$BENCH_RUN" --out "$OUT/$name" "$@" | tee "$OUT/$name.txt"
  local after; after=$(ticks "$SERVER")
  local broker_after; broker_after=$(broker_ticks)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")
  python3 - "$OUT/$name.json" "$before" "$after" "$hz" "$rss" "$broker_before" "$broker_after" "$BROKER_PID" <<'PY'
import json, sys
path, before, after, hz, rss, bb, ba = sys.argv[1], *map(int, sys.argv[2:8])
d = json.load(open(path))
n = max(d["requests"], 1)
d["server_cpu_us_per_req"] = (after - before) * 1e6 / hz / n
d["server_peak_rss_mb"] = rss / 1024
if sys.argv[8]:
    d["broker_cpu_us_per_req"] = (ba - bb) * 1e6 / hz / n
json.dump(d, open(path, "w"), indent=1)
PY
}

# ceiling NAME CMD...: a bare-client ceiling run writing $OUT/NAME.json, with the broker's CPU
# per message ($BROKER_PID) added to it.
ceiling() {
  local name=$1; shift
  local broker_before; broker_before=$(broker_ticks)
  "$@" --out "$OUT/$name.json"
  local broker_after; broker_after=$(broker_ticks)
  python3 - "$OUT/$name.json" "$broker_before" "$broker_after" "$hz" <<'PY'
import json, sys
path, bb, ba, hz = sys.argv[1], *map(int, sys.argv[2:5])
d = json.load(open(path))
d["broker_cpu_us_per_msg"] = (ba - bb) * 1e6 / hz / max(d["messages"], 1)
json.dump(d, open(path, "w"), indent=1)
PY
}

log "ceilings"
$LG verify-ceiling --threads 1 --secs 3 | tee "$OUT/verify-1.txt"
$LG verify-ceiling --threads 2 --secs 3 | tee "$OUT/verify-2.txt"
start http-ceiling 8099 $LG http-ceiling --listen 127.0.0.1:8099
load http-ceiling http://127.0.0.1:8099/hooks/x hmac-sha256 64
stop
tansu topic create "hookbridge-bench.$BENCH_RUN.ceiling" --partitions 3 --broker tcp://127.0.0.1:9092 >/dev/null
BROKER_PID=$(broker_pid kafka)
ceiling ceiling-kafka $LG ceiling-kafka --topic "hookbridge-bench.$BENCH_RUN.ceiling" --messages "$((EVENTS / 2))" --in-flight 256
BROKER_PID=$(broker_pid rabbitmq)
ceiling ceiling-rabbitmq-256 $LG ceiling-rabbitmq --exchange hookbridge-ceiling --messages "$((EVENTS / 6))" --in-flight 256
ceiling ceiling-rabbitmq-64 $LG ceiling-rabbitmq --exchange hookbridge-ceiling --messages "$((EVENTS / 12))" --in-flight 64
# The broker's own confirm latency at the fixed rate the p99 target uses.
$LG ceiling-rabbitmq --exchange hookbridge-ceiling --messages 20000 --in-flight 256 --rate 2000 | tee "$OUT/ceiling-rabbitmq-2000rps.txt"
BROKER_PID=""

log "hookbridge, file sink"
start hb-file 8081 $HB serve --config bench/hookbridge-file.toml
load hb-file-cobo http://127.0.0.1:8081/hooks/cobo cobo-waas2 64
load hb-file-hmac http://127.0.0.1:8081/hooks/hmac hmac-sha256 64
load hb-file-rsa http://127.0.0.1:8081/hooks/rsa rsa-sha256 64
load hb-file-2000rps http://127.0.0.1:8081/hooks/cobo cobo-waas2 64 --rate 2000
load hb-callback-rules http://127.0.0.1:8081/hooks/callback-rules cobo-waas2 64
stop
# A fresh process for the RSS target, so its peak is what 1000 connections cost (plus the dedup
# memory of this run's own events), not the dedup memory of every run before it.
start hb-file-conns 8081 $HB serve --config bench/hookbridge-file.toml
load hb-file-1000conns http://127.0.0.1:8081/hooks/standard standard-webhooks 1000
stop

log "hookbridge, RabbitMQ sink"
BROKER_PID=$(broker_pid rabbitmq)
$LG amqp-bind --exchange hookbridge-bench --queue "hookbridge-bench-$BENCH_RUN"
start hb-rabbitmq 8082 $HB serve --config bench/hookbridge-rabbitmq.toml
load hb-rabbitmq-cobo http://127.0.0.1:8082/hooks/cobo cobo-waas2 256
max=$(python3 -c "import json;print(int(json.load(open('$OUT/hb-rabbitmq-cobo.json'))['rps']))")
load hb-rabbitmq-2000rps http://127.0.0.1:8082/hooks/cobo cobo-waas2 256 --rate 2000
load hb-rabbitmq-halfmax http://127.0.0.1:8082/hooks/cobo cobo-waas2 256 --rate "$((max / 2))" \
  --check-rabbitmq "amqp://guest:guest@127.0.0.1:5672/%2f,hookbridge-bench-$BENCH_RUN"
# Approval callbacks through the example decision service (request-reply over RabbitMQ).
target/$PROFILE/examples/decision-service --rabbitmq "amqp://guest:guest@127.0.0.1:5672/%2f" \
  --requests hookbridge-bench-decisions >"$OUT/decision-service.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8082/readyz >/dev/null && break; sleep 0.2; done
load hb-callback-ask-200rps http://127.0.0.1:8082/hooks/callback-ask cobo-waas2 64 --rate 200
load hb-callback-ask http://127.0.0.1:8082/hooks/callback-ask cobo-waas2 64
stop
$LG amqp-bind --exchange hookbridge-bench --queue "hookbridge-bench-$BENCH_RUN" --delete

log "hookbridge, RabbitMQ sink with the broker down (every event goes to the spool)"
BROKER_PID=""
sed 's|amqp://guest:guest@127.0.0.1:5672/%2f|amqp://guest:guest@127.0.0.1:1/%2f|; s|spool-rabbitmq.redb|spool-down.redb|; s|127.0.0.1:8082|127.0.0.1:8084|' \
  bench/hookbridge-rabbitmq.toml > "$BENCH_DIR/down.toml"
start hb-down 8084 $HB serve --config "$BENCH_DIR/down.toml"
load hb-spool-2000rps http://127.0.0.1:8084/hooks/cobo cobo-waas2 64 --rate 2000
load hb-spool-closed http://127.0.0.1:8084/hooks/cobo cobo-waas2 64
stop

log "hookbridge, Kafka sink"
BROKER_PID=$(broker_pid kafka)
start hb-kafka 8083 $HB serve --config bench/hookbridge-kafka.toml
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8083/readyz >/dev/null && break; sleep 0.2; done
load hb-kafka-cobo http://127.0.0.1:8083/hooks/cobo cobo-waas2 256 \
  --check-kafka "127.0.0.1:9092,hookbridge-bench.$BENCH_RUN.cobo"
load hb-kafka-standard http://127.0.0.1:8083/hooks/standard standard-webhooks 64
max=$(python3 -c "import json;print(int(json.load(open('$OUT/hb-kafka-cobo.json'))['rps']))")
load hb-kafka-2000rps http://127.0.0.1:8083/hooks/cobo cobo-waas2 256 --rate 2000
load hb-kafka-halfmax http://127.0.0.1:8083/hooks/cobo cobo-waas2 256 --rate "$((max / 2))"
stop

log "docs-style baseline (FastAPI + PyNaCl + aio-pika / confluent-kafka)"
BROKER_PID=$(broker_pid rabbitmq)
$LG amqp-bind --exchange hookbridge-bench-baseline --queue "hookbridge-bench-baseline-$BENCH_RUN"
start py-rabbitmq 8090 env SINK=rabbitmq EXCHANGE=hookbridge-bench-baseline PORT=8090 bench/baseline/run.sh
load py-rabbitmq http://127.0.0.1:8090/hooks/cobo cobo-waas2 64
stop
$LG amqp-bind --exchange hookbridge-bench-baseline --queue "hookbridge-bench-baseline-$BENCH_RUN" --delete
tansu topic create "hookbridge-bench.$BENCH_RUN.baseline" --partitions 3 --broker tcp://127.0.0.1:9092 >/dev/null
BROKER_PID=$(broker_pid kafka)
start py-kafka 8091 env SINK=kafka TOPIC="hookbridge-bench.$BENCH_RUN.baseline" PORT=8091 bench/baseline/run.sh
load py-kafka http://127.0.0.1:8091/hooks/cobo cobo-waas2 64
stop

log "report"
# The report keeps the hand-written "What the numbers say" section of docs/benchmarks.md.
python3 bench/report.py "$OUT" > "$OUT/benchmarks.md"
cp "$OUT/benchmarks.md" docs/benchmarks.md
cat docs/benchmarks.md
