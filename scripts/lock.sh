#!/usr/bin/env bash
# Refreshes uv.lock from pyproject.toml. Run it after changing a dependency in pyproject.toml
# (keeps every other pin), or with --upgrade to move every package to its newest allowed release
# (run ./scripts/test.sh --latest first to see whether that release breaks the suite).
# Extra arguments go to `uv lock` (e.g. --upgrade-package cryptography).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

ensure_uv
"$UV" lock "$@"
