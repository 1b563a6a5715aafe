"""The agent's state against replay and prying, live on loopback: snmpEngineBoots never goes back when
snmp-engine.json is lost or damaged, state files are private whatever the umask, and a non-ASCII
community means the same octets to the gate, the fast path and pysnmp."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import SnmpConfig
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.exporters.snmp.identity import clock_boots
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.agent import AgentProcess
from tests.peers.net_snmp import tool_env
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port

ENGINE_ID = "80007ed905a1b2c3d4e5f60718"
SYS_DESCR = "1.3.6.1.2.1.1.1.0"


def ber(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body  # short form: every item here is under 128 octets


def discovery(msg_id: int = 4242) -> bytes:
    """SNMPv3 engine ID discovery (RFC 3414 4): reportable, noAuthNoPriv, no engine ID, an empty GET."""
    header = ber(
        0x30,
        ber(0x02, msg_id.to_bytes(2, "big")) + ber(0x02, b"\x00\xff\xe3") + ber(0x04, b"\x04") + ber(0x02, b"\x03"),
    )
    usm = ber(0x30, ber(0x04, b"") + ber(0x02, b"\x00") + ber(0x02, b"\x00") + ber(0x04, b"") * 3)
    pdu = ber(0xA0, ber(0x02, msg_id.to_bytes(2, "big")) + ber(0x02, b"\x00") * 2 + ber(0x30, b""))
    return ber(0x30, ber(0x02, b"\x03") + header + ber(0x04, usm) + ber(0x30, ber(0x04, b"") * 2 + pdu))


def _items(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, value start, value end) of each BER item from pos to end."""
    while pos < end:
        tag, size, start = data[pos], data[pos + 1], pos + 2
        if size & 0x80:
            count = size & 0x7F
            size, start = int.from_bytes(data[start : start + count], "big"), start + count
        yield tag, start, start + size
        pos = start + size


def reported_engine(port: int) -> tuple[bytes, int]:
    """(msgAuthoritativeEngineID, msgAuthoritativeEngineBoots) of the agent's Report to a discovery."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(discovery(), ("127.0.0.1", port))
        report = sock.recv(65535)
    ((_, start, end),) = _items(report, 0, len(report))
    _, _, params = list(_items(report, start, end))[:3]
    ((_, inner, inner_end),) = _items(report, params[1], params[2])
    engine_id, boots, *_ = _items(report, inner, inner_end)
    return report[engine_id[1] : engine_id[2]], int.from_bytes(report[boots[1] : boots[2]], "big", signed=True)


@contextmanager
def served(state_dir: Path, **snmp: Any) -> Iterator[tuple[SnmpAgent, int]]:
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": "c"}], **snmp})
    agent = SnmpAgent(config, state_dir, ResultsStore(), AgentHealth())
    with AgentThread(agent):
        yield agent, port


class TestBootsNeverGoBack:
    def test_a_lost_engine_state_with_a_configured_engine_id_does_not_reset_boots(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        state = tmp_path / "snmp-engine.json"
        seen = []
        for _ in range(2):
            with served(tmp_path, engine_id=ENGINE_ID) as (_, port):
                seen.append(reported_engine(port))
            time.sleep(1.1)  # restarts a second apart, as systemd's RestartSec=5s spaces them at least
        assert [engine_id.hex() for engine_id, _ in seen] == [ENGINE_ID] * 2
        assert seen[1][1] == seen[0][1] + 1
        state.unlink()  # lost: a new volume, a restore from an old backup without it, a mistake
        with (
            caplog.at_level(logging.WARNING, logger="smtp_monitor.snmp"),
            served(tmp_path, engine_id=ENGINE_ID) as (
                agent,
                port,
            ),
        ):
            engine_id, boots = reported_engine(port)
        assert engine_id.hex() == ENGINE_ID
        assert boots > seen[1][1], f"boots went back from {seen[1][1]} to {boots}"
        assert agent.engine_state is not None
        assert agent.engine_state.boots == boots
        assert json.loads(state.read_text())["boots"] == boots
        assert "snmpEngineBoots set from the clock" in caplog.text

    @pytest.mark.parametrize("boots", [-5, 2**31, "7", None, 1.5])
    def test_a_bad_boots_value_is_refused_and_boots_come_from_the_clock(
        self, tmp_path: Path, boots: object, caplog: pytest.LogCaptureFixture
    ) -> None:
        (tmp_path / "snmp-engine.json").write_text(json.dumps({"engine_id": ENGINE_ID, "boots": boots}))
        before = clock_boots()
        with caplog.at_level(logging.WARNING, logger="smtp_monitor.snmp"), served(tmp_path) as (_, port):
            engine_id, reported = reported_engine(port)
        assert engine_id.hex() == ENGINE_ID  # the saved engine ID is kept
        assert before <= reported <= clock_boots()
        assert "ignoring boots in SNMP engine state" in caplog.text

    def test_a_generated_engine_id_still_counts_from_one(self, tmp_path: Path) -> None:
        for expected in (1, 2):
            with served(tmp_path) as (_, port):
                assert reported_engine(port)[1] == expected


class TestStateFileModes:
    def test_state_files_are_private_under_umask_022(
        self, agent_factory: Callable[[dict[str, object]], AgentProcess], tmp_path: Path
    ) -> None:
        port = free_udp_port()
        previous = os.umask(0o022)  # as when run by hand; the agent subprocess inherits it
        try:
            agent = agent_factory(
                {"snmp": {"enabled": True, "listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": "c"}]}}
            )
        finally:
            os.umask(previous)
        state_dir = agent.workdir / "state"
        agent.wait_until(
            lambda: (state_dir / "state.db").exists() and (state_dir / "snmp-engine.json").exists(),
            10,
            "no state files",
        )
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in state_dir.iterdir()}
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        assert {"state.db", "snmp-engine.json"} <= set(modes)
        assert modes == dict.fromkeys(modes, 0o600), {name: oct(mode) for name, mode in modes.items()}


class TestNonAsciiCommunity:
    @pytest.mark.parametrize("path", ["fast path", "pysnmp"])
    def test_a_utf8_community_reads_on_both_paths(self, tmp_path: Path, path: str) -> None:
        communities = ["café", "пароль-ü"]
        port = free_udp_port()
        config = SnmpConfig.model_validate(
            {
                "listen": [f"udp:127.0.0.1:{port}"],
                "communities": [{"name": name} for name in communities],
            }
        )
        agent = SnmpAgent(config, tmp_path, ResultsStore(), AgentHealth())
        if path == "pysnmp":
            agent.fast_path = None
        with AgentThread(agent):
            for community in communities:
                result = subprocess.run(
                    ["snmpget", "-v2c", "-c", community, "-On", "-t", "2", "-r", "1", f"127.0.0.1:{port}", SYS_DESCR],
                    capture_output=True, text=True, env=tool_env(tmp_path), timeout=30, check=False,
                )  # fmt: skip
                assert result.returncode == 0, f"{community}: {result.stderr}"
                assert "smtp-monitor" in result.stdout
            latin1 = subprocess.run(
                ["snmpget", "-v2c", "-c", communities[0].encode("utf-8").decode("latin-1"), "-On", "-t", "0.5", "-r",
                 "0", f"127.0.0.1:{port}", SYS_DESCR],
                capture_output=True, text=True, env=tool_env(tmp_path), timeout=30, check=False,
            )  # fmt: skip
            assert latin1.returncode != 0  # the same text in other octets is another community
