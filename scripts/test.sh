#!/usr/bin/env bash
# Installs everything the tests need (Debian packages for the real peers, a virtualenv
# with the project and its test extras), lints, type-checks and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/test-deps.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
