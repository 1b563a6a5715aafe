"""The quick tier stays quick and Debian-free: peer fixtures carry the `peers` marker, unit tests import no daemon."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import conftest
from tests.support.imports import imported_modules, under

ROOT = Path(__file__).resolve().parents[2]
UNIT_FILES = sorted((ROOT / "tests" / "unit").glob("*.py"))
# Helpers under tests/peers that run in the test's own process and need no Debian file.
IN_PROCESS_PEERS = frozenset({"tests.peers.snmp_agent_thread", "tests.peers.zone", "tests.peers.signed_zones"})
# Fixtures of tests/conftest.py that start nothing: the directory the peers share, the Postfix resumer.
NOT_PEERS = frozenset({"peers_dir", "_resume_paused_postfix", "_root_logger_restored"})


def fixtures_defined_in(path: Path) -> set[str]:
    """Names of the functions in `path` decorated with pytest.fixture (called or not)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) == "pytest.fixture":
                    found.add(node.name)
    return found


def test_every_shared_fixture_that_starts_something_puts_its_tests_in_the_peers_tier() -> None:
    fixtures = fixtures_defined_in(ROOT / "tests" / "conftest.py")
    assert fixtures >= NOT_PEERS
    assert fixtures - NOT_PEERS == conftest._PEER_FIXTURES


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_unit_tests_import_no_daemon_from_tests_peers(path: Path) -> None:
    peers = {m for m in imported_modules(path, ROOT) if under(m, "tests.peers")}
    assert peers - IN_PROCESS_PEERS == set()
