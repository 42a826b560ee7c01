#!/usr/bin/env bash
# One benchmark run on this machine, with the processes PINNED so that the figures mean
# something on a shared box: the server under test (hookbridge, the http-ceiling floor servers,
# the bare broker clients standing in for hookbridge's broker client, the Python baseline) runs
# on SERVER_CPU only; the load generator and the brokers (RabbitMQ's beam.smp, tansu) on
# LOAD_CPU. Each path's server CPU per request (ticks of the server process / requests) is set
# beside its floor measured in the same run, the same way:
#
#   floor(path) = minimal HTTP server + hookbridge's own verifier for the path's scheme
#                 (`hookbridge-loadgen http-ceiling --verify-with bench/hookbridge-file.toml`)
#               + the bare broker client's CPU per message for the path's sink (0 for the file sink)
#
# and beside it the one-process floor: the same server publishing each verified body with the
# bare client and answering once confirmed (`--publish-kafka`, `--publish-rabbitmq`), or
# appending it durably (`--publish-file`: group commit, a write and an fdatasync per batch),
# loaded the same way, so that the broker shares the load core with the load generator as it
# does while hookbridge runs. The targets table judges broker paths against the one-process
# floor and file paths against the sink-less floor the issue set.
#
# Then the fixed-rate p99 runs (file, spool, Kafka at 2,000 req/s, and the Kafka path's
# one-process floor at the same rate), the RSS run (1,000 keep-alive connections), the
# docs-style Python baseline, and instructions per request under callgrind
# (bench/callgrind.sh) when valgrind is installed.
# Writes bench/results/<time>/ and docs/benchmarks.md. About 10 minutes; not part of CI.
#
#   bench/run.sh                          # build (production profile), then everything
#   QUICK=1 bench/run.sh                  # short runs (a smoke test of the script)
#   SKIP_BUILD=1 bench/run.sh             # use the binaries already in target/$PROFILE
#   SERVER_CPU=1 LOAD_CPU=0 bench/run.sh  # the cores (these are the defaults)
#   ROUNDS=2 bench/run.sh                 # repeat the pinned table (floors + hookbridge)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/brokers.sh
source bench/lib.sh

T_START=$(date +%s)
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ROUNDS=${ROUNDS:-1}
SECS=${SECS:-${QUICK:+3}}; SECS=${SECS:-10}                 # longest closed-loop run
EVENTS=${EVENTS:-${QUICK:+15000}}; EVENTS=${EVENTS:-120000}   # most events per run
CALLGRIND_EVENTS=${CALLGRIND_EVENTS:-${QUICK:+500}}; CALLGRIND_EVENTS=${CALLGRIND_EVENTS:-2000}
CONNS=64             # every closed-loop run, floors and hookbridge alike
FIXED_RATE=2000      # the p99 target's rate
PORT_BASE=${PORT_BASE:-8080}
P_FILE=$((PORT_BASE + 1)) P_RABBIT=$((PORT_BASE + 2)) P_KAFKA=$((PORT_BASE + 3)) P_DOWN=$((PORT_BASE + 4))
P_PYR=$((PORT_BASE + 10)) P_PYK=$((PORT_BASE + 11)) P_FLOOR=$((PORT_BASE + 19))
# The profile the Dockerfile ships (fat LTO); PROFILE=release measures the quick-start build.
export PROFILE=${PROFILE:-production}
LG=target/$PROFILE/hookbridge-loadgen
HB=target/$PROFILE/hookbridge
ALL_CPUS=$(cat /sys/devices/system/cpu/online)   # e.g. 0-1: what the brokers get back at exit

[ "$SERVER_CPU" != "$LOAD_CPU" ] || { echo "SERVER_CPU and LOAD_CPU must differ" >&2; exit 64; }
for c in "$SERVER_CPU" "$LOAD_CPU"; do
  taskset -c "$c" true 2>/dev/null || { echo "CPU $c is not usable here (online: $ALL_CPUS)" >&2; exit 64; }
done

OUT="bench/results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
export BENCH_DIR; BENCH_DIR=$(mktemp -d)
export BENCH_RUN; BENCH_RUN=$(date +%s)
PIDS=()
PINNED=()            # broker pids moved to LOAD_CPU, given every core back at exit
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PINNED[@]}"; do
    taskset -a -p -c "$ALL_CPUS" "$p" >/dev/null 2>&1 && echo "pid $p: back on CPUs $ALL_CPUS"
  done
  if [ -n "${started_tansu:-}" ]; then stop_tansu; fi
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '\n==> %s\n' "$*"; }

if [ -z "${SKIP_BUILD:-}" ]; then
  log "build ($PROFILE profile, with the load generator)"
  cargo build --profile "$PROFILE" --locked -p hookbridge -p hookbridge-loadgen --bins
fi
for b in "$HB" "$LG"; do [ -x "$b" ] || { echo "$b is missing (build it, or drop SKIP_BUILD)" >&2; exit 1; }; done
T_MEASURE=$(date +%s)

log "brokers (moved to CPU $LOAD_CPU)"
ensure_rabbitmq
ensure_tansu_installed
port_open 9092 || started_tansu=yes
start_tansu
bench/baseline/run.sh --setup
RABBIT_PID=$(pgrep -o -x beam.smp || true)
if [ -n "${started_tansu:-}" ]; then TANSU_PID=$(cat "$STATE_DIR/tansu.pid"); else TANSU_PID=$(pgrep -o -x tansu || true); fi
# pin NAME PID: every thread of a running broker onto LOAD_CPU (new threads inherit it).
pin() {
  if [ -z "$2" ]; then echo "warning: no $1 process found; it runs unpinned" >&2; return 0; fi
  taskset -a -p -c "$LOAD_CPU" "$2" >/dev/null
  PINNED+=("$2")
  echo "$1 (pid $2): every thread on CPU $LOAD_CPU"
}
pin rabbitmq "$RABBIT_PID"
pin tansu "$TANSU_PID"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

# cpu_jiffies CPU: "busy total" clock ticks of one core so far (/proc/stat), to tell how much of
# the server's core something else (another build on a shared box) took during a run.
cpu_jiffies() { awk -v c="cpu$1" '$1 == c {b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat; }
# The broker's CPU is recorded too (it runs on LOAD_CPU beside the load generator).
BROKER_PID=""
broker_ticks() { if [ -n "$BROKER_PID" ]; then ticks "$BROKER_PID"; else echo 0; fi; }
hz=$(getconf CLK_TCK)
wait_http() { for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_ready() { for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.2; done; echo "warning: :$1 not ready" >&2; }

# start NAME PORT CMD...: starts a server on SERVER_CPU in the background, records its pid.
start() {
  local name=$1 port=$2; shift 2
  # Another process on the port would take the load in the server's place (a shared box).
  if port_open "$port"; then echo "port $port is already in use: $(ss -ltnpH "sport = :$port" 2>/dev/null)" >&2; return 1; fi
  # taskset itself, not a function, in the background: $! is then the server's own pid.
  taskset -c "$SERVER_CPU" "$@" >"$OUT/$name.server.log" 2>&1 &
  SERVER=$!; PIDS+=("$SERVER")
  wait_http "$port" && kill -0 "$SERVER" 2>/dev/null || { tail -5 "$OUT/$name.server.log" >&2; return 1; }
}
stop() {
  kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$SERVER" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# load NAME URL SCHEME CONNECTIONS [extra loadgen args]: runs the generator (on LOAD_CPU)
# against $SERVER and adds to the loadgen's JSON the server's CPU per request, its peak RSS,
# the broker's CPU per request, and how much of the server's core other processes took.
# L_EVENTS / L_SECS override EVENTS / SECS for one call.
load() {
  local name=$1 url=$2 scheme=$3 conns=$4; shift 4
  local before broker_before core_before after broker_after core_after rss
  before=$(ticks "$SERVER"); broker_before=$(broker_ticks); core_before=$(cpu_jiffies "$SERVER_CPU")
  on_load "$LG" run --quiet --url "$url" --scheme "$scheme" --connections "$conns" \
    --events "${L_EVENTS:-$EVENTS}" --max-secs "${L_SECS:-$SECS}" --id-prefix "$name-$BENCH_RUN" \
    --out "$OUT/$name" "$@" | tee "$OUT/$name.txt"
  after=$(ticks "$SERVER"); broker_after=$(broker_ticks); core_after=$(cpu_jiffies "$SERVER_CPU")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")
  python3 - "$OUT/$name.json" "$before" "$after" "$hz" "$rss" "$broker_before" "$broker_after" \
    $core_before $core_after "$BROKER_PID" <<'PY'
import json, sys
path = sys.argv[1]
before, after, hz, rss, bb, ba, cb_busy, cb_total, ca_busy, ca_total = map(int, sys.argv[2:12])
d = json.load(open(path))
n = max(d["requests"], 1)
server_ticks = after - before
d["server_cpu_us_per_req"] = server_ticks * 1e6 / hz / n
# Busy share of the server's core while the generator was sending (it is idle while pre-signing).
d["server_busy"] = server_ticks / hz / max(d["seconds"], 1e-9)
# What the rest of the machine took of the server's core over the whole window.
d["server_core_others"] = max(ca_busy - cb_busy - server_ticks, 0) / max(ca_total - cb_total, 1)
d["server_peak_rss_mb"] = rss / 1024
if sys.argv[12:] and sys.argv[12]:
    d["broker_cpu_us_per_req"] = (ba - bb) * 1e6 / hz / n
json.dump(d, open(path, "w"), indent=1)
PY
}

# all_2xx NAME [warn]: fails (or only warns) unless every request of run NAME got a 2xx.
all_2xx() {
  python3 - "$OUT/$1.json" "${2:-}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
if d["ok"] != d["requests"]:
    print(f"{'warning' if sys.argv[2] else 'error'}: {sys.argv[1]}: {d['ok']} 2xx of {d['requests']} "
          f"(statuses {d['statuses']})", file=sys.stderr)
    sys.exit(0 if sys.argv[2] else 1)
PY
}

# client NAME CMD...: a bare broker client on SERVER_CPU (standing in for hookbridge's own
# client), writing $OUT/NAME.json: its own CPU per message (its process's ticks over the
# publishes / messages, `client_cpu_us_per_msg`) and the broker's ($BROKER_PID).
client() {
  local name=$1; shift
  local broker_before broker_after
  broker_before=$(broker_ticks)
  on_server "$@" --out "$OUT/$name.json" | tee "$OUT/$name.txt"
  broker_after=$(broker_ticks)
  python3 - "$OUT/$name.json" "$broker_before" "$broker_after" "$hz" "$SERVER_CPU" <<'PY'
import json, sys
path, bb, ba, hz, cpu = sys.argv[1], *map(int, sys.argv[2:6])
d = json.load(open(path))
d["broker_cpu_us_per_msg"] = (ba - bb) * 1e6 / hz / max(d["messages"], 1)
d["cpu"] = cpu
json.dump(d, open(path, "w"), indent=1)
PY
}

# The bench configs, each listening on this run's port (PORT_BASE, default 8080: the configs'
# own 8081-8084; another base keeps clear of a bench/callgrind.sh running on 8081).
listen_on $P_FILE <bench/hookbridge-file.toml >"$BENCH_DIR/file.toml"
listen_on $P_KAFKA <bench/hookbridge-kafka.toml >"$BENCH_DIR/kafka.toml"
listen_on $P_RABBIT <bench/hookbridge-rabbitmq.toml >"$BENCH_DIR/rabbitmq.toml"
# The same with the broker down: every event goes to the spool.
sed 's|amqp://guest:guest@127.0.0.1:5672/%2f|amqp://guest:guest@127.0.0.1:1/%2f|; s|spool-rabbitmq.redb|spool-down.redb|' \
  "$BENCH_DIR/rabbitmq.toml" | listen_on $P_DOWN >"$BENCH_DIR/down.toml"
on_load "$(tansu_bin)" topic create "hookbridge-bench.$BENCH_RUN.floor" --partitions 3 --broker tcp://127.0.0.1:9092 >/dev/null
# Bare-client messages per round: about SECS seconds at this machine's rates.
KAFKA_MSGS=$((EVENTS / 2)); RABBIT_MSGS=$((EVENTS / 4))

# floor1 SINK "PATH:SCHEME ..." PUBLISH-ARGS...: round $r's one-process floor for SINK (the
# floor server with the given --publish-* arguments), loaded on each path.
floor1() {
  local sink=$1 paths=$2 s; shift 2
  start floor1-$sink-r$r $P_FLOOR "$LG" http-ceiling --listen 127.0.0.1:$P_FLOOR \
    --verify-with bench/hookbridge-file.toml "$@"
  for s in $paths; do
    load floor1-$sink-${s%%:*}-r$r "http://127.0.0.1:$P_FLOOR/hooks/${s%%:*}" "${s#*:}" $CONNS
    all_2xx floor1-$sink-${s%%:*}-r$r
  done
  stop
}

for r in $(seq 1 "$ROUNDS"); do
  log "round $r/$ROUNDS: floors (server side on CPU $SERVER_CPU)"
  start floor-http-r$r $P_FLOOR "$LG" http-ceiling --listen 127.0.0.1:$P_FLOOR
  load floor-http-r$r http://127.0.0.1:$P_FLOOR/hooks/x hmac-sha256 $CONNS
  all_2xx floor-http-r$r
  stop
  start floor-verify-r$r $P_FLOOR "$LG" http-ceiling --listen 127.0.0.1:$P_FLOOR --verify-with bench/hookbridge-file.toml
  for s in hmac:hmac-sha256 standard:standard-webhooks cobo:cobo-waas2; do
    load floor-verify-${s%%:*}-r$r "http://127.0.0.1:$P_FLOOR/hooks/${s%%:*}" "${s#*:}" $CONNS
    all_2xx floor-verify-${s%%:*}-r$r
  done
  stop
  # The one-process floors: the same server, then the bare client's confirmed publish (or, for
  # the file sink, the synced append), loaded the way hookbridge is, while the broker shares the
  # load core with the load generator as it does while hookbridge runs.
  floor1 file "hmac:hmac-sha256 standard:standard-webhooks cobo:cobo-waas2" \
    --publish-file "$BENCH_DIR/floor-append-r$r.jsonl"
  BROKER_PID=$TANSU_PID
  floor1 kafka "standard:standard-webhooks cobo:cobo-waas2" \
    --publish-kafka 127.0.0.1:9092 --topic "hookbridge-bench.$BENCH_RUN.floor"
  BROKER_PID=$RABBIT_PID
  on_load "$LG" amqp-bind --exchange hookbridge-floor --queue "hookbridge-floor-$BENCH_RUN"
  floor1 rabbitmq "standard:standard-webhooks cobo:cobo-waas2" \
    --publish-rabbitmq amqp://guest:guest@127.0.0.1:5672/%2f --exchange hookbridge-floor --channels 8
  on_load "$LG" amqp-bind --exchange hookbridge-floor --queue "hookbridge-floor-$BENCH_RUN" --delete
  BROKER_PID=""
  # The same in-flight count as hookbridge's 64 connections; channels as bench/hookbridge-rabbitmq.toml.
  BROKER_PID=$TANSU_PID
  client floor-kafka-r$r "$LG" ceiling-kafka --topic "hookbridge-bench.$BENCH_RUN.floor" \
    --messages "$KAFKA_MSGS" --in-flight $CONNS
  BROKER_PID=$RABBIT_PID
  client floor-rabbitmq-r$r "$LG" ceiling-rabbitmq --exchange hookbridge-ceiling \
    --messages "$RABBIT_MSGS" --in-flight $CONNS --channels 8
  BROKER_PID=""

  log "round $r/$ROUNDS: hookbridge, file sink"
  start hb-file-r$r $P_FILE "$HB" serve --config "$BENCH_DIR/file.toml"
  for s in hmac:hmac-sha256 standard:standard-webhooks cobo:cobo-waas2; do
    load pin-file-${s%%:*}-r$r "http://127.0.0.1:$P_FILE/hooks/${s%%:*}" "${s#*:}" $CONNS
    all_2xx pin-file-${s%%:*}-r$r warn
  done
  stop

  log "round $r/$ROUNDS: hookbridge, Kafka sink"
  BROKER_PID=$TANSU_PID
  start hb-kafka-r$r $P_KAFKA "$HB" serve --config "$BENCH_DIR/kafka.toml"
  wait_ready $P_KAFKA
  for s in standard:standard-webhooks cobo:cobo-waas2; do
    load pin-kafka-${s%%:*}-r$r "http://127.0.0.1:$P_KAFKA/hooks/${s%%:*}" "${s#*:}" $CONNS
    all_2xx pin-kafka-${s%%:*}-r$r warn
  done
  stop

  log "round $r/$ROUNDS: hookbridge, RabbitMQ sink (confirms)"
  BROKER_PID=$RABBIT_PID
  on_load "$LG" amqp-bind --exchange hookbridge-bench --queue "hookbridge-bench-$BENCH_RUN"
  start hb-rabbitmq-r$r $P_RABBIT "$HB" serve --config "$BENCH_DIR/rabbitmq.toml"
  wait_ready $P_RABBIT
  for s in standard:standard-webhooks cobo:cobo-waas2; do
    load pin-rabbitmq-${s%%:*}-r$r "http://127.0.0.1:$P_RABBIT/hooks/${s%%:*}" "${s#*:}" $CONNS
    all_2xx pin-rabbitmq-${s%%:*}-r$r warn
  done
  stop
  on_load "$LG" amqp-bind --exchange hookbridge-bench --queue "hookbridge-bench-$BENCH_RUN" --delete
  BROKER_PID=""
done

# Open loop at the p99 target's rate (Cobo WaaS2, the dearest signature of the targets).
# The disk's own durability latency: the file sink and the spool answer only after an
# fdatasync, so their p99 cannot be below the disk's (1,000 appends of a ~6 KB batch, each synced).
log "fdatasync latency of the disk under \$BENCH_DIR"
python3 - "$BENCH_DIR/fsync-probe" "$OUT/fdatasync.json" <<'PY'
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
lat = []
for _ in range(1000):
    os.write(fd, b"x" * 6000)
    t = time.perf_counter()
    os.fdatasync(fd)
    lat.append((time.perf_counter() - t) * 1000)
os.close(fd)
os.unlink(sys.argv[1])
lat.sort()
q = {k: lat[int(len(lat) * x)] for k, x in [("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)]}
q["max_ms"] = lat[-1]
json.dump(q, open(sys.argv[2], "w"))
print("fdatasync ms: " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in q.items()))
PY

log "p99 at a fixed $FIXED_RATE req/s: file sink"
start hb-file-fixed $P_FILE "$HB" serve --config "$BENCH_DIR/file.toml"
L_EVENTS=$((FIXED_RATE * SECS)) L_SECS=$((SECS + 5)) \
  load hb-file-2000rps http://127.0.0.1:$P_FILE/hooks/cobo cobo-waas2 $CONNS --rate $FIXED_RATE
all_2xx hb-file-2000rps warn
stop

log "p99 at a fixed $FIXED_RATE req/s: RabbitMQ sink with the broker down (every event to the spool)"
start hb-down $P_DOWN "$HB" serve --config "$BENCH_DIR/down.toml"
L_EVENTS=$((FIXED_RATE * SECS)) L_SECS=$((SECS + 5)) \
  load hb-spool-2000rps http://127.0.0.1:$P_DOWN/hooks/cobo cobo-waas2 $CONNS --rate $FIXED_RATE
all_2xx hb-spool-2000rps warn
stop

log "p99 at a fixed $FIXED_RATE req/s: Kafka sink"
BROKER_PID=$TANSU_PID
start hb-kafka-fixed $P_KAFKA "$HB" serve --config "$BENCH_DIR/kafka.toml"
wait_ready $P_KAFKA
L_EVENTS=$((FIXED_RATE * SECS)) L_SECS=$((SECS + 5)) \
  load hb-kafka-2000rps http://127.0.0.1:$P_KAFKA/hooks/cobo cobo-waas2 $CONNS --rate $FIXED_RATE
all_2xx hb-kafka-2000rps warn
stop
# The same rate through the one-process floor (minimal server + the Ed25519 check + bare
# rdkafka, answering once acked): what this machine's latency is without hookbridge.
start floor-kafka-fixed $P_FLOOR "$LG" http-ceiling --listen 127.0.0.1:$P_FLOOR \
  --verify-with bench/hookbridge-file.toml --publish-kafka 127.0.0.1:9092 --topic "hookbridge-bench.$BENCH_RUN.floor"
# Warmed first, as hookbridge is ready before its run: the producer connects and gets its
# idempotent producer ID on its first publish, which would otherwise land in this run's p99.
on_load "$LG" run --quiet --url http://127.0.0.1:$P_FLOOR/hooks/cobo --scheme cobo-waas2 --connections $CONNS \
  --events 2000 --id-prefix "warm-$BENCH_RUN" --out "$BENCH_DIR/floor-warm" >/dev/null
L_EVENTS=$((FIXED_RATE * SECS)) L_SECS=$((SECS + 5)) \
  load floor-kafka-2000rps http://127.0.0.1:$P_FLOOR/hooks/cobo cobo-waas2 $CONNS --rate $FIXED_RATE
all_2xx floor-kafka-2000rps warn
stop
BROKER_PID=""

# A fresh process for the RSS target, so its peak is what 1000 connections cost (plus the dedup
# memory of this run's own events), not the dedup memory of every run before it.
log "RSS with 1000 keep-alive connections (file sink)"
start hb-file-conns $P_FILE "$HB" serve --config "$BENCH_DIR/file.toml"
load hb-file-1000conns http://127.0.0.1:$P_FILE/hooks/standard standard-webhooks 1000
all_2xx hb-file-1000conns warn
stop

log "docs-style baseline (FastAPI + PyNaCl + aio-pika / confluent-kafka), on CPU $SERVER_CPU"
BROKER_PID=$RABBIT_PID
on_load "$LG" amqp-bind --exchange hookbridge-bench-baseline --queue "hookbridge-bench-baseline-$BENCH_RUN"
start py-rabbitmq $P_PYR env SINK=rabbitmq EXCHANGE=hookbridge-bench-baseline PORT=$P_PYR bench/baseline/run.sh
load py-rabbitmq http://127.0.0.1:$P_PYR/hooks/cobo cobo-waas2 $CONNS
all_2xx py-rabbitmq warn
stop
on_load "$LG" amqp-bind --exchange hookbridge-bench-baseline --queue "hookbridge-bench-baseline-$BENCH_RUN" --delete
on_load "$(tansu_bin)" topic create "hookbridge-bench.$BENCH_RUN.baseline" --partitions 3 --broker tcp://127.0.0.1:9092 >/dev/null
BROKER_PID=$TANSU_PID
start py-kafka $P_PYK env SINK=kafka TOPIC="hookbridge-bench.$BENCH_RUN.baseline" PORT=$P_PYK bench/baseline/run.sh
load py-kafka http://127.0.0.1:$P_PYK/hooks/cobo cobo-waas2 $CONNS
all_2xx py-kafka warn
stop
BROKER_PID=""

if port_open 8081; then   # bench/callgrind.sh's own port
  echo "port 8081 is in use (another bench/callgrind.sh?): no instruction counts in this report" | tee "$OUT/callgrind.txt" >&2
elif command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
  log "instructions per request (callgrind, $CALLGRIND_EVENTS requests per path)"
  SKIP_BUILD=1 EVENTS=$CALLGRIND_EVENTS bench/callgrind.sh hmac standard cobo | tee "$OUT/callgrind.txt" \
    || echo "bench/callgrind.sh failed (its output is above in the run's log)" | tee -a "$OUT/callgrind.txt" >&2
else
  echo "valgrind not installed: no instruction counts in this report" > "$OUT/callgrind.txt"
fi

log "report"
T_END=$(date +%s)
python3 - "$OUT/meta.json" <<PY
import json, sys
json.dump({
    "server_cpu": $SERVER_CPU, "load_cpu": $LOAD_CPU, "all_cpus": "$ALL_CPUS", "rounds": $ROUNDS,
    "quick": bool("${QUICK:-}"), "skip_build": bool("${SKIP_BUILD:-}"), "secs": $SECS, "events": $EVENTS, "connections": $CONNS,
    "fixed_rate": $FIXED_RATE, "callgrind_events": $CALLGRIND_EVENTS, "profile": "$PROFILE",
    "rabbitmq_pid": "${RABBIT_PID}", "tansu_pid": "${TANSU_PID}",
    "loadavg_start": "$LOADAVG_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "started": $T_START, "build_s": $((T_MEASURE - T_START)), "run_s": $((T_END - T_MEASURE)),
    "commit": "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tools Cargo.toml Cargo.lock 2>/dev/null || echo +changes)",
}, open(sys.argv[1], "w"), indent=1)
PY
# The report keeps the hand-written sections of docs/benchmarks.md.
python3 bench/report.py "$OUT" > "$OUT/benchmarks.md"
cp "$OUT/benchmarks.md" docs/benchmarks.md
cat docs/benchmarks.md
