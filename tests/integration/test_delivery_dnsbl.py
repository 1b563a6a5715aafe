"""DNSBL lookups of the sending addresses in a delivery probe's Received chain: the real mail chain (MSA
Postfix -> MX Postfix -> Dovecot) writes the hops, NSD serves a DNSBL zone listing the chain's address."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.cli import report
from monitor.config.schema import DnsConfig, SnmpConfig
from monitor.exporters.prometheus.metrics import delivery_samples
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.model.delivery import DeliveryResult
from monitor.model.facts import DnsblAnswer, DnsblFacts, DnsblOutcome
from monitor.model.probe_result import result_from_dict
from monitor.probes import ProbeEnv, build_resolver
from monitor.probes.delivery import run
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.integration.test_delivery_probe import probe_config
from tests.peers.mail_chain import MailChain
from tests.peers.net_snmp import tool_env
from tests.peers.nsd import NsdServer
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port
from tests.unit.test_snmp_delivery import delivery_config, on_time

MIB_DIR = Path(__file__).resolve().parents[2] / "mibs"
COMMUNITY = "hops-dnsbl-77a1"

HOPS_ORIGIN = "hops.test."
LISTED_ZONE = "listing.hops.test"  # lists the chain's 127.0.0.1
EMPTY_ZONE = "empty.hops.test"  # lists nothing
HOPS_ZONE = f"""$ORIGIN {HOPS_ORIGIN}
$TTL 300
@ IN SOA ns.{HOPS_ORIGIN} hostmaster.{HOPS_ORIGIN} 1 3600 600 86400 300
@ IN NS ns.{HOPS_ORIGIN}
ns IN A 127.0.0.1
1.0.0.127.listing IN A 127.0.0.2
1.0.0.127.listing IN TXT "the test chain's relay"
empty IN TXT "no listings here"
"""


@pytest.fixture(scope="module")
def dnsbl_nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    server = NsdServer(tmp_path_factory.mktemp("hops-nsd"), {HOPS_ORIGIN: HOPS_ZONE})
    try:
        server.start()
        yield server
    finally:
        server.close()


def deliver(chain: MailChain, nsd: NsdServer, zones: list[str]) -> DeliveryResult:
    # submission and mailbox are addressed by IP: the probe's resolver serves the DNSBL lookups only
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"127.0.0.1:{nsd.port}"])))
    # The chain's relays are on loopback: only dnsbl_private_hops looks them up.
    return asyncio.run(run(probe_config(chain, dnsbl=zones, dnsbl_private_hops=True), env))


def test_private_relay_addresses_are_not_looked_up_by_default(mail_chain: MailChain, dnsbl_nsd: NsdServer) -> None:
    mail_chain.ensure_running()
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"127.0.0.1:{dnsbl_nsd.port}"])))
    result = asyncio.run(run(probe_config(mail_chain, dnsbl=[LISTED_ZONE]), env))
    assert result.ok, result.error
    assert {hop.from_address for hop in result.hops} - {""} == {mail_chain.host}  # a loopback relay
    assert result.dnsbl is None  # nothing asked about it


def test_a_listed_relay_address_is_a_fact_of_the_run_not_a_failure(mail_chain: MailChain, dnsbl_nsd: NsdServer) -> None:
    mail_chain.ensure_running()
    result = deliver(mail_chain, dnsbl_nsd, [LISTED_ZONE, EMPTY_ZONE])
    assert result.ok, result.error  # delivered: the listing is what other receivers may make of the relay
    addresses = {hop.from_address for hop in result.hops} - {""}
    assert addresses == {mail_chain.host}
    assert result.dnsbl is not None
    assert result.dnsbl.addresses == (mail_chain.host,)
    by_zone = {a.zone: a for a in result.dnsbl.answers}
    assert (by_zone[LISTED_ZONE].outcome, by_zone[LISTED_ZONE].codes) == (DnsblOutcome.LISTED, ("127.0.0.2",))
    assert by_zone[LISTED_ZONE].reason == "the test chain's relay"
    assert by_zone[EMPTY_ZONE].outcome is DnsblOutcome.NOT_LISTED
    assert result_from_dict(result.as_dict()) == result

    assert report.delivery_exit_code(result) == report.EXIT_WARNING
    assert f"DNSBL: {mail_chain.host} listed in {LISTED_ZONE} (127.0.0.2)" in report.delivery_line(result, 20)
    store = ResultsStore(announce=False)
    config = probe_config(mail_chain, dnsbl=[LISTED_ZONE, EMPTY_ZONE])
    store.configure([(config, 1, 60)])
    store.record("chain", result)
    samples = {(n, labels): v for n, labels, v in delivery_samples(store.snapshot().states["chain"])}
    assert samples[("delivery_probe_dnsbl_listed", ("chain", mail_chain.host, LISTED_ZONE))] == 1.0
    assert samples[("delivery_probe_dnsbl_listed", ("chain", mail_chain.host, EMPTY_ZONE))] == 0.0


def test_without_zones_nothing_is_looked_up(mail_chain: MailChain, dnsbl_nsd: NsdServer) -> None:
    mail_chain.ensure_running()
    result = deliver(mail_chain, dnsbl_nsd, [])
    assert result.ok, result.error
    assert result.dnsbl is None
    assert "dnsbl" not in result.as_dict()


def test_snmptable_shows_the_hops_dnsbl_answers(tmp_path: Path, base_mibs: Path) -> None:
    answers = (
        DnsblAnswer("203.0.113.5", LISTED_ZONE, DnsblOutcome.LISTED, ("127.0.0.2", "127.0.0.3"), "relay listed"),
        DnsblAnswer("203.0.113.5", EMPTY_ZONE, DnsblOutcome.REFUSED, ("127.255.255.254",), error="refused"),
        DnsblAnswer("2001:db8::25", LISTED_ZONE, DnsblOutcome.NOT_LISTED),
        DnsblAnswer("2001:db8::25", EMPTY_ZONE, DnsblOutcome.ERROR, error="timeout: no answer"),
    )
    facts = DnsblFacts((LISTED_ZONE, EMPTY_ZONE), ("203.0.113.5", "2001:db8::25"), answers, queries=5)
    store = ResultsStore(announce=False)
    store.configure([(delivery_config("loop", dnsbl=[LISTED_ZONE, EMPTY_ZONE]), 1, 14)])
    store.record("loop", on_time(dnsbl=facts))
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": COMMUNITY}]})
    agent = SnmpAgent(config, tmp_path / "snmp-state", store, AgentHealth())
    with AgentThread(agent):
        out = subprocess.run(
            [
                "snmptable", "-M", f"+{MIB_DIR}:{base_mibs}", "-m", "SMTP-MONITOR-MIB", "-v2c", "-c", COMMUNITY,
                "-t", "3", "-r", "2", "-Ci", "-Cf", "|", f"udp:127.0.0.1:{port}", "deliveryDnsblTable",
            ],
            capture_output=True, text=True, env=tool_env(tmp_path / "net-snmp"), timeout=60, check=False,
        )  # fmt: skip
    assert (out.returncode, out.stderr) == (0, "")
    lines = [line.split("|") for line in out.stdout.splitlines() if "|" in line]
    rows = {line[0]: dict(zip(lines[0][1:], line[1:], strict=True)) for line in lines[1:]}
    assert list(rows) == ['"loop".1.1', '"loop".1.2', '"loop".2.1', '"loop".2.2']
    listed = rows['"loop".1.1']
    assert (listed["deliveryDnsblAddress"], listed["deliveryDnsblZone"]) == ("203.0.113.5", LISTED_ZONE)
    assert (listed["deliveryDnsblStatus"], listed["deliveryDnsblCode"]) == ("listed", "127.0.0.2,127.0.0.3")
    assert listed["deliveryDnsblReason"] == "relay listed"
    assert [rows[k]["deliveryDnsblStatus"] for k in list(rows)[1:]] == ["refused", "notListed", "error"]
    assert rows['"loop".2.2']["deliveryDnsblReason"] == "timeout: no answer"
