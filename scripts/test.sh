#!/usr/bin/env bash
# Installs everything the tests need (Debian packages for the real peers; .venv with the project
# and the test extras exactly as uv.lock pins them), lints, type-checks, spell-checks and runs the whole
# suite.
# Arguments go to pytest.
#
#   ./scripts/test.sh --latest   the same suite on the newest releases pyproject.toml allows, in
#                                .venv-latest, ignoring uv.lock: an early warning that a new release
#                                breaks something, before ./scripts/lock.sh --upgrade takes it in.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

venv=.venv
if [[ ${1:-} == --latest ]]; then
    shift
    venv=.venv-latest
fi

bash scripts/test-deps.sh

if [[ $venv == .venv ]]; then
    sync_venv --extra test
else
    ensure_uv
    "$UV" venv --quiet --clear "$venv"
    "$UV" pip install --quiet --python "$venv/bin/python" --upgrade -e '.[test]'
    # tests/unit/test_dependency_lock.py checks the installed set against the lock unless told
    # that this run is on purpose off the lock
    export SMTP_MONITOR_UNLOCKED=1
    "$UV" pip list --python "$venv/bin/python" --format freeze | sed 's/^/latest: /'
fi

"$venv/bin/ruff" format --check .
"$venv/bin/ruff" check .
"$venv/bin/mypy"
"$venv/bin/codespell"
exec "$venv/bin/python" -m pytest "$@"
