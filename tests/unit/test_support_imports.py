"""What may import what among the test helpers: bench/ takes tests.support alone, tests.support needs no Debian peer.

tests.support.peers is the one door from tests.support to tests.peers (the daemons bench starts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import imported_modules, under

ROOT = Path(__file__).resolve().parents[2]
BENCH_FILES = sorted((ROOT / "bench").glob("*.py"))
SUPPORT_FILES = sorted((ROOT / "tests" / "support").glob("*.py"))
PEER_DOOR = ROOT / "tests" / "support" / "peers.py"


def test_the_files_are_found() -> None:
    assert len(BENCH_FILES) > 10
    assert PEER_DOOR in SUPPORT_FILES


@pytest.mark.parametrize("path", BENCH_FILES, ids=lambda p: p.name)
def test_bench_imports_tests_support_only(path: Path) -> None:
    from_tests = [m for m in imported_modules(path, ROOT) if under(m, "tests")]
    assert [m for m in from_tests if not under(m, "tests.support")] == []


@pytest.mark.parametrize("path", [p for p in SUPPORT_FILES if p != PEER_DOOR], ids=lambda p: p.name)
def test_support_imports_no_peer_and_no_fake(path: Path) -> None:
    from_tests = [m for m in imported_modules(path, ROOT) if under(m, "tests")]
    assert [m for m in from_tests if not under(m, "tests.support")] == []


def test_the_check_sees_each_form_of_import(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    probe = bench / "probe.py"
    probe.write_text(
        "import tests.peers.nsd\nfrom tests.fakes import certs\nfrom tests import peers\n"
        "from tests.support.ports import HOST\nfrom . import common\n",
        encoding="utf-8",
    )
    names = imported_modules(probe, root=tmp_path)
    assert names == ["tests.peers.nsd", "tests.fakes", "tests.peers", "tests.support.ports", "bench"]
