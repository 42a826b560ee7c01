#!/usr/bin/env bash
# Sourced by the offline validators (check-compose.sh, check-kubernetes.sh): a pinned PyPI tool
# in a virtualenv of its own under the state directory, installed once and reused.
#   pytool_venv PACKAGE VERSION COMMAND   prints the venv's path; installs it if COMMAND is absent
STATE_DIR="${HOOKBRIDGE_STATE_DIR:-${TMPDIR:-/tmp}/hookbridge-test}"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pytool_venv() {
  local package=$1 version=$2 command=$3
  local venv="$STATE_DIR/$package-$version"
  if [ ! -x "$venv/bin/$command" ]; then
    # Debian ships python3 without venv (and a fresh machine may have no python3 at all).
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
      echo "$package: installing Debian's python3-venv" >&2
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    mkdir -p "$STATE_DIR"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version" >&2
  fi
  echo "$venv"
}
