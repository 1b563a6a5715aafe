# Sourced by the other scripts (not run by itself): a pinned, hash-checked uv in .tools/uv,
# and the project's virtualenv .venv synced from uv.lock.
# shellcheck shell=bash

UV_REQUIREMENTS=scripts/uv-requirements.txt
UV_TOOL_VENV=.tools/uv
UV="$UV_TOOL_VENV/bin/uv"
# The machine's python3 (3.11+), never an interpreter downloaded by uv.
export UV_PYTHON_DOWNLOADS=never
export UV_PYTHON="${UV_PYTHON:-python3}"
# Write .pyc files at install time, as pip does: the agent then starts without compiling pysnmp's
# MIB modules (tests/unit/test_snmp_mib_bytecode.py holds it to that).
export UV_COMPILE_BYTECODE=1

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "$0: not root and no sudo: cannot run $*" >&2
        exit 1
    fi
}

# Debian's python3 comes without venv/ensurepip until python3-venv is installed.
ensure_python_venv() {
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    fi
}

ensure_uv() {
    local wanted
    wanted=$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' "$UV_REQUIREMENTS")
    if [[ $("$UV" --version 2>/dev/null) == "uv $wanted"* ]]; then
        return
    fi
    ensure_python_venv
    python3 -m venv --clear "$UV_TOOL_VENV"
    "$UV_TOOL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r "$UV_REQUIREMENTS"
}

# .venv holds exactly the lock's packages for the given extras (uv sync removes anything else);
# --locked fails when pyproject.toml and uv.lock disagree instead of re-resolving.
sync_venv() {
    ensure_uv
    "$UV" sync --locked "$@"
}
