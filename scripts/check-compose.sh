#!/usr/bin/env bash
# Offline validation of docker-compose.yml, for CI machines without Docker:
#   1. the file against the Compose specification's JSON schema (check-jsonschema's vendored
#      copy, `vendor.compose-spec`: pinning check-jsonschema pins the schema; no download at
#      validation time), after checking the validator refuses a deliberately broken copy;
#   2. what the schema cannot see: every bind-mounted host path exists, every named volume is
#      declared, and hookbridge's healthcheck is `hookbridge health`;
#   3. `hookbridge check-config` on the configuration the file mounts.
# check-jsonschema is installed from PyPI into a virtualenv under the state directory if absent.
# Usage: scripts/check-compose.sh [COMPOSE_FILE]   (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
compose=${1:-docker-compose.yml}
CHECK_JSONSCHEMA_VERSION=0.33.0
source scripts/pytool.sh
venv=$(pytool_venv check-jsonschema "$CHECK_JSONSCHEMA_VERSION" check-jsonschema)
validate() { "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$@"; }

# A validator that accepts everything would pass every file: it must refuse a misspelt key.
broken=$(mktemp --suffix=.yml)
trap 'rm -f "$broken"' EXIT
sed '0,/healthcheck:/s//healthchek:/' "$compose" >"$broken"
if validate "$broken" >/dev/null 2>&1; then
  echo "check-compose: the schema check accepted a misspelt key; it checks nothing" >&2
  exit 1
fi
validate "$compose"

"$venv/bin/python" - "$compose" <<'PY'
import os, sys
from ruamel.yaml import YAML

path = sys.argv[1]
doc = YAML(typ="safe").load(open(path))
base = os.path.dirname(os.path.abspath(path))
declared = set((doc.get("volumes") or {}).keys())
problems = []
for name, svc in (doc.get("services") or {}).items():
    for v in svc.get("volumes") or []:
        source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if source.startswith((".", "/")):
            if not os.path.exists(os.path.join(base, source)):
                problems.append(f"services.{name}.volumes: {source} does not exist")
        elif source and source not in declared:
            problems.append(f"services.{name}.volumes: volume {source} is not declared")
test = (doc["services"].get("hookbridge", {}).get("healthcheck") or {}).get("test") or []
if not (isinstance(test, list) and test[:1] == ["CMD"] and "health" in test):
    problems.append("services.hookbridge.healthcheck: expected [\"CMD\", …hookbridge, \"health\", …]")
for p in problems:
    print(f"{path}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "ok -- bind mounts, volumes and the healthcheck"

# The configuration the stack mounts, with the secrets compose would pass.
AMQP_URL=amqp://hookbridge:hookbridge@rabbitmq:5672/%2f \
STANDARD_WEBHOOKS_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
GITHUB_WEBHOOK_SECRET=change-me \
  cargo run --locked --quiet --bin hookbridge -- check-config --config config/compose.toml
