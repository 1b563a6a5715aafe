#!/usr/bin/env bash
# Installs smtp-monitor and its locked runtime dependencies (uv.lock) in .venv and runs the agent
# on the example config: Prometheus metrics on http://127.0.0.1:9465/metrics, SNMP on udp 127.0.0.1:1161.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

sync_venv
if [[ $# -eq 0 ]]; then
    echo "smtp-monitor: status page on http://127.0.0.1:9465/ (metrics on /metrics, SNMP v2c 'public' on udp 127.0.0.1:1161); Ctrl-C stops it"
fi
exec .venv/bin/smtp-monitor run -c "${1:-examples/agent.yaml}"
