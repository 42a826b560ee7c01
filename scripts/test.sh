#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, then every test tier
# (unit, HTTP, integration, and the Kafka/RabbitMQ tests against real brokers, which this
# script starts and stops). Works on a fresh machine: it installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/brokers.sh

started=""
# An `if`, not `&&`: under set -e, a false test in the EXIT trap would become the exit status.
cleanup() { if [ -n "$started" ]; then stop_tansu; fi; }
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "brokers"
ensure_rabbitmq
ensure_redis
ensure_haproxy
ensure_tansu_installed
port_open 9092 || started=yes
start_tansu

export TANSU_BIN; TANSU_BIN=$(tansu_bin)
export HOOKBRIDGE_TEST_KAFKA=127.0.0.1:9092
export HOOKBRIDGE_TEST_REDIS=redis://127.0.0.1:6379/0
export HOOKBRIDGE_TEST_AMQP="amqp://guest:guest@127.0.0.1:5672/%2f"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace: service, load generator, test kit; all targets and features) -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo clippy --no-default-features (the service without broker crates)"
cargo clippy -p hookbridge --no-default-features --lib --locked -- -D warnings

step "docker-compose.yml offline: Compose schema, mounts and volumes, check-config on what it mounts"
scripts/check-compose.sh

step "deploy/kubernetes offline: kustomization complete, every resource against the Kubernetes schemas (strict), probes and shutdown timing, check-config on its configuration"
scripts/check-kubernetes.sh

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked --quiet

step "cargo nextest run (everything but chaos, the test kit's and load generator's own tests included)"
cargo nextest run --workspace --locked --profile ci -E 'not test(/^chaos::/) and not test(/^fleet::/)'

# After the tests, which built target/debug/hookbridge: promtool on the rules (unit tests per
# alert) and on a real scrape, and a real Prometheus scraping a running hookbridge.
step "Prometheus: alert rules and their unit tests, the dashboard's queries, a live scrape"
scripts/check-prometheus.sh target/debug/hookbridge

# The chaos scenarios stop RabbitMQ and freeze brokers, and the fleet runs three replicas and
# HAProxy under load: alone, one at a time, after the rest.
step "chaos scenarios and the fleet (serial)"
cargo nextest run --workspace --locked --profile ci --test-threads 1 --no-capture -E 'test(/^chaos::/) or test(/^fleet::/)' 2>&1 \
  | tee "$STATE_DIR/chaos.log" | grep --line-buffered -E '^(chaos|fleet) |PASS|FAIL|Summary|panicked'
test "${PIPESTATUS[0]}" -eq 0
