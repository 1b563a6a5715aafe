"""snmp/identity.py: one engine identity (engine ID, boots, protocol maps) for the agent and the notifier."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from monitor.config.schema import SnmpConfig
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.identity import (
    BOOTS_MAX,
    ENGINE_STATE_FILE,
    generate_engine_id,
    next_engine_state,
    parse_engine_id,
)
from monitor.exporters.snmp.notify import Notifier
from monitor.state.health import AgentHealth

SNMP_PACKAGE = Path(__file__).resolve().parents[2] / "monitor" / "exporters" / "snmp"


class TestEngineId:
    def test_a_generated_id_is_ours_in_the_octets_format(self) -> None:
        first, second = generate_engine_id(), generate_engine_id()
        assert first[:4] == (0x80000000 | mib_oids.ENTERPRISE_OID[-1]).to_bytes(4, "big")
        assert first[4] == 5  # RFC 3411: octets, administratively assigned
        assert len(first) == 13
        assert first != second

    @pytest.mark.parametrize(
        "given",
        ["80007ed90501020304", "0x80007ed90501020304", "0X80007ed90501020304", bytes.fromhex("80007ed90501020304")],
    )
    def test_hex_text_or_octets(self, given: str | bytes) -> None:
        assert parse_engine_id(given) == bytes.fromhex("80007ed90501020304")

    @pytest.mark.parametrize("given", ["01020304", "0x" + "ab" * 33, b"\x01\x02", b"", "zz"])
    def test_outside_5_to_32_octets_or_not_hex_is_refused(self, given: str | bytes) -> None:
        with pytest.raises(ValueError):  # noqa: PT011  # bytes.fromhex's and our own refusal alike
            parse_engine_id(given)

    def test_the_notifier_refuses_what_the_agent_refuses(self) -> None:
        with pytest.raises(ValueError, match="5 to 32"):
            Notifier([], AgentHealth(), engine_id="0x01020304")
        assert Notifier([], AgentHealth(), engine_id="0X80007ed90501020304").engine_id_hex == "0x80007ed90501020304"

    def test_the_configured_id_is_what_the_schema_accepts(self) -> None:
        text = SnmpConfig.model_validate({"engine_id": "0x80007ed905aabbccdd"}).engine_id
        assert text is not None
        assert parse_engine_id(text) == bytes.fromhex("80007ed905aabbccdd")


class TestBoots:
    def test_boots_count_on_and_latch(self, tmp_path: Path) -> None:
        path = tmp_path / ENGINE_STATE_FILE
        first = next_engine_state(path, None)
        assert first.boots == 1
        assert next_engine_state(path, None) == type(first)(first.engine_id, 2)
        path.write_text(json.dumps({"engine_id": first.engine_id.hex(), "boots": BOOTS_MAX}))
        assert next_engine_state(path, None).boots == BOOTS_MAX


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from monitor... import name` in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("monitor")
        for alias in node.names
    ]


def _own_private_attributes() -> set[str]:
    """The private attributes the SNMP package's classes set on themselves (self._name = ...)."""
    return {
        target.attr
        for path in SNMP_PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
        and target.attr.startswith("_")
    }


class TestOneWing:
    """The SNMP modules hold together by public names: no private import, no private attribute read by name."""

    @pytest.mark.parametrize("path", sorted(SNMP_PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(SNMP_PACKAGE)))
    def test_no_private_name_is_imported_or_read_through_getattr(self, path: Path) -> None:
        private = [f"{module}.{name}" for module, name in _imports(path) if name.startswith("_")]
        assert private == []
        own = _own_private_attributes()  # pysnmp's own privates (a transport's _lport) are another matter
        tree = ast.parse(path.read_text(encoding="utf-8"))
        by_name = [
            node.args[1].value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in own
        ]
        assert by_name == []

    @pytest.mark.parametrize("name", ["AUTH_PROTOCOLS", "PRIV_PROTOCOLS", "generate_engine_id", "parse_engine_id"])
    def test_the_engine_identity_is_defined_once(self, name: str) -> None:
        defining = []
        for path in sorted(SNMP_PACKAGE.rglob("*.py")):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                targets = (
                    [node.name]
                    if isinstance(node, ast.FunctionDef)
                    else [t.id for t in node.targets if isinstance(t, ast.Name)]
                    if isinstance(node, ast.Assign)
                    else [node.target.id]
                    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    else []
                )
                if name in targets:
                    defining.append(path.name)
        assert defining == ["identity.py"]
