"""NMS conventions against net-snmp's tools, snmptrapd, promtool and the agent as a process.

sysObjectID.0 (LibreNMS picks the OS by it) and the Unix-time twins of the DateAndTime columns on the
fast path and the pysnmp path; snmpTrapAddress.0 (Zabbix matches a trap to its host by it) in every
v1/v2c/v3 trap and inform; agent.location as sysLocation.0 and as the `location` label of /metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import SmtpProbeConfig, SnmpConfig, SnmpNotify
from monitor.exporters.prometheus.metrics import ProbeExposition, build_registry
from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.exporters.snmp.identity import generate_engine_id
from monitor.exporters.snmp.notify import Notifier
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers import net_snmp
from tests.peers.agent import AgentProcess
from tests.peers.snmp_agent_thread import AgentThread
from tests.peers.snmptrapd import TrapReceiver, V3User
from tests.support.ports import free_tcp_port, free_udp_port

COMMUNITY = "nms-conventions"
AUTH_PASS = "auth-pass-123"
PRIV_PASS = "priv-pass-456"
TRAP_USER = "trapper"
INFORM_USER = "informer"
PROMTOOL = "/usr/bin/promtool"
MIB_DIR = Path(__file__).resolve().parents[2] / "mibs"
SNMP_TRAP_ADDRESS = ".1.3.6.1.6.3.18.1.3.0"
AGENT_OID = "." + ".".join(map(str, mib.AGENT_OID))
SEE = 8.0  # seconds to wait for snmptrapd to log what it must


def dotted(oid: tuple[int, ...]) -> str:
    return "." + ".".join(map(str, oid))


# -- net-snmp reads of a live SnmpAgent -----------------------------------------------------------


@dataclass
class Served:
    port: int
    path: str
    last_success: float


def _store() -> ResultsStore:
    store = ResultsStore(announce=False)
    configs = [SmtpProbeConfig(name=name, host="mail.test", port=25, tls="none") for name in ("ok-probe", "never")]
    store.configure([(config, 1, 14) for config in configs])
    store.record("ok-probe", SmtpResult("mail.test", 25, "none", time.time(), ok=True, address="192.0.2.1"))
    return store


@pytest.fixture(scope="module", params=["fast path", "pysnmp"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": COMMUNITY}]})
    store = _store()
    last_success = store.snapshot().states["ok-probe"].last_success
    assert last_success is not None
    state_dir = tmp_path_factory.mktemp("snmp-state")
    agent = SnmpAgent(config, state_dir, store, AgentHealth(), location="fra-1, rack 4")
    if request.param == "pysnmp":
        agent.fast_path = None  # every request through pysnmp's responders
    with AgentThread(agent):
        yield Served(port, request.param, last_success)


@pytest.fixture(scope="module")
def tool_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return net_snmp.tool_env(tmp_path_factory.mktemp("net-snmp"))


def snmpget(served: Served, env: dict[str, str], base_mibs: Path, options: tuple[str, ...], *oids: str) -> str:
    """`snmpget -v2c` with SMTP-MONITOR-MIB loaded; stdout, failing the test on any error."""
    mibs = ("-M", f"+{MIB_DIR}:{base_mibs}", "-m", "SMTP-MONITOR-MIB")
    argv = ["snmpget", "-v2c", "-c", COMMUNITY, "-r", "2", "-t", "3", *mibs, *options, f"udp:127.0.0.1:{served.port}"]
    out = subprocess.run([*argv, *oids], capture_output=True, text=True, env=env, check=False, timeout=30)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    return out.stdout


class TestSystemGroup:
    def test_sys_object_id_is_smtp_monitor_agent_oid(
        self, served: Served, tool_env: dict[str, str], base_mibs: Path
    ) -> None:
        numeric = snmpget(served, tool_env, base_mibs, ("-On",), ".1.3.6.1.2.1.1.2.0")
        assert numeric.strip() == f".1.3.6.1.2.1.1.2.0 = OID: {AGENT_OID}"
        named = snmpget(served, tool_env, base_mibs, (), "SNMPv2-MIB::sysObjectID.0")
        assert named.strip() == "SNMPv2-MIB::sysObjectID.0 = OID: SMTP-MONITOR-MIB::smtpMonitorAgentOID"

    def test_sys_location_is_the_agent_location(
        self, served: Served, tool_env: dict[str, str], base_mibs: Path
    ) -> None:
        out = snmpget(served, tool_env, base_mibs, ("-Oqv",), "SNMPv2-MIB::sysLocation.0")
        assert out.strip() == "fra-1, rack 4"  # a DisplayString: net-snmp prints it unquoted


class TestUnixTimeColumns:
    def test_never_is_0_and_a_success_is_its_unix_second(
        self, served: Served, tool_env: dict[str, str], base_mibs: Path
    ) -> None:
        out = snmpget(
            served, tool_env, base_mibs, ("-OQ", "-OU"),
            'SMTP-MONITOR-MIB::smtpProbeLastSuccessUnixTime."ok-probe"',
            'SMTP-MONITOR-MIB::smtpProbeLastSuccessUnixTime."never"',
            'SMTP-MONITOR-MIB::smtpProbeLastChangeUnixTime."never"',
            'SMTP-MONITOR-MIB::smtpProbeCertExpiryUnixTime."never"',
            'SMTP-MONITOR-MIB::smtpProbeTlsSeenUnixTime."never"',
            'SMTP-MONITOR-MIB::smtpProbeLastSuccess."never"',
        )  # fmt: skip
        values = dict(line.split(" = ", 1) for line in out.strip().splitlines())
        assert values == {
            'SMTP-MONITOR-MIB::smtpProbeLastSuccessUnixTime."ok-probe"': str(int(served.last_success)),
            'SMTP-MONITOR-MIB::smtpProbeLastSuccessUnixTime."never"': "0",
            'SMTP-MONITOR-MIB::smtpProbeLastChangeUnixTime."never"': "0",
            'SMTP-MONITOR-MIB::smtpProbeCertExpiryUnixTime."never"': "0",
            'SMTP-MONITOR-MIB::smtpProbeTlsSeenUnixTime."never"': "0",
            'SMTP-MONITOR-MIB::smtpProbeLastSuccess."never"': "0-1-1,0:0:0.0",  # DateAndTime's never: year 0
        }


# -- snmpTrapAddress.0 at snmptrapd ---------------------------------------------------------------


class AgentAddrReceiver(TrapReceiver):
    """snmptrapd whose v1 lines also show the Trap-PDU's agent-addr field (%a)."""

    def _config(self) -> str:
        return super()._config().replace("specific %q: %v", "specific %q agent-addr %a: %v")


@pytest.fixture
def engine_id() -> bytes:
    return generate_engine_id()


@pytest.fixture
def receiver(tmp_path: Path, engine_id: bytes) -> Iterator[AgentAddrReceiver]:
    users = [
        V3User(INFORM_USER, "SHA", AUTH_PASS, "AES", PRIV_PASS),
        V3User(TRAP_USER, "SHA-256", AUTH_PASS, "AES", PRIV_PASS, "0x" + engine_id.hex()),
    ]
    trapd = AgentAddrReceiver(tmp_path / "snmptrapd", community="public", v3_users=users)
    try:
        trapd.start()
        yield trapd
    finally:
        trapd.close()


def receivers(port: int) -> list[SnmpNotify]:
    """One receiver of each kind, all at the same snmptrapd."""
    v3 = {"auth": {"protocol": "sha256", "password": AUTH_PASS}, "priv": {"protocol": "aes128", "password": PRIV_PASS}}
    documents: list[dict[str, Any]] = [
        {"version": "1", "type": "trap", "community": "public"},
        {"version": "2c", "type": "trap", "community": "public"},
        {"version": "2c", "type": "inform", "community": "public"},
        {"version": "3", "type": "trap", "user": TRAP_USER, **v3},
        {
            "version": "3", "type": "inform", "user": INFORM_USER,
            "auth": {"protocol": "sha", "password": AUTH_PASS}, "priv": v3["priv"],
        },
    ]  # fmt: skip
    return [SnmpNotify.model_validate({"host": "127.0.0.1", "port": port, "timeout": 2, **doc}) for doc in documents]


def send_cold_start_and_a_failure(
    receiver: TrapReceiver, engine_id: bytes, trap_address: ipaddress.IPv4Address | None
) -> list[str]:
    """coldStart and smtpProbeFailed to every kind of receiver; snmptrapd's lines of them (10 expected)."""

    async def main() -> None:
        health = AgentHealth()
        notifier = Notifier(receivers(receiver.port), health, engine_id, engine_boots=1, trap_address=trap_address)
        await notifier.start()
        try:
            await notifier.cold_start()
            store = ResultsStore()
            store.configure([(SmtpProbeConfig(name="mail-a", host="mail.test", port=2525, tls="none"), 1, 14)])
            notifier.subscribe(store)
            failed = SmtpResult(
                "mail.test", 2525, "none", time.time(), ok=False, phase=Phase.CONNECT, reason=Reason.REFUSED,
                error="refused", address="127.0.0.1", total=0.01,
            )  # fmt: skip
            store.record("mail-a", failed)
            assert await notifier.drain(SEE)
        finally:
            await notifier.stop(deadline=2.0)
        outcomes = {outcome for (_, outcome) in health.notifications}
        assert outcomes <= {"sent", "acknowledged"}, health.notifications

    asyncio.run(main())
    end = time.monotonic() + SEE
    while len(receiver.notifications()) < 10 and time.monotonic() < end:
        time.sleep(0.05)
    return receiver.notifications()


KINDS = (
    r"^TRAP, SNMP v1, community public ",
    r"^TRAP2, SNMP v2c, community public ",
    r"^INFORM, SNMP v2c, community public ",
    rf"^TRAP2, SNMP v3, user {TRAP_USER}, ",
    rf"^INFORM, SNMP v3, user {INFORM_USER}, ",
)


class TestSnmpTrapAddress:
    def test_every_notification_carries_the_source_address_toward_the_receiver(
        self, receiver: AgentAddrReceiver, engine_id: bytes
    ) -> None:
        lines = send_cold_start_and_a_failure(receiver, engine_id, None)
        assert len(lines) == 10, "\n".join(lines)
        for kind in KINDS:
            mine = [line for line in lines if re.search(kind, line)]
            assert len(mine) == 2, (kind, lines)  # coldStart and smtpProbeFailed
            for line in mine:
                if "SNMP v1" in line:
                    # RFC 3584 3.2: a v1 trap takes snmpTrapAddress.0 as its agent-addr field.
                    assert "agent-addr 127.0.0.1:" in line, line
                    assert SNMP_TRAP_ADDRESS not in line
                else:
                    assert f"{SNMP_TRAP_ADDRESS} = IpAddress: 127.0.0.1\t" in line + "\t", line
                    assert line.rstrip().endswith(f"{SNMP_TRAP_ADDRESS} = IpAddress: 127.0.0.1"), line

    def test_a_configured_trap_address_is_sent_instead(self, receiver: AgentAddrReceiver, engine_id: bytes) -> None:
        lines = send_cold_start_and_a_failure(receiver, engine_id, ipaddress.IPv4Address("192.0.2.7"))
        assert len(lines) == 10, "\n".join(lines)
        for line in lines:
            if "SNMP v1" in line:
                assert "agent-addr 192.0.2.7:" in line, line
            else:
                assert f"{SNMP_TRAP_ADDRESS} = IpAddress: 192.0.2.7" in line, line
            assert "IpAddress: 127.0.0.1" not in line


# -- the location label -----------------------------------------------------------------------------


def promtool_check(text: str) -> None:
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False, timeout=60
    )
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


class TestLocationExposition:
    def test_promtool_accepts_both_expositions_with_a_location(self) -> None:
        from prometheus_client import generate_latest

        from tests.unit.test_nms_conventions import mixed_store

        store = mixed_store()
        cached = ProbeExposition("fra-1").render(store.snapshot().states.values()).decode()
        assert (
            'smtp_probe_success{probe="s",host="mail.example",port="25",tls="starttls",location="fra-1"} 1.0' in cached
        )
        promtool_check(cached)
        promtool_check(generate_latest(build_registry(store, AgentHealth(), location="fra-1")).decode())


# -- the agent as a process ---------------------------------------------------------------------------


class TestAgentProcess:
    def test_location_reaches_metrics_and_sys_location_and_cold_start_carries_the_trap_address(
        self, tmp_path: Path, trap_receiver: TrapReceiver, tool_env: dict[str, str], base_mibs: Path
    ) -> None:
        snmp_port = free_udp_port()
        closed = free_tcp_port()  # nothing listens: the probe fails at connect
        agent = AgentProcess(
            tmp_path,
            {
                "agent": {"state_dir": str(tmp_path / "state"), "location": "fra-1", "probe_process": False},
                "defaults": {"interval": "0.5s", "timeout": "1s", "alert_after": 1},
                "snmp": {
                    "enabled": True,
                    "listen": [f"udp:127.0.0.1:{snmp_port}"],
                    "communities": [{"name": COMMUNITY}],
                    "notify": [
                        {"host": "127.0.0.1", "port": trap_receiver.port, "version": "2c", "community": "public"}
                    ],
                },
                "smtp": [{"name": "closed", "host": "127.0.0.1", "port": closed, "tls": "none"}],
            },
        )
        try:
            agent.start()
            cold = trap_receiver.wait_for(r"OID: \.1\.3\.6\.1\.6\.3\.1\.1\.5\.1\t", timeout=SEE)
            assert f"{SNMP_TRAP_ADDRESS} = IpAddress: 127.0.0.1" in cold
            failed = trap_receiver.wait_for(
                re.escape(dotted(mib.notification_oid(mib.Notification.SMTP_PROBE_FAILED))), timeout=SEE
            )
            assert failed.rstrip().endswith(f"{SNMP_TRAP_ADDRESS} = IpAddress: 127.0.0.1")

            agent.wait_until(
                lambda: agent.value("smtp_probe_runs_total", probe="closed", location="fra-1") is not None,
                10,
                "no runs",
            )
            status, text = agent.get("/metrics")
            assert status == 200
            probe_lines = [
                line
                for line in text.splitlines()
                if re.match(r"(smtp_(?!monitor_)|mx_check_|delivery_probe_)\w+\{", line)
            ]
            assert probe_lines
            assert all('location="fra-1"' in line for line in probe_lines), [
                line for line in probe_lines if "fra-1" not in line
            ]
            promtool_check(text)

            env = tool_env
            out = subprocess.run(
                ["snmpget", "-v2c", "-c", COMMUNITY, "-m", "", "-On", "-Oqv", f"udp:127.0.0.1:{snmp_port}",
                 ".1.3.6.1.2.1.1.6.0", ".1.3.6.1.2.1.1.2.0"],
                capture_output=True, text=True, env=env, check=False, timeout=30,
            )  # fmt: skip
            assert (out.returncode, out.stderr) == (0, "")
            assert out.stdout.splitlines() == ['"fra-1"', AGENT_OID]
        finally:
            agent.stop()
