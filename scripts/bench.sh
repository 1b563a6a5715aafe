#!/usr/bin/env bash
# Runs bench/run.py on the locked dependency set (.venv synced from uv.lock with the test and
# bench extras). Arguments go to bench/run.py, e.g. --quick or --only smtp,snmp.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

sync_venv --extra test --extra bench
exec .venv/bin/python bench/run.py "$@"
