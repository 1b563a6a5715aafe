"""pre-commit runs the checks the test command runs: a check added to one and not the other would let a
commit pass locally that CI then fails, or the reverse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The test command checks the whole tree without changing it (`ruff format --check .`); a hook is given
# the changed files, formats them in place and leaves files excluded in pyproject.toml alone.
SCRIPT_ONLY_ARGS = frozenset({"--check", "."})
HOOK_ONLY_ARGS = frozenset({"--force-exclude"})


def script_checks() -> set[tuple[str, ...]]:
    """The `"$venv/bin/<tool>" args` lines of scripts/test.sh (the checks before pytest), as tool and args."""
    checks = set()
    for line in (ROOT / "scripts" / "test.sh").read_text().splitlines():
        match = re.fullmatch(r'"\$venv/bin/([\w-]+)"(.*)', line.strip())
        if match:
            checks.add((match[1], *(a for a in shlex.split(match[2]) if a not in SCRIPT_ONLY_ARGS)))
    return checks


def hook_checks() -> set[tuple[str, ...]]:
    """The `.venv/bin/<tool> args` hooks of .pre-commit-config.yaml, as tool and args (python -m pytest aside)."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    checks = set()
    for repo in config["repos"]:
        for hook in repo["hooks"]:
            tool, *args = shlex.split(hook["entry"])
            if tool.startswith(".venv/bin/") and tool != ".venv/bin/python":
                checks.add((tool.removeprefix(".venv/bin/"), *(a for a in args if a not in HOOK_ONLY_ARGS)))
    return checks


def test_the_test_command_and_pre_commit_run_the_same_checks() -> None:
    assert script_checks() == hook_checks()
    assert script_checks() == {("ruff", "format"), ("ruff", "check"), ("mypy",), ("codespell",)}
