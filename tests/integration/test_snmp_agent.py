"""SnmpAgent against net-snmp's tools: v1/v2c/v3 reads, access control, garbage datagrams, binding, engine state."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig, SnmpConfig
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.agent import SnmpAgent, SnmpBindError
from monitor.exporters.snmp.mib_oids import Oid
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, SmtpResult, TlsInfo
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.net_snmp import tool_env
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
MODULES = "SMTP-MONITOR-MIB:SNMPv2-MIB"  # our module and imports, plus SNMPv2-MIB for sys* names
COMMUNITY = "mon-read-7f3a"  # distinctive, so a leak into a value would be found
LAN_ONLY = "lan-only-c0de"  # allowed from 192.0.2.0/24 only: never from the tests' loopback
LOOPBACK_ONLY = "loop-only-b0b"  # allowed from loopback
AUTH_PASS = "auth-pass-8d1e"
PRIV_PASS = "priv-pass-4c2a"
USER = "nms"  # SHA + AES (authPriv)
NET_SNMP_AUTH = {
    "md5": "MD5",
    "sha": "SHA",
    "sha224": "SHA-224",
    "sha256": "SHA-256",
    "sha384": "SHA-384",
    "sha512": "SHA-512",
}
NET_SNMP_PRIV = {"des": "DES", "aes128": "AES", "aes192": "AES-192", "aes256": "AES-256"}
QUICK = ("-t", "0.5", "-r", "0")  # for requests that must get no answer
PATIENT = ("-t", "3", "-r", "2")  # for requests that must be answered, on a busy machine
SYS_DESCR = ".1.3.6.1.2.1.1.1.0"


def dotted(oid: Oid) -> str:
    return "." + ".".join(str(arc) for arc in oid)


END_OF_VIEW = "No more variables left in this MIB View"


def parse_numeric(output: str) -> list[Oid]:
    """The OIDs of `-On` output lines, in order, without the endOfMibView line a walk ends with."""
    oids = []
    for line in output.splitlines():
        if line.startswith(".") and " = " in line and END_OF_VIEW not in line:
            oids.append(tuple(int(arc) for arc in line.split(" = ", 1)[0].strip(".").split(".")))
    return oids


# -- a served agent ---------------------------------------------------------------------------


@dataclass
class Served:
    agent: SnmpAgent
    health: AgentHealth
    store: ResultsStore
    port: int
    port6: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether `condition` holds within `timeout`: the agent counts after it has answered."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def free_udp6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def users_config() -> list[dict[str, Any]]:
    """USER, an auth-only user, and one authPriv user per auth and per privacy protocol."""
    users: list[dict[str, Any]] = [
        {
            "name": USER,
            "auth": {"protocol": "sha", "password": AUTH_PASS},
            "priv": {"protocol": "aes128", "password": PRIV_PASS},
        },
        {"name": "auth-only", "auth": {"protocol": "sha256", "password": AUTH_PASS}},
    ]
    for auth in NET_SNMP_AUTH:
        users.append(
            {
                "name": f"a-{auth}",
                "auth": {"protocol": auth, "password": AUTH_PASS},
                "priv": {"protocol": "aes128", "password": PRIV_PASS},
            }
        )
    for priv in NET_SNMP_PRIV:
        users.append(
            {
                "name": f"p-{priv}",
                "auth": {"protocol": "sha256", "password": AUTH_PASS},
                "priv": {"protocol": priv, "password": PRIV_PASS},
            }
        )
    return users


def snmp_config(*listen: str, communities: list[dict[str, Any]] | None = None, **extra: Any) -> SnmpConfig:
    return SnmpConfig.model_validate(
        {
            "listen": list(listen),
            "communities": communities if communities is not None else [{"name": COMMUNITY}],
            **extra,
        }
    )


def filled_store() -> ResultsStore:
    """Probes of every shape: ok with TLS, failed, many small rows; MX checks with and without records."""
    store = ResultsStore()
    probes: list[SmtpProbeConfig | MxCheckConfig] = [
        SmtpProbeConfig(name="mail-a", host="mail.example.org"),
        SmtpProbeConfig(name="b", host="192.0.2.9", tls="implicit"),
        SmtpProbeConfig(name="relay.example:587", host="relay.example", port=587),
        *(SmtpProbeConfig(name=f"p{i:02d}", host=f"mx{i}.example.net", tls="none") for i in range(30)),
        MxCheckConfig(name="example.org", domain="example.org"),
        MxCheckConfig(name="implicit", domain="implicit.example"),
    ]
    store.configure([(config, 1, 14) for config in probes])
    now = datetime.now(UTC)
    cert = CertInfo(
        "CN=mail.example.org",
        "CN=Test CA",
        ("DNS:mail.example.org",),
        now - timedelta(days=5),
        now + timedelta(days=40),
        "0a",
        "cd" * 32,
    )
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", True, cert=cert)
    store.record(
        "mail-a",
        SmtpResult(
            "mail.example.org",
            25,
            "starttls",
            time.time(),
            True,
            address="192.0.2.1",
            timings={"connect": 0.002, "tls": 0.02},
            total=0.05,
            tls=tls,
        ),
    )
    store.record(
        "b",
        SmtpResult(
            "192.0.2.9",
            465,
            "implicit",
            time.time(),
            False,
            phase=Phase.CONNECT,
            reason=Reason.REFUSED,
            error="connection refused",
            address="192.0.2.9",
        ),
    )
    for i in range(0, 30, 2):
        store.record(f"p{i:02d}", SmtpResult(f"mx{i}.example.net", 25, "none", time.time(), True, total=0.01))
    records = (
        MxRecord(20, "mx2.example.org", ("192.0.2.2", "2001:db8::2")),
        MxRecord(10, "mx1.example.org", ("192.0.2.1",)),
    )
    store.record("example.org", MxResult("example.org", time.time(), True, records=records, total=0.004))
    store.record(
        "implicit",
        MxResult(
            "implicit.example",
            time.time(),
            True,
            implicit_mx=True,
            records=(MxRecord(0, "implicit.example", ("192.0.2.3",)),),
        ),
    )
    return store


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One agent for the read and access tests: udp 127.0.0.1 and udp6 ::1, three communities, v3 users."""
    port, port6 = free_udp_port(), free_udp6_port()
    config = snmp_config(
        f"udp:127.0.0.1:{port}",
        f"udp6:[::1]:{port6}",
        communities=[
            {"name": COMMUNITY},
            {"name": LAN_ONLY, "allow": ["192.0.2.0/24"]},
            {"name": LOOPBACK_ONLY, "allow": ["127.0.0.0/8", "::1/128"]},
        ],
        users=users_config(),
    )
    health, store = AgentHealth(), filled_store()
    agent = SnmpAgent(config, tmp_path_factory.mktemp("snmp-state"), store, health)
    with AgentThread(agent):
        yield Served(agent, health, store, port, port6)


# -- net-snmp ---------------------------------------------------------------------------------


@dataclass
class NetSnmp:
    """net-snmp's command-line tools with our MIB and the erlang-snmp base MIBs, isolated from ~/.snmp."""

    env: dict[str, str]
    base_mibs: Path

    def run(self, tool: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        command = [tool, "-M", f"+{MIB_DIR}:{self.base_mibs}", "-m", MODULES, *args]
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)

    def popen(self, tool: str, *args: str) -> subprocess.Popen[str]:
        command = [tool, "-M", f"+{MIB_DIR}:{self.base_mibs}", "-m", MODULES, *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def v2c(self, tool: str, address: str, *args: str, community: str = COMMUNITY) -> subprocess.CompletedProcess[str]:
        return self.run(tool, "-v2c", "-c", community, *PATIENT, address, *args)

    def v3(
        self,
        tool: str,
        address: str,
        *args: str,
        user: str = USER,
        auth: str = "SHA",
        auth_pass: str = AUTH_PASS,
        priv: str = "AES",
        priv_pass: str = PRIV_PASS,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            tool,
            "-v3",
            "-l",
            "authPriv",
            "-u",
            user,
            "-a",
            auth,
            "-A",
            auth_pass,
            "-x",
            priv,
            "-X",
            priv_pass,
            *PATIENT,
            address,
            *args,
        )


@pytest.fixture(scope="module")
def net_snmp(tmp_path_factory: pytest.TempPathFactory, base_mibs: Path) -> NetSnmp:
    missing = [tool for tool in ("snmpget", "snmpwalk", "snmpbulkwalk", "snmptable", "snmpset") if not _which(tool)]
    if missing:
        pytest.fail(f"needs Debian's snmp package (missing: {', '.join(missing)})")
    return NetSnmp(tool_env(tmp_path_factory.mktemp("net-snmp")), base_mibs)


def _which(tool: str) -> bool:
    return any(os.access(Path(d) / tool, os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def served_oids(served: Served) -> list[Oid]:
    """Every OID the agent serves, in order, from its own view (the agent's loop is idle now)."""
    return [oid for oid, _ in served.agent.view.current().items()]


# -- garbage ----------------------------------------------------------------------------------


def ber(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def v2c_get(community: bytes, pdu_tag: int = 0xA0, request_id: int = 0x1234) -> bytes:
    """A v2c GetRequest (or another PDU type) for sysDescr.0."""
    varbind = ber(0x30, ber(0x06, bytes([0x2B, 6, 1, 2, 1, 1, 1, 0])) + b"\x05\x00")
    pdu = ber(pdu_tag, ber(0x02, request_id.to_bytes(2, "big")) + b"\x02\x01\x00\x02\x01\x00" + ber(0x30, varbind))
    return ber(0x30, b"\x02\x01\x01" + ber(0x04, community) + pdu)


def v1_getnext_bad_error_index(community: bytes) -> bytes:
    """Well-formed BER that pysnmp fails on after decoding (an error-index out of range): it passes
    the agent's screen and raised out of pysnmp's dispatcher, so it tests the net behind both."""
    varbind = ber(0x30, ber(0x30, ber(0x06, bytes([0x2B, 6, 1])) + b"\x05\x00"))
    pdu = ber(0xA1, ber(0x02, b"\x12\x34") + ber(0x02, b"\x00") + ber(0x02, bytes.fromhex("db8fa48558")) + varbind)
    return ber(0x30, b"\x02\x01\x00" + ber(0x04, community) + pdu)


def garbage(rnd: random.Random) -> Iterator[bytes]:
    """Random bytes, truncated BER, wrong community, wrong PDU types, v3 junk and huge datagrams, forever."""
    valid = v2c_get(COMMUNITY.encode())
    for round_ in itertools.count():
        yield rnd.randbytes(rnd.randint(1, 300))
        yield valid[: rnd.randint(1, len(valid) - 1)]
        yield valid[:-3] + rnd.randbytes(3)
        yield v2c_get(b"guess-" + str(round_).encode())
        yield v2c_get(COMMUNITY.encode(), pdu_tag=rnd.choice([0xA2, 0xA4, 0xA6, 0xA7, 0xA8, 0xBF]))
        yield bytes([0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03]) + rnd.randbytes(rnd.randint(0, 250))
        # Well-framed, so they pass the agent's screen and reach pysnmp's decoder: v3 junk, and a
        # right community with a random PDU body (pyasn1 raises TypeError on some of these).
        yield ber(0x30, b"\x02\x01\x03" + rnd.randbytes(rnd.randint(0, 120)))
        yield ber(0x30, b"\x02\x01\x01" + ber(0x04, COMMUNITY.encode()) + ber(0xA0, rnd.randbytes(rnd.randint(0, 60))))
        yield v1_getnext_bad_error_index(COMMUNITY.encode())
        if round_ % 10 == 0:
            yield b"\x30\x83\x00\xff\xf0" + rnd.randbytes(60_000)


def send_garbage(port: int, stop: threading.Event) -> int:
    """Send garbage until `stop`, about 1,000 datagrams a second: a nuisance, not a flood that
    would overrun the socket buffer (a flood drops any datagram, good or bad, in the kernel)."""
    sent = 0
    rnd = random.Random(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in garbage(rnd):
            if stop.is_set():
                break
            sock.sendto(datagram, ("127.0.0.1", port))
            sent += 1
            time.sleep(0.001)
    return sent


# -- reads ------------------------------------------------------------------------------------


class TestReads:
    def test_sysdescr_and_sysuptime_answer_over_v2c(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v2c("snmpget", served.address, "SNMPv2-MIB::sysDescr.0", "SNMPv2-MIB::sysUpTime.0")
        assert result.returncode == 0, result.stderr
        assert "SNMPv2-MIB::sysDescr.0 = STRING: smtp-monitor" in result.stdout
        assert "SNMPv2-MIB::sysUpTime.0 = Timeticks:" in result.stdout

    def test_v2c_walk_returns_every_instance_once_in_order_and_ends(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v2c("snmpwalk", served.address, "-On", ".1.3.6.1")
        assert result.returncode == 0, result.stderr
        assert "not increasing" not in result.stderr
        oids = parse_numeric(result.stdout)
        assert oids == served_oids(served)
        # The last column of mxAddressTable, second address of the second exchange.
        assert oids[-1] == mib_oids.mx_address_oid(mib_oids.MxAddressColumn.SPOOF_REPLY, "example.org", 2, 2)
        assert result.stdout.count(END_OF_VIEW) == 1  # our MIB is the last subtree: the walk ends there

    def test_v1_walk_skips_counter64_columns_and_ends(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.run(
            "snmpwalk", "-v1", "-c", COMMUNITY, *PATIENT, "-On", served.address, dotted(mib_oids.MIB_ROOT)
        )
        assert result.returncode == 0, result.stderr
        oids = parse_numeric(result.stdout)
        counter64 = {
            (*mib_oids.SMTP_PROBE_ENTRY, int(mib_oids.SmtpProbeColumn.RUNS)),
            (*mib_oids.SMTP_PROBE_ENTRY, int(mib_oids.SmtpProbeColumn.FAILURES)),
            (*mib_oids.MX_CHECK_ENTRY, int(mib_oids.MxCheckColumn.RUNS)),
            (*mib_oids.MX_CHECK_ENTRY, int(mib_oids.MxCheckColumn.FAILURES)),
        }
        expected = [
            oid
            for oid in served_oids(served)
            if oid[: len(mib_oids.MIB_ROOT)] == mib_oids.MIB_ROOT
            and oid[: len(mib_oids.SMTP_PROBE_ENTRY) + 1] not in counter64
        ]
        assert oids == expected
        assert "Counter64" not in result.stdout

    @pytest.mark.parametrize("repetitions", [1, 7, 50])
    def test_v2c_bulkwalk_matches_the_view(self, served: Served, net_snmp: NetSnmp, repetitions: int) -> None:
        result = net_snmp.v2c("snmpbulkwalk", served.address, f"-Cr{repetitions}", "-On", dotted(mib_oids.MIB_ROOT))
        assert result.returncode == 0, result.stderr
        expected = [oid for oid in served_oids(served) if oid[: len(mib_oids.MIB_ROOT)] == mib_oids.MIB_ROOT]
        assert parse_numeric(result.stdout) == expected
        assert result.stdout.count(END_OF_VIEW) == 1  # once, not once per remaining repetition

    def test_v3_authpriv_sha_aes_bulkwalk_reads_everything(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v3("snmpbulkwalk", served.address, "-On", ".1.3.6.1")
        assert result.returncode == 0, result.stderr
        assert parse_numeric(result.stdout) == served_oids(served)

    @pytest.mark.parametrize("auth", list(NET_SNMP_AUTH))
    def test_v3_every_auth_protocol(self, served: Served, net_snmp: NetSnmp, auth: str) -> None:
        result = net_snmp.v3("snmpget", served.address, SYS_DESCR, user=f"a-{auth}", auth=NET_SNMP_AUTH[auth])
        assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in result.stdout

    @pytest.mark.parametrize("priv", list(NET_SNMP_PRIV))
    def test_v3_every_privacy_protocol(self, served: Served, net_snmp: NetSnmp, priv: str) -> None:
        result = net_snmp.v3(
            "snmpget", served.address, SYS_DESCR, user=f"p-{priv}", auth="SHA-256", priv=NET_SNMP_PRIV[priv]
        )
        assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in result.stdout

    def test_ipv6_listener_answers(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v2c("snmpget", f"udp6:[::1]:{served.port6}", SYS_DESCR)
        assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in result.stdout

    def test_snmptable_shows_probe_rows_with_labels_and_units(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v2c("snmptable", served.address, "-Ci", "-Cf", "|", "smtpProbeTable")
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if "|" in line]
        header = lines[0].split("|")
        rows = {row.split("|")[0].strip('"'): dict(zip(header, row.split("|"), strict=True)) for row in lines[1:]}
        assert rows["mail-a"]["smtpProbeStatus"] == "ok"
        assert rows["mail-a"]["smtpProbeTlsMode"] == "starttls"
        assert rows["mail-a"]["smtpProbeCertSubject"] == "CN=mail.example.org"
        assert rows["mail-a"]["smtpProbeLatency"] == "50 milliseconds"
        assert rows["b"]["smtpProbeStatus"] == "failed"
        assert rows["b"]["smtpProbeFailedPhase"] == "connect"
        assert rows["b"]["smtpProbeFailedReason"] == "refused"
        assert rows["b"]["smtpProbeLastSuccess"] == "0-1-1,0:0:0.0"  # the MIB's 'never'
        assert rows["relay.example:587"]["smtpProbePort"] == "587"
        assert rows["p01"]["smtpProbeStatus"] == "unknown"
        assert len(rows) == 33

    def test_snmptable_over_v3_authpriv_shows_the_same_probe_rows(self, served: Served, net_snmp: NetSnmp) -> None:
        v2c = net_snmp.v2c("snmptable", served.address, "-Ci", "-Cf", "|", "smtpProbeTable")
        v3 = net_snmp.v3("snmptable", served.address, "-Ci", "-Cf", "|", "smtpProbeTable")
        assert v3.returncode == 0, v3.stderr
        rows = [line for line in v3.stdout.splitlines() if "|" in line]
        assert len(rows) == 34  # header and 33 probes
        assert any(row.startswith('"b"|') or row.startswith("b|") for row in rows)
        # live values (latency of a probe that ran) are the same over both versions
        assert sorted(rows) == sorted(line for line in v2c.stdout.splitlines() if "|" in line)

    def test_snmptable_shows_mx_checks_and_exchanges_in_preference_order(
        self, served: Served, net_snmp: NetSnmp
    ) -> None:
        checks = net_snmp.v2c("snmptable", served.address, "-Ci", "-Cf", "|", "mxCheckTable")
        exchanges = net_snmp.v2c("snmptable", served.address, "-Ci", "-Cf", "|", "mxExchangeTable")
        assert checks.returncode == exchanges.returncode == 0, checks.stderr + exchanges.stderr
        assert '"implicit"|implicit|implicit.example|ok||none|none|0|' in checks.stdout
        rows = [line for line in exchanges.stdout.splitlines() if line.startswith('"')]
        assert rows == [
            '"example.org".1|mx1.example.org|10|192.0.2.1|notProbed|notChecked|notChecked',
            '"example.org".2|mx2.example.org|20|192.0.2.2,2001:db8::2|notProbed|notChecked|notChecked',
        ]

    def test_missing_instances_and_unknown_objects(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v2c(
            "snmpget", served.address, "SNMPv2-MIB::sysDescr", 'smtpProbeName."nope"', ".1.3.6.1.2.1.2.1.0"
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].endswith("No Such Instance currently exists at this OID")
        assert lines[1].endswith("No Such Instance currently exists at this OID")
        assert lines[2].endswith("No Such Object available on this agent at this OID")

    @pytest.mark.parametrize(("version", "reason"), [("2c", "notWritable"), ("1", "noSuchName")])
    def test_set_is_refused(self, served: Served, net_snmp: NetSnmp, version: str, reason: str) -> None:
        result = net_snmp.run(
            "snmpset",
            f"-v{version}",
            "-c",
            COMMUNITY,
            *PATIENT,
            served.address,
            "SNMPv2-MIB::sysName.0",
            "s",
            "changed",
        )
        assert result.returncode != 0
        assert reason in result.stderr
        check = net_snmp.v2c("snmpget", served.address, "SNMPv2-MIB::sysName.0")
        assert "changed" not in check.stdout

    def test_walk_never_shows_a_credential(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.v2c("snmpbulkwalk", served.address, "-Cr50", "-Ox", ".1.3.6.1")  # strings in hex
        text = net_snmp.v2c("snmpbulkwalk", served.address, "-Cr50", ".1.3.6.1").stdout + result.stdout
        for secret in (COMMUNITY, LAN_ONLY, LOOPBACK_ONLY, AUTH_PASS, PRIV_PASS):
            assert secret not in text
            assert secret.encode().hex(" ").upper() not in result.stdout

    def test_requests_are_counted_by_pdu_type(self, served: Served, net_snmp: NetSnmp) -> None:
        before = dict(served.health.snmp_requests)
        net_snmp.v2c("snmpget", served.address, SYS_DESCR)
        net_snmp.v2c("snmpgetnext", served.address, SYS_DESCR)
        net_snmp.v2c("snmpbulkget", served.address, SYS_DESCR)
        after = served.health.snmp_requests
        for pdu in ("get", "getnext", "getbulk"):
            assert after[pdu] == before.get(pdu, 0) + 1, pdu


class TestFastPath:
    """Plain v1/v2c reads are answered without pysnmp (monitor.exporters.snmp.fast.fastpath), and still counted."""

    def test_net_snmp_reads_take_the_fast_path_and_are_counted(self, served: Served, net_snmp: NetSnmp) -> None:
        fast = served.agent.fast_path
        assert fast is not None
        answered, fallbacks, before = fast.answered, fast.fallbacks, dict(served.health.snmp_requests)
        get = net_snmp.v2c("snmpget", served.address, SYS_DESCR, "SNMPv2-MIB::sysUpTime.0")
        walk = net_snmp.v2c("snmpwalk", served.address, "-On", dotted(mib_oids.MIB_ROOT))
        v1_walk = net_snmp.run("snmpwalk", "-v1", "-c", COMMUNITY, *PATIENT, "-On", served.address, ".1.3.6.1.2.1.1")
        bulk = net_snmp.v2c("snmpbulkwalk", served.address, "-Cr50", "-On", ".1.3.6.1")
        for result in (get, walk, v1_walk, bulk):
            assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in get.stdout
        ours = [oid for oid in served_oids(served) if oid[: len(mib_oids.MIB_ROOT)] == mib_oids.MIB_ROOT]
        assert parse_numeric(walk.stdout) == ours
        assert len(parse_numeric(v1_walk.stdout)) == 7  # the system group
        assert parse_numeric(bulk.stdout) == served_oids(served)
        after = served.health.snmp_requests
        gets, nexts, bulks = (after[pdu] - before.get(pdu, 0) for pdu in ("get", "getnext", "getbulk"))
        assert gets == 1
        assert nexts == len(ours) + 1 + 7 + 1  # one per value, and one that leaves the subtree
        assert bulks >= len(served_oids(served)) // 50
        assert fast.answered - answered == gets + nexts + bulks
        assert fast.fallbacks == fallbacks

    def test_sets_stay_with_pysnmp(self, served: Served, net_snmp: NetSnmp) -> None:
        fast, usm = served.agent.fast_path, served.agent.usm_fast_path
        assert fast is not None
        assert usm is not None
        answered, usm_answered, sets = fast.answered, usm.answered, served.health.snmp_requests["set"]
        net_snmp.run("snmpset", "-v2c", "-c", COMMUNITY, *PATIENT, served.address, "SNMPv2-MIB::sysName.0", "s", "x")
        net_snmp.v3("snmpset", served.address, "SNMPv2-MIB::sysName.0", "s", "x")
        assert (fast.answered, usm.answered) == (answered, usm_answered)
        assert served.health.snmp_requests["set"] == sets + 2


class TestUsmFastPath:
    """SNMPv3 reads of configured users are answered without pysnmp (fast/usm_fastpath.py), and still counted."""

    def test_net_snmp_v3_auth_priv_reads_take_the_usm_fast_path(self, served: Served, net_snmp: NetSnmp) -> None:
        usm = served.agent.usm_fast_path
        assert usm is not None
        answered, fallbacks, before = usm.answered, usm.fallbacks, dict(served.health.snmp_requests)
        get = net_snmp.v3("snmpget", served.address, SYS_DESCR, "SNMPv2-MIB::sysUpTime.0")
        bulk = net_snmp.v3("snmpbulkwalk", served.address, "-Cr50", "-On", ".1.3.6.1")
        for result in (get, bulk):
            assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in get.stdout
        assert parse_numeric(bulk.stdout) == served_oids(served)
        after = served.health.snmp_requests
        gets, bulks = (after[pdu] - before.get(pdu, 0) for pdu in ("get", "getbulk"))
        assert gets == 1
        assert bulks >= len(served_oids(served)) // 50
        assert usm.answered - answered == gets + bulks
        assert usm.fallbacks - fallbacks == 2  # each tool's engine ID discovery: declined, a Report answers it
        assert usm.errors == 0

    @pytest.mark.parametrize(
        ("user", "auth", "priv"),
        [
            *((f"a-{a}", NET_SNMP_AUTH[a], "AES") for a in NET_SNMP_AUTH),
            *((f"p-{p}", "SHA-256", NET_SNMP_PRIV[p]) for p in NET_SNMP_PRIV),
        ],
    )
    def test_every_protocol_takes_the_usm_fast_path(
        self, served: Served, net_snmp: NetSnmp, user: str, auth: str, priv: str
    ) -> None:
        usm = served.agent.usm_fast_path
        assert usm is not None
        answered = usm.answered
        result = net_snmp.v3("snmpgetnext", served.address, SYS_DESCR, user=user, auth=auth, priv=priv)
        assert result.returncode == 0, result.stderr
        assert "SNMPv2-MIB::sysObjectID.0" in result.stdout
        assert usm.answered == answered + 1

    def test_auth_no_priv_reads_take_the_usm_fast_path(self, served: Served, net_snmp: NetSnmp) -> None:
        usm = served.agent.usm_fast_path
        assert usm is not None
        answered = usm.answered
        auth_only = ("-v3", "-l", "authNoPriv", "-u", "auth-only", "-a", "SHA-256", "-A", AUTH_PASS)
        result = net_snmp.run("snmpget", *auth_only, *PATIENT, served.address, SYS_DESCR)
        assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in result.stdout
        assert usm.answered == answered + 1

    def test_a_wrong_password_is_refused_and_counted_as_an_auth_failure(
        self, served: Served, net_snmp: NetSnmp
    ) -> None:
        usm = served.agent.usm_fast_path
        assert usm is not None
        answered, failures = usm.answered, served.health.snmp_auth_failures
        wrong = ("-u", USER, "-a", "SHA", "-A", "wrong-pass-0000", "-x", "AES", "-X", PRIV_PASS)
        result = net_snmp.run("snmpget", "-v3", "-l", "authPriv", *wrong, *QUICK, served.address, SYS_DESCR)
        assert "Authentication failure" in result.stderr
        assert usm.answered == answered
        assert eventually(lambda: served.health.snmp_auth_failures > failures)


# -- access control ---------------------------------------------------------------------------


class TestAccessControl:
    @pytest.mark.parametrize("version", ["1", "2c"])
    def test_unconfigured_community_gets_no_answer_and_counts(
        self, served: Served, net_snmp: NetSnmp, version: str
    ) -> None:
        before = served.health.snmp_auth_failures
        result = net_snmp.run("snmpget", f"-v{version}", "-c", "public", *QUICK, served.address, SYS_DESCR)
        assert result.returncode != 0
        assert "Timeout" in result.stdout + result.stderr
        assert served.health.snmp_auth_failures == before + 1

    def test_community_from_a_network_it_does_not_allow_gets_no_answer(self, served: Served, net_snmp: NetSnmp) -> None:
        before = served.health.snmp_auth_failures
        result = net_snmp.run("snmpget", "-v2c", "-c", LAN_ONLY, *QUICK, served.address, SYS_DESCR)
        assert result.returncode != 0
        assert "Timeout" in result.stdout + result.stderr
        assert served.health.snmp_auth_failures == before + 1

    @pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
    def test_community_from_an_allowed_network_answers(self, served: Served, net_snmp: NetSnmp, ipv6: bool) -> None:
        address = f"udp6:[::1]:{served.port6}" if ipv6 else served.address
        result = net_snmp.v2c("snmpget", address, SYS_DESCR, community=LOOPBACK_ONLY)
        assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in result.stdout

    def test_wrong_v3_password_gets_no_data(self, served: Served, net_snmp: NetSnmp) -> None:
        before = served.health.snmp_auth_failures
        wrong = ("-u", USER, "-a", "SHA", "-A", "wrong-pass-0000", "-x", "AES", "-X", PRIV_PASS)
        result = net_snmp.run("snmpget", "-v3", "-l", "authPriv", *wrong, *QUICK, served.address, SYS_DESCR)
        assert result.returncode != 0
        assert "Authentication failure" in result.stderr
        assert "smtp-monitor" not in result.stdout
        assert eventually(lambda: served.health.snmp_auth_failures > before)

    def test_unknown_v3_user_gets_no_data(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.run(
            "snmpget",
            "-v3",
            "-l",
            "authPriv",
            "-u",
            "intruder",
            "-a",
            "SHA",
            "-A",
            AUTH_PASS,
            "-x",
            "AES",
            "-X",
            PRIV_PASS,
            *QUICK,
            served.address,
            SYS_DESCR,
        )
        assert result.returncode != 0
        assert "smtp-monitor" not in result.stdout

    def test_priv_user_without_privacy_gets_no_data(self, served: Served, net_snmp: NetSnmp) -> None:
        result = net_snmp.run(
            "snmpget",
            "-v3",
            "-l",
            "authNoPriv",
            "-u",
            USER,
            "-a",
            "SHA",
            "-A",
            AUTH_PASS,
            *QUICK,
            served.address,
            SYS_DESCR,
        )
        assert result.returncode != 0
        assert "smtp-monitor" not in result.stdout

    def test_auth_only_user_reads_with_auth_no_priv(self, served: Served, net_snmp: NetSnmp) -> None:
        auth_only = ("-v3", "-l", "authNoPriv", "-u", "auth-only", "-a", "SHA-256", "-A", AUTH_PASS)
        result = net_snmp.run("snmpget", *auth_only, *PATIENT, served.address, SYS_DESCR)
        assert result.returncode == 0, result.stderr
        assert "smtp-monitor" in result.stdout

    def test_engine_internals_are_not_served(self, served: Served, net_snmp: NetSnmp) -> None:
        # snmpEngineID.0 lives in pysnmp's own MIB tree, which no context serves.
        result = net_snmp.v3("snmpget", served.address, ".1.3.6.1.6.3.10.2.1.1.0")
        assert result.returncode == 0, result.stderr
        assert "No Such Object" in result.stdout


# -- robustness -------------------------------------------------------------------------------


class TestRobustness:
    def test_garbage_datagrams_during_a_walk_do_not_break_it(
        self, served: Served, net_snmp: NetSnmp, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        dropped, failures = served.health.snmp_dropped, served.health.snmp_auth_failures
        stop = threading.Event()
        sent: list[int] = []
        sender = threading.Thread(target=lambda: sent.append(send_garbage(served.port, stop)), daemon=True)
        sender.start()
        try:
            # The fast path walks in a fraction of a second: let the garbage flow before the walk starts.
            assert eventually(lambda: served.health.snmp_dropped >= dropped + 60, timeout=30)
            walk = net_snmp.popen(
                "snmpbulkwalk", "-v2c", "-c", COMMUNITY, *PATIENT, "-Cr3", "-On", served.address, ".1.3.6.1"
            )
            stdout, stderr = walk.communicate(timeout=120)
        finally:
            stop.set()
            sender.join(10)
        assert walk.returncode == 0, stderr
        assert parse_numeric(stdout) == served_oids(served)
        assert sent[0] > 100
        assert served.health.snmp_dropped > dropped
        assert served.health.snmp_auth_failures > failures
        again = net_snmp.v2c("snmpget", served.address, SYS_DESCR)
        assert "smtp-monitor" in again.stdout
        # Nothing reached the event loop's exception handler (which logs tracebacks at ERROR).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    def test_port_in_use_raises_snmp_bind_error_naming_the_address(self, tmp_path: Path) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            free = free_udp_port()
            config = snmp_config(f"udp:127.0.0.1:{free}", f"udp:127.0.0.1:{port}")
            agent = SnmpAgent(config, tmp_path, ResultsStore(), AgentHealth())
            with pytest.raises(SnmpBindError, match=f"udp:127.0.0.1:{port}") as raised:
                asyncio.run(agent.start())
        assert raised.value.address == f"udp:127.0.0.1:{port}"
        assert not agent.running
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", free))  # the first address was released again

    def test_stop_releases_every_port(self, tmp_path: Path) -> None:
        port, port6 = free_udp_port(), free_udp6_port()
        agent = SnmpAgent(
            snmp_config(f"udp:127.0.0.1:{port}", f"udp6:[::1]:{port6}"), tmp_path, ResultsStore(), AgentHealth()
        )

        async def start_and_stop() -> None:
            await agent.start()
            await agent.stop()

        asyncio.run(start_and_stop())
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4,
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6,
        ):
            v4.bind(("127.0.0.1", port))
            v6.bind(("::1", port6))


# -- engine state and reconfiguration ----------------------------------------------------------


class TestEngineState:
    def test_boots_count_every_start_and_the_generated_engine_id_is_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "snmp-engine.json"
        seen = []
        for _ in range(3):
            agent = SnmpAgent(snmp_config(f"udp:127.0.0.1:{free_udp_port()}"), tmp_path, ResultsStore(), AgentHealth())
            with AgentThread(agent):
                seen.append(json.loads(path.read_text()))
        assert [state["boots"] for state in seen] == [1, 2, 3]
        assert len({state["engine_id"] for state in seen}) == 1
        assert bytes.fromhex(seen[0]["engine_id"])[:4] == (0x80000000 | mib_oids.ENTERPRISE_OID[-1]).to_bytes(4, "big")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["snmp-engine.json"]  # no temporary files left

    def test_configured_engine_id_is_used_on_the_wire(self, tmp_path: Path, net_snmp: NetSnmp) -> None:
        engine_id = "80007ed9051122334455667788"
        port = free_udp_port()
        config = snmp_config(f"udp:127.0.0.1:{port}", engine_id=engine_id, users=users_config()[:1])
        agent = SnmpAgent(config, tmp_path, ResultsStore(), AgentHealth())
        with AgentThread(agent):
            right = net_snmp.v3("snmpget", f"127.0.0.1:{port}", "-e", f"0x{engine_id}", SYS_DESCR)
            wrong = net_snmp.v3("snmpget", f"127.0.0.1:{port}", "-e", "0x80007ed905ffffffffffffffff", *QUICK, SYS_DESCR)
        assert right.returncode == 0, right.stderr
        assert "smtp-monitor" in right.stdout
        assert wrong.returncode != 0
        assert "smtp-monitor" not in wrong.stdout
        assert json.loads((tmp_path / "snmp-engine.json").read_text())["engine_id"] == engine_id


class TestReconfigure:
    def test_new_credentials_answer_and_the_old_ones_are_gone(self, tmp_path: Path, net_snmp: NetSnmp) -> None:
        port = free_udp_port()
        address = f"127.0.0.1:{port}"
        old_user = {"name": "old-user", "auth": {"protocol": "sha", "password": AUTH_PASS}}
        agent = SnmpAgent(snmp_config(f"udp:{address}", users=[old_user]), tmp_path, ResultsStore(), AgentHealth())
        v3_old_user = ("snmpget", "-v3", "-l", "authNoPriv", "-u", "old-user", "-a", "SHA", "-A", AUTH_PASS)
        with AgentThread(agent) as thread:
            assert net_snmp.v2c("snmpget", address, SYS_DESCR).returncode == 0
            assert net_snmp.run(*v3_old_user, *PATIENT, address, SYS_DESCR).returncode == 0
            new_config = snmp_config(f"udp:{address}", communities=[{"name": "rotated-9e1f"}], users=users_config()[:1])
            thread.call(agent.reconfigure(new_config))
            old = net_snmp.run("snmpget", "-v2c", "-c", COMMUNITY, *QUICK, address, SYS_DESCR)
            new = net_snmp.v2c("snmpget", address, SYS_DESCR, community="rotated-9e1f")
            old_v3 = net_snmp.run(*v3_old_user, *QUICK, address, SYS_DESCR)
            new_v3 = net_snmp.v3("snmpget", address, SYS_DESCR)
        assert old.returncode != 0
        assert new.returncode == 0, new.stderr
        assert old_v3.returncode != 0
        assert new_v3.returncode == 0, new_v3.stderr

    def test_listen_addresses_are_added_and_removed(self, tmp_path: Path, net_snmp: NetSnmp) -> None:
        first, second = free_udp_port(), free_udp_port()
        agent = SnmpAgent(snmp_config(f"udp:127.0.0.1:{first}"), tmp_path, ResultsStore(), AgentHealth())
        with AgentThread(agent) as thread:
            thread.call(agent.reconfigure(snmp_config(f"udp:127.0.0.1:{second}")))
            moved = net_snmp.v2c("snmpget", f"127.0.0.1:{second}", SYS_DESCR)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", first))  # released
        assert moved.returncode == 0, moved.stderr
