"""Every outcome of an MX check over SNMP: the issue 6 columns and mxAddressTable, read with net-snmp by name."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig, SnmpConfig
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.model.facts import MtaStsFacts, MtaStsPolicyFacts
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, ReverseDns, SmtpResult, TlsInfo
from monitor.probes.dane import Tlsa, TlsaLookup
from monitor.probes.mx import _dane_verdict
from monitor.probes.policy_records import check_dmarc, check_spf
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.net_snmp import tool_env
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.certs import make_self_signed_cert
from tests.support.ports import free_udp_port

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
MODULE = "SMTP-MONITOR-MIB"
COMMUNITY = "public"
PATIENT = ("-t", "3", "-r", "2")  # requests that must be answered, on a busy machine
NEVER = "0-1-1,0:0:0.0"  # how net-snmp prints the MIB's DateAndTime 'never'


# -- the store: results carrying every outcome the MIB now shows --------------------------------


def probe(exchange: str, address: str, error: str = "", tls: TlsInfo | None = None) -> SmtpResult:
    """An exchange's SMTP probe of one address, as monitor.probes.mx._probe returns it: ok without error."""
    if not error:
        return SmtpResult(exchange, 25, "starttls", time.time(), True, address=address, tls=tls)
    return SmtpResult(
        exchange,
        25,
        "starttls",
        time.time(),
        False,
        phase=Phase.CONNECT,
        reason=Reason.REFUSED,
        error=error,
        address=address,
    )


def self_signed_der(directory: Path) -> bytes:
    cert_pem, _ = make_self_signed_cert(
        directory, common_name="mx1.example.org", dns_names=("mx1.example.org",), ip_addresses=()
    )
    return x509.load_pem_x509_certificate(cert_pem.read_bytes()).public_bytes(serialization.Encoding.DER)


def with_dane(record: MxRecord, lookup: TlsaLookup) -> MxRecord:
    """The record with its DANE facts as monitor.probes.mx.check_dane sets them."""
    return replace(record, dane=_dane_verdict(record, lookup)[0])


def depth_store(cert_dir: Path) -> tuple[ResultsStore, float]:
    """Checks `example.org` (every outcome present) and `plain.example` (nothing checked), and
    SMTP probes `mail-a` (a handshake, then a failure) and `plain` (no TLS).

    Returns the store and the start time of mail-a's handshake run."""
    store = ResultsStore()
    configs: list[SmtpProbeConfig | MxCheckConfig] = [
        SmtpProbeConfig(name="mail-a", host="mail.example.org"),
        SmtpProbeConfig(name="plain", host="192.0.2.50", tls="none"),
        MxCheckConfig(
            name="example.org",
            domain="example.org",
            probe_hosts="all_addresses",
            dnssec="report",
            dane="report",
            mta_sts="report",
            reverse_dns="report",
            spf=True,
            dmarc=True,
        ),
        MxCheckConfig(name="plain.example", domain="plain.example"),
    ]
    store.configure([(config, 1, 14) for config in configs])

    # mx1: DANE-EE record matching its certificate; one address up, one down; PTR confirmed for one.
    der = self_signed_der(cert_dir)
    chain = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", False, chain_der=(der,))
    mx1_probes = (
        probe("mx1.example.org", "192.0.2.1", tls=chain),
        probe("mx1.example.org", "2001:db8::1", error="connection refused"),
    )
    mx1 = MxRecord(
        10,
        "mx1.example.org",
        ("192.0.2.1", "2001:db8::1"),
        probe=mx1_probes[0],
        address_probes=mx1_probes,
        reverse=(
            ReverseDns("192.0.2.1", ("mx1.example.org",), True),
            ReverseDns("2001:db8::1", ("dyn.isp.example", "pool.isp.example"), False),
        ),
    )
    mx1 = with_dane(mx1, TlsaLookup("_25._tcp.mx1.example.org", (Tlsa(3, 0, 0, der),)))
    # mx2: the TLSA lookup failed; down; reverse DNS did not get to it.
    mx2_probe = probe("mx2.example.org", "192.0.2.2", error="timed out")
    mx2 = MxRecord(20, "mx2.example.org", ("192.0.2.2",), probe=mx2_probe, address_probes=(mx2_probe,))
    mx2 = with_dane(mx2, TlsaLookup("_25._tcp.mx2.example.org", error="SERVFAIL"))
    # MTA-STS facts as monitor.probes.mx.check_mta_sts makes them: a testing policy not covering mx2.
    policy = MtaStsPolicyFacts(
        mode="testing",
        max_age=86400,
        mx_patterns=("mx1.example.org",),
        verified=True,
        error="",
        error_kind="",
        http_status=200,
        uncovered=("mx2.example.org",),
        cert_not_after=None,
    )
    mta_sts = MtaStsFacts(txt_id="20261122", txt_error="", txt_error_kind="", present=True, policy=policy, valid=True)
    store.record(
        "example.org",
        MxResult(
            "example.org",
            time.time(),
            True,
            records=(mx1, mx2),
            authenticated=True,
            mta_sts=mta_sts,
            spf=check_spf(["v=spf1 mx -all"]),
            dmarc=check_dmarc([]),
        ),
    )
    store.record(
        "plain.example",
        MxResult("plain.example", time.time(), True, records=(MxRecord(10, "mx.plain.example", ("192.0.2.9",)),)),
    )

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
    handshake = SmtpResult(
        "mail.example.org",
        25,
        "starttls",
        time.time() - 600,
        True,
        address="192.0.2.10",
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", True, cert=cert),
    )
    store.record("mail-a", handshake)
    store.record(
        "mail-a",
        SmtpResult(
            "mail.example.org",
            25,
            "starttls",
            time.time(),
            False,
            phase=Phase.CONNECT,
            reason=Reason.REFUSED,
            error="connection refused",
            address="192.0.2.10",
        ),
    )
    store.record("plain", SmtpResult("192.0.2.50", 25, "none", time.time(), True, address="192.0.2.50"))
    return store, handshake.started_at


# -- agent and net-snmp -------------------------------------------------------------------------


@dataclass
class Served:
    address: str
    handshake_started: float
    env: dict[str, str]
    base_mibs: Path

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [
            tool,
            "-v2c",
            "-c",
            COMMUNITY,
            *PATIENT,
            "-M",
            f"+{MIB_DIR}:{self.base_mibs}",
            "-m",
            MODULE,
            self.address,
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120, check=False)

    def get(self, *names: str) -> dict[str, str]:
        """snmpget by name: instance name -> printed value."""
        result = self.run("snmpget", *(f"{MODULE}::{name}" for name in names))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        values = {}
        for line in result.stdout.splitlines():
            name, _, value = line.partition(" = ")
            values[name.removeprefix(f"{MODULE}::")] = value
        return values

    def table(self, table: str) -> tuple[list[str], list[list[str]]]:
        """snmptable -Ci with '|' between fields: the header and the rows, index first."""
        result = self.run("snmptable", "-Ci", "-Cf", "|", f"{MODULE}::{table}")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        lines = [line for line in result.stdout.splitlines() if "|" in line]
        return lines[0].split("|"), [line.split("|") for line in lines[1:]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, base_mibs: Path) -> Iterator[Served]:
    missing = [tool for tool in ("snmpget", "snmptable", "snmptranslate") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs Debian's snmp package (missing: {', '.join(missing)})")
    env = tool_env(tmp_path_factory.mktemp("net-snmp"))
    store, handshake_started = depth_store(tmp_path_factory.mktemp("cert"))
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": COMMUNITY}]})
    agent = SnmpAgent(config, tmp_path_factory.mktemp("snmp-state"), store, AgentHealth())
    with AgentThread(agent):
        yield Served(f"127.0.0.1:{port}", handshake_started, env, base_mibs)


# -- the tests ----------------------------------------------------------------------------------


class TestMxAddressTable:
    def test_snmptable_shows_each_address_with_probe_and_reverse_dns_labels(self, served: Served) -> None:
        header, rows = served.table("mxAddressTable")
        assert header == [
            "index",
            "mxAddressValue",
            "mxAddressUp",
            "mxAddressLastError",
            "mxAddressPtrName",
            "mxAddressPtr",
            "mxAddressSpoof",
            "mxAddressSpoofReply",
        ]
        # No spoof test configured: every address notTested, with no reply.
        assert rows == [
            ['"example.org".1.1', "192.0.2.1", "up", "", "mx1.example.org", "confirmed", "notTested", ""],
            [
                '"example.org".1.2',
                "2001:db8::1",
                "down",
                "connection refused",
                "dyn.isp.example,pool.isp.example",
                "notConfirmed",
                "notTested",
                "",
            ],
            ['"example.org".2.1', "192.0.2.2", "down", "timed out", "", "notChecked", "notTested", ""],
            ['"plain.example".1.1', "192.0.2.9", "notProbed", "", "", "notChecked", "notTested", ""],
        ]


class TestMxCheckColumns:
    def test_snmpget_by_name_returns_the_policy_labels(self, served: Served) -> None:
        columns = ("mxCheckDnssec", "mxCheckMtaSts", "mxCheckMtaStsMode", "mxCheckSpf", "mxCheckDmarc")
        values = served.get(*(f'{column}."example.org"' for column in columns))
        assert values == {
            'mxCheckDnssec."example.org"': "INTEGER: authenticated(2)",
            'mxCheckMtaSts."example.org"': "INTEGER: valid(3)",
            'mxCheckMtaStsMode."example.org"': "STRING: testing",
            'mxCheckSpf."example.org"': "INTEGER: valid(2)",
            'mxCheckDmarc."example.org"': "INTEGER: invalid(3)",
        }

    def test_a_check_without_those_checks_shows_not_checked(self, served: Served) -> None:
        columns = ("mxCheckDnssec", "mxCheckMtaSts", "mxCheckMtaStsMode", "mxCheckSpf", "mxCheckDmarc")
        values = served.get(*(f'{column}."plain.example"' for column in columns))
        assert values == {
            'mxCheckDnssec."plain.example"': "INTEGER: notChecked(1)",
            'mxCheckMtaSts."plain.example"': "INTEGER: notChecked(1)",
            'mxCheckMtaStsMode."plain.example"': "STRING: ",
            'mxCheckSpf."plain.example"': "INTEGER: notChecked(1)",
            'mxCheckDmarc."plain.example"': "INTEGER: notChecked(1)",
        }


class TestMxExchangeColumns:
    def test_snmptable_shows_dane_and_mta_sts_per_exchange(self, served: Served) -> None:
        header, rows = served.table("mxExchangeTable")
        assert header[-2:] == ["mxExchangeDane", "mxExchangeMtaSts"]
        by_index = {row[0]: row[-2:] for row in rows}
        assert by_index == {
            '"example.org".1': ["matched", "covered"],
            '"example.org".2': ["error", "notCovered"],
            '"plain.example".1': ["notChecked", "notChecked"],
        }


class TestSmtpProbeTlsSeen:
    def test_time_of_the_handshake_outlives_a_later_failure(self, served: Served) -> None:
        values = served.get(
            'smtpProbeTlsSeen."mail-a"',
            'smtpProbeTlsVersion."mail-a"',
            'smtpProbeStatus."mail-a"',
            'smtpProbeTlsSeen."plain"',
        )
        seen = datetime.fromtimestamp(served.handshake_started, UTC)
        tenths = seen.microsecond // 100_000
        assert values['smtpProbeTlsSeen."mail-a"'] == (
            f"STRING: {seen.year}-{seen.month}-{seen.day},{seen.hour}:{seen.minute}:{seen.second}.{tenths},+0:0"
        )
        assert values['smtpProbeTlsVersion."mail-a"'] == "STRING: TLSv1.3"
        assert values['smtpProbeStatus."mail-a"'] == "INTEGER: failed(2)"
        assert values['smtpProbeTlsSeen."plain"'] == f"STRING: {NEVER}"
