#!/usr/bin/env bash
# Start the docs-style baseline receiver (FastAPI + uvicorn, one worker).
#
# Environment (passed through to receiver.py):
#   SINK           rabbitmq | kafka            (default rabbitmq)
#   PORT           listen port on 127.0.0.1    (default 8090)
#   COBO_PUBKEY    Ed25519 public key, hex
#   AMQP_URL, EXCHANGE                         (SINK=rabbitmq)
#   KAFKA_BROKERS, TOPIC, KAFKA_LINGER_MS      (SINK=kafka)
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/uvicorn ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r requirements.txt
fi
# `run.sh --setup` only prepares the venv (bench/run.sh does it before timing anything).
[ "${1:-}" = "--setup" ] && exit 0

exec .venv/bin/uvicorn receiver:app --host 127.0.0.1 --port "${PORT:-8090}" \
    --workers 1 --log-level warning
