#!/usr/bin/env bash
# Brokers for the test suite, on this machine only (127.0.0.1):
#   RabbitMQ 127.0.0.1:5672 (Debian's rabbitmq-server; installed and started if absent)
#   Redis    127.0.0.1:6379 (Debian's redis-server; installed and started if absent)
#   tansu    127.0.0.1:9092 (a Kafka-protocol broker from crates.io; installed once, reused)
#   HAProxy  installed only (Debian's haproxy): the fleet test starts its own on free ports
#
#   scripts/brokers.sh up     start what is missing (prints what it did)
#   scripts/brokers.sh down   stop what `up` started (the tansu it launched)
# scripts/test.sh sources this file and calls the same functions.
set -euo pipefail

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
STATE_DIR="${HOOKBRIDGE_STATE_DIR:-${TMPDIR:-/tmp}/hookbridge-test}"
mkdir -p "$STATE_DIR"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  echo "error: $3 did not open 127.0.0.1:$1 within $2 s" >&2
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# install_debian_package PACKAGE [APT-GET-INSTALL-OPTION...]: as root (or with sudo).
install_debian_package() {
  local package=$1; shift
  echo "installing Debian's $package"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$package" >/dev/null
}

# ensure_debian_service NAME PORT PACKAGE BINARY START-COMMAND...: nothing if the port is open;
# otherwise install Debian's package when its binary is missing, start it, wait for the port.
ensure_debian_service() {
  local name=$1 port=$2 package=$3 binary=$4; shift 4
  if port_open "$port"; then echo "$name: already listening on 127.0.0.1:$port"; return 0; fi
  command -v "$binary" >/dev/null 2>&1 || install_debian_package "$package"
  echo "$name: starting"
  "$@" || true
  wait_port "$port" 120 "$name"
}

ensure_rabbitmq() {
  ensure_debian_service rabbitmq 5672 rabbitmq-server rabbitmq-server as_root rabbitmq-server -detached
}

ensure_redis() {
  ensure_debian_service redis 6379 redis-server redis-server \
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log"
}

# HAProxy, the fleet test's load balancer: only installed here; each test run starts its own
# process with its own configuration on free ports.
ensure_haproxy() {
  if command -v haproxy >/dev/null 2>&1; then echo "haproxy: $(haproxy -v | head -1)"; return 0; fi
  install_debian_package haproxy
  # The package may start its own service with the stock configuration; the tests need none.
  as_root service haproxy stop >/dev/null 2>&1 || true
}

tansu_bin() {
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"; return; fi
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
}

ensure_tansu_installed() {
  local bin; bin=$(tansu_bin)
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "tansu: using $bin"; return 0
  fi
  echo "tansu: installing $TANSU_VERSION (features $TANSU_FEATURES); the first build takes 15-30 min"
  cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
    --target-dir "$STATE_DIR/tansu-target" --quiet
}

# start_tansu [storage-url]: memory by default; a sqlite:// URL keeps data across restarts.
start_tansu() {
  local storage="${1:-memory://tansu/}"
  if port_open 9092; then echo "tansu: something already listens on 127.0.0.1:9092; using it"; return 0; fi
  local bin; bin=$(tansu_bin)
  (cd "$STATE_DIR" && exec "$bin" broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine "$storage" >"$STATE_DIR/tansu.log" 2>&1) &
  echo $! >"$STATE_DIR/tansu.pid"
  wait_port 9092 60 tansu
  echo "tansu: started (pid $(cat "$STATE_DIR/tansu.pid"), storage $storage, log $STATE_DIR/tansu.log)"
}

stop_tansu() {
  [ -f "$STATE_DIR/tansu.pid" ] || return 0
  local pid; pid=$(cat "$STATE_DIR/tansu.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 70); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$STATE_DIR/tansu.pid"
  echo "tansu: stopped"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    up) ensure_rabbitmq; ensure_redis; ensure_haproxy; ensure_tansu_installed; start_tansu "${2:-}" ;;
    down) stop_tansu ;;
    *) echo "usage: $0 up [storage-url] | down" >&2; exit 64 ;;
  esac
fi
