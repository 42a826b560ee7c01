#!/usr/bin/env bash
# A sink's paths' server CPU per request beside their floor, measured INTERLEAVED: the floor
# server and every hookbridge variant run at once, pinned to the same core (SERVER_CPU), and the
# load generator (LOAD_CPU) sends each of them one short burst in turn, ROUNDS times over. Each
# server's CPU is counted over its own bursts only; each round's ratio sets a server's burst
# against the floor's burst of the same round, and the table gives their median and range.
#
# Why: on a shared box the background load drifts over minutes. bench/run.sh measures the
# floors first and hookbridge minutes later, so a drift between them moves the ratio (HMAC → file
# read 1.58× and 2.22× in two rounds of one run). Here the floor and hookbridge see the same
# drift, burst for burst. Two identical servers measured this way (A/A) differed by 3 %.
#
# SINK=kafka or SINK=rabbitmq measures a broker sink (bench/hookbridge-$SINK.toml) against the
# one-process floor: `http-ceiling --verify-with ... --publish-kafka/--publish-rabbitmq`, the
# minimal server + the signature check + the bare client's confirmed publish. The brokers are
# moved to LOAD_CPU beside the load generator (as in bench/run.sh), so both servers share them
# under the same load.
#
# Variants (same binary, one config change each) show where hookbridge's overhead above the
# floor goes: `audit-off` ([audit] output = "off"), `dedup-off` (the source's dedup = false).
#
#   SKIP_BUILD=1 bench/interleaved.sh             # hmac and standard, 8 rounds
#   PATHS="hmac standard cobo" ROUNDS=12 bench/interleaved.sh
#   VARIANTS="" bench/interleaved.sh              # hookbridge and the floor only
#   SINK=rabbitmq PATHS=standard BURST=15000 bench/interleaved.sh
#
# Prints a table per path and writes bench/results/interleaved-<time>.txt. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/brokers.sh
source bench/lib.sh

SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ROUNDS=${ROUNDS:-8}
BURST=${BURST:-30000}             # requests per burst (1-2 s at these rates)
CONNS=64
PATHS=${PATHS:-hmac standard}
SINK=${SINK:-file}
case $SINK in file | kafka | rabbitmq) ;; *) echo "SINK must be file, kafka or rabbitmq" >&2; exit 64 ;; esac
VARIANTS=${VARIANTS-audit-off dedup-off}
PORT_BASE=${PORT_BASE:-18180}
export PROFILE=${PROFILE:-production}
LG=target/$PROFILE/hookbridge-loadgen
HB=target/$PROFILE/hookbridge
[ -n "${SKIP_BUILD:-}" ] || cargo build --profile "$PROFILE" --locked -p hookbridge -p hookbridge-loadgen --bins

DIR=$(mktemp -d)
export BENCH_DIR=$DIR   # the floor reads bench/hookbridge-file.toml for its verifiers
export BENCH_RUN; BENCH_RUN=$(date +%s)   # the Kafka config's topic names
OUT="bench/results/interleaved-$SINK-$(date -u +%Y%m%d-%H%M%S).txt"
mkdir -p bench/results
PIDS=() PINNED=() QUEUES=()
ALL_CPUS=$(cat /sys/devices/system/cpu/online)
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PINNED[@]}"; do taskset -a -p -c "$ALL_CPUS" "$p" >/dev/null 2>&1 || true; done
  for q in "${QUEUES[@]}"; do on_load "$LG" amqp-bind --exchange x --queue "$q" --delete >/dev/null 2>&1 || true; done
  if [ -n "${started_tansu:-}" ]; then stop_tansu; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
# pin PID: every thread of a broker onto LOAD_CPU (given every core back at exit).
pin() { [ -n "$1" ] && taskset -a -p -c "$LOAD_CPU" "$1" >/dev/null && PINNED+=("$1"); }
FLOOR_PUBLISH=()
case $SINK in
  kafka)
    ensure_tansu_installed
    port_open 9092 || { started_tansu=yes; start_tansu; }
    pin "$(pgrep -o -x tansu || true)"
    FLOOR_TOPIC="hookbridge-bench.$BENCH_RUN.floor"
    on_load "$(tansu_bin)" topic create "$FLOOR_TOPIC" --partitions 3 --broker tcp://127.0.0.1:9092 >/dev/null
    FLOOR_PUBLISH=(--publish-kafka 127.0.0.1:9092 --topic "$FLOOR_TOPIC")
    ;;
  rabbitmq)
    ensure_rabbitmq
    pin "$(pgrep -o -x beam.smp || true)"
    # Each exchange needs a bound queue, or a mandatory publish is returned, not stored.
    for x in hookbridge-bench hookbridge-floor; do
      QUEUES+=("$x-interleaved-$BENCH_RUN")
      on_load "$LG" amqp-bind --exchange "$x" --queue "$x-interleaved-$BENCH_RUN"
    done
    FLOOR_PUBLISH=(--publish-rabbitmq "amqp://guest:guest@127.0.0.1:5672/%2f" --exchange hookbridge-floor --channels 8)
    ;;
esac

hz=$(getconf CLK_TCK)
scheme() { case $1 in hmac) echo hmac-sha256 ;; standard) echo standard-webhooks ;; cobo) echo cobo-waas2 ;; esac; }

# The servers: name, port, pid.
NAMES=() PORTS=() SPIDS=()
serve() {
  local name=$1 port=$2; shift 2
  # taskset itself, not on_server, in the background: $! is then the server's own pid.
  taskset -c "$SERVER_CPU" "$@" >"$DIR/$name.log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name"); PORTS+=("$port"); SPIDS+=("$!")
  wait_port "$port" 10 "$name" || { tail -5 "$DIR/$name.log" >&2; exit 1; }
}
# config NAME PORT SED: bench/hookbridge-$SINK.toml on its own port and files, with one change.
config() {
  local name=$1 port=$2 change=$3
  mkdir -p "$DIR/$name"
  listen_on "$port" <"bench/hookbridge-$SINK.toml" \
    | sed "s#\${BENCH_DIR}#$DIR/$name#g; $change" >"$DIR/$name.toml"
}

serve floor $PORT_BASE "$LG" http-ceiling --listen 127.0.0.1:$PORT_BASE --verify-with bench/hookbridge-file.toml "${FLOOR_PUBLISH[@]}"
port=$((PORT_BASE + 1))
if [ "$SINK" = file ]; then
  # The issue's file floor has no sink at all; this one adds the bare durable append (group
  # commit: a write and an fdatasync per batch), the file's counterpart of a bare broker client.
  serve floor-append $port "$LG" http-ceiling --listen 127.0.0.1:$port \
    --verify-with bench/hookbridge-file.toml --publish-file "$DIR/floor-append.jsonl"
  port=$((port + 1))
fi
config hookbridge $port ''
serve hookbridge $port "$HB" serve --config "$DIR/hookbridge.toml"
# ready NAME PORT: a broker sink is connected (its publishes would fail over to the spool before).
ready() {
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && return 0; sleep 0.2; done
  echo "$1 (:$2) never became ready" >&2; exit 1
}
ready hookbridge $port
for v in $VARIANTS; do
  port=$((port + 1))
  case $v in
    audit-off) config "$v" $port 's/^output = "file"/output = "off"/' ;;
    # The webhook sources (not the approval callback) get `dedup = false`.
    dedup-off) config "$v" $port '/^\[sources\.\(cobo\|standard\|hmac\|rsa\)\]$/a dedup = false' ;;
    *) echo "unknown variant $v" >&2; exit 64 ;;
  esac
  serve "$v" $port "$HB" serve --config "$DIR/$v.toml"
  ready "$v" $port
done

{
  echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $PROFILE; servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU;"
  echo "# $ROUNDS rounds of one $BURST-request burst per server, $CONNS connections; load average $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"
for path in $PATHS; do
  # Warm-up: connections, allocator, lazy statics.
  for i in "${!NAMES[@]}"; do
    on_load "$LG" run --quiet --url "http://127.0.0.1:${PORTS[$i]}/hooks/$path" \
      --scheme "$(scheme "$path")" --connections $CONNS --events 10000 \
      --id-prefix "warm-$path-$RANDOM" --out "$DIR/warm" >/dev/null
  done
  for r in $(seq "$ROUNDS"); do
    for i in "${!NAMES[@]}"; do
      name=${NAMES[$i]} pid=${SPIDS[$i]}
      before=$(ticks "$pid")
      on_load "$LG" run --quiet --url "http://127.0.0.1:${PORTS[$i]}/hooks/$path" \
        --scheme "$(scheme "$path")" --connections $CONNS --events "$BURST" \
        --id-prefix "$path-$r-$name-$RANDOM" --out "$DIR/burst" >/dev/null
      after=$(ticks "$pid")
      # 2xx answers (each burst's CPU is counted per 2xx); a warning names any other status.
      ok=$(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
if d['ok'] != d['requests']:
    print(f\"warning: {sys.argv[2]}: {d['ok']} 2xx of {d['requests']} (statuses {d['statuses']})\", file=sys.stderr)
print(d['ok'])" "$DIR/burst.json" "$name")
      echo "$r $name $((after - before)) $ok" >>"$DIR/bursts-$path"
    done
    # Empty the bench queues between rounds, so RabbitMQ's backlog does not grow over the run.
    for q in "${QUEUES[@]}"; do
      on_load "$LG" amqp-bind --exchange x --queue "$q" --delete >/dev/null
      on_load "$LG" amqp-bind --exchange "${q%-interleaved-*}" --queue "$q" >/dev/null
    done
  done
  floor_us=$(python3 -c "
import statistics
print(statistics.mean(int(t) * 1e6 / $hz / int(n) for r, name, t, n in (l.split() for l in open('$DIR/bursts-$path')) if name == 'floor'))")
  {
    echo
    echo "$path → $SINK"
    # The ratio over all bursts, and the spread of the per-round ratios (each round's burst
    # against the floor's burst of the same round).
    python3 - "$DIR/bursts-$path" "$hz" "$floor_us" "${NAMES[@]}" <<'PY'
import statistics, sys
path, hz, floor_us, names = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
rounds = {}
for line in open(path):
    r, name, ticks, ok = line.split()
    rounds.setdefault(r, {})[name] = int(ticks) * 1e6 / hz / int(ok)
append = 'floor-append' in names
print('%-12s %12s %8s   %-30s%s' % ('server', 'µs/request', '× floor', 'per round: median [min–max]',
                                     '  × floor-append' if append else ''))
for name in names:
    per = [r[name] / r['floor'] for r in rounds.values()]
    total = statistics.mean(r[name] for r in rounds.values())
    line = '%-12s %12.1f %7.2f×   %-30s' % (
        name, total, total / floor_us, '%.2f× [%.2f–%.2f]' % (statistics.median(per), min(per), max(per)))
    if append:
        line += '  %.2f×' % (total / statistics.mean(r['floor-append'] for r in rounds.values()))
    print(line)
PY
  } | tee -a "$OUT"
done
echo "written to $OUT"
