"""monitor.exporters.snmp.engine's MIB source: pysnmp's MIB modules run from their bytecode caches, unless stale."""

from __future__ import annotations

import builtins
import os
import py_compile
from pathlib import Path
from typing import Any

import pytest
from pysnmp.entity.engine import SnmpEngine

from monitor.exporters.snmp.engine import _BYTECODE, _BytecodeMibSource, new_snmp_engine


def symbols(engine: Any) -> dict[str, list[str]]:
    return {module: sorted(names) for module, names in engine.get_mib_builder().mibSymbols.items()}


def mib_dir(tmp_path: Path, source: str) -> tuple[Path, Path]:
    """A MIB directory holding X-MIB.py and its bytecode cache, as pip installs packages."""
    path = tmp_path / "X-MIB.py"
    path.write_text(source)
    cache = py_compile.compile(str(path), doraise=True)
    assert cache is not None  # None only when doraise=False swallowed an error
    return path, Path(cache)


def read_and_run(directory: Path) -> tuple[str, str, Any]:
    """What _BytecodeMibSource reads for X-MIB: (suffix, the path pysnmp runs, the module's `answer`)."""
    source = _BytecodeMibSource(str(directory)).init()
    code, suffix = source.read("X-MIB")
    scope: dict[str, Any] = {}
    exec(code, scope)  # noqa: S102 - our own test module
    return suffix, source.full_path("X-MIB", suffix), scope["answer"]


class TestBytecodeMibSource:
    def test_engine_loads_the_modules_and_symbols_pysnmp_loads(self) -> None:
        assert symbols(new_snmp_engine()) == symbols(SnmpEngine())

    def test_engine_compiles_no_mib_module(self, monkeypatch: pytest.MonkeyPatch) -> None:
        compiled: list[str] = []
        real = builtins.compile

        def counting(source: Any, filename: Any, *args: Any, **kwargs: Any) -> Any:
            compiled.append(str(filename))
            return real(source, filename, *args, **kwargs)

        monkeypatch.setattr(builtins, "compile", counting)
        new_snmp_engine()
        assert [name for name in compiled if "MIB" in name] == []

    def test_fresh_cache_is_what_pysnmp_runs(self, tmp_path: Path) -> None:
        _, cache = mib_dir(tmp_path, "answer = 42\n")
        suffix, runs, answer = read_and_run(tmp_path)
        assert suffix == _BYTECODE
        assert runs == str(cache)
        assert answer == 42

    def test_stale_cache_leaves_the_module_to_pysnmp(self, tmp_path: Path) -> None:
        path, _ = mib_dir(tmp_path, "answer = 42\n")
        path.write_text("answer = 420\n")  # another size: the cache is not this source's
        suffix, runs, answer = read_and_run(tmp_path)
        assert suffix == ".py"
        assert runs == str(path)
        assert answer == 420

    def test_missing_cache_leaves_the_module_to_pysnmp(self, tmp_path: Path) -> None:
        path, cache = mib_dir(tmp_path, "answer = 42\n")
        os.remove(cache)
        source = _BytecodeMibSource(str(tmp_path)).init()
        _, suffix = source.read("X-MIB")
        assert source.full_path("X-MIB", suffix) == str(path)
