#!/usr/bin/env bash
# Installs smtp-monitor in a virtualenv and runs the agent on the example config:
# Prometheus metrics on http://127.0.0.1:9465/metrics, SNMP on udp 127.0.0.1:1161.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
exec .venv/bin/smtp-monitor run -c "${1:-examples/agent.yaml}"
