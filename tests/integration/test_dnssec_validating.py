"""DNSSEC end to end: a real validating Unbound, zones signed at run time and served by NSD, the AD bit everywhere."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.model.results import MxResult, Phase, Reason
from monitor.probes import ProbeEnv, build_resolver, mx
from monitor.probes.dane import Tlsa, lookup_tlsa
from tests.peers import signed_zones as sz
from tests.peers.agent import AgentProcess
from tests.peers.net_snmp import tool_env
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.peers.unbound import UnboundError, UnboundResolver
from tests.support.ports import HOST, free_udp_port, tcp_port_open

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
MODULE = "SMTP-MONITOR-MIB"
COMMUNITY = "public"

# name -> what a validator makes of it: SERVFAIL, and the RFC 8914 extended error it may carry
# (Unbound gives SIGNATURE_EXPIRED only on the first answer; a cached bogus answer says DNSSEC_BOGUS)
BROKEN = {
    sz.TAMPERED_DOMAIN: {dns.edns.EDECode.DNSSEC_BOGUS},
    sz.EXPIRED_DOMAIN: {dns.edns.EDECode.SIGNATURE_EXPIRED, dns.edns.EDECode.DNSSEC_BOGUS},
    sz.BOGUS_DOMAIN: {dns.edns.EDECode.DNSSEC_BOGUS},
}
BROKEN_IDS = ["tampered-rdata", "expired-rrsig", "key-not-anchored"]


def ask(port: int, name: str, rdtype: str, *, dnssec: bool = True, cd: bool = False) -> dns.message.Message:
    """One UDP query to 127.0.0.1:`port`, with DO when `dnssec`, CD (checking disabled) when `cd`."""
    query = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
    if cd:
        query.flags |= dns.flags.CD
    return dns.query.udp(query, HOST, port=port, timeout=3.0)


def ede_codes(reply: dns.message.Message) -> set[dns.edns.EDECode]:
    return {option.code for option in reply.options if isinstance(option, dns.edns.EDEOption)}


def data(reply: dns.message.Message) -> list[dns.rrset.RRset]:
    return [rrset for rrset in reply.answer if rrset.rdtype != dns.rdatatype.RRSIG]


def mx_check(resolver_port: int, domain: str, **settings: Any) -> MxResult:
    """A full MX check (monitor.probes.mx.run) with the agent's resolver pointed at 127.0.0.1:`resolver_port`."""
    config = MxCheckConfig.model_validate({"name": "t", "domain": domain, "timeout": 8, **settings})
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"{HOST}:{resolver_port}"], timeout=3.0)))
    return asyncio.run(mx.run(config, env))


def cli_mx(resolver: UnboundResolver, domain: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """`smtp-monitor mx DOMAIN --nameserver unbound --json ...`: exit code and parsed JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "mx", domain.rstrip("."), "--nameserver", f"{HOST}:{resolver.port}",
         "--json", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def exchanges(zone_mx: tuple[tuple[int, str], ...]) -> list[tuple[int, str]]:
    return [(pref, host.rstrip(".")) for pref, host in zone_mx]


# -- the peers themselves -------------------------------------------------------------------


class TestUnboundValidatesTheSignedZones:
    def test_signed_answers_carry_ad_and_their_rrsigs(self, validating_resolver: UnboundResolver) -> None:
        reply = ask(validating_resolver.port, sz.SIGNED_DOMAIN, "MX")
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AD
        assert sorted((r.preference, r.exchange.to_text()) for r in data(reply)[0]) == list(sz.SIGNED_MX)
        assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer)

    def test_the_authoritative_server_alone_never_sets_ad(self, dnssec_nsd: NsdServer) -> None:
        reply = ask(dnssec_nsd.port, sz.SIGNED_DOMAIN, "MX")
        assert reply.rcode() == dns.rcode.NOERROR
        assert not reply.flags & dns.flags.AD
        assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer)  # signed, but not validated

    def test_an_authenticated_denial_carries_ad(self, validating_resolver: UnboundResolver) -> None:
        nxdomain = ask(validating_resolver.port, "absent." + sz.SIGNED_ORIGIN, "MX")
        assert (nxdomain.rcode(), bool(nxdomain.flags & dns.flags.AD)) == (dns.rcode.NXDOMAIN, True)
        nodata = ask(validating_resolver.port, sz.SIGNED_IMPLICIT_DOMAIN, "MX")
        assert (nodata.rcode(), data(nodata), bool(nodata.flags & dns.flags.AD)) == (dns.rcode.NOERROR, [], True)

    def test_the_unsigned_zone_resolves_without_ad(self, validating_resolver: UnboundResolver) -> None:
        reply = ask(validating_resolver.port, sz.PLAIN_DOMAIN, "MX")
        assert reply.rcode() == dns.rcode.NOERROR
        assert not reply.flags & dns.flags.AD
        assert [r.exchange.to_text() for r in data(reply)[0]] == [sz.PLAIN_MX]

    @pytest.mark.parametrize("name", list(BROKEN), ids=BROKEN_IDS)
    def test_broken_signatures_are_servfail_with_an_extended_error_but_served_with_cd(
        self, validating_resolver: UnboundResolver, name: str
    ) -> None:
        reply = ask(validating_resolver.port, name, "MX")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert ede_codes(reply) & BROKEN[name], reply.options
        unchecked = ask(validating_resolver.port, name, "MX", cd=True)
        assert unchecked.rcode() == dns.rcode.NOERROR  # the data is there: only validation refuses it
        assert not unchecked.flags & dns.flags.AD
        assert data(unchecked)

    def test_the_tampered_name_serves_other_data_than_its_signature_covers(
        self, validating_resolver: UnboundResolver
    ) -> None:
        unchecked = ask(validating_resolver.port, sz.TAMPERED_DOMAIN, "MX", cd=True)
        assert [r.exchange.to_text() for r in data(unchecked)[0]] == [sz.TAMPERED_MX_SERVED]

    @pytest.mark.parametrize("name", ["example.com.", "www.iana.org.", "."], ids=["com", "org", "root"])
    def test_names_outside_the_stub_zones_are_refused_without_going_anywhere(
        self, validating_resolver: UnboundResolver, name: str
    ) -> None:
        reply = ask(validating_resolver.port, name, "A")
        assert reply.rcode() == dns.rcode.REFUSED


class TestUnboundPeer:
    def test_answers_over_tcp_too(self, validating_resolver: UnboundResolver) -> None:
        query = dns.message.make_query(sz.SIGNED_DOMAIN, "MX", want_dnssec=True)
        reply = dns.query.tcp(query, HOST, port=validating_resolver.port, timeout=3.0)
        assert (reply.rcode(), bool(reply.flags & dns.flags.AD)) == (dns.rcode.NOERROR, True)

    def test_stop_ends_the_process_and_frees_the_port(
        self, tmp_path: Path, dnssec_zones: sz.SignedZones, dnssec_nsd: NsdServer
    ) -> None:
        resolver = UnboundResolver(tmp_path, dict.fromkeys(dnssec_zones.zones, dnssec_nsd.port))
        with resolver:
            assert resolver.running()
            assert tcp_port_open(resolver.port)
            assert ask(resolver.port, sz.SIGNED_DOMAIN, "MX").rcode() == dns.rcode.NOERROR
        assert not resolver.running()
        assert not tcp_port_open(resolver.port)
        assert "start of service" in resolver.log_file.read_text()

    def test_an_invalid_config_fails_start_with_the_checker_output(self, tmp_path: Path, dnssec_nsd: NsdServer) -> None:
        resolver = UnboundResolver(tmp_path, {sz.SIGNED_ORIGIN: dnssec_nsd.port}, ["signed.test. IN DS not-a-ds"])
        with pytest.raises(UnboundError, match="is invalid"):
            resolver.start()
        assert not resolver.running()


# -- the MX check (monitor.probes.mx.run) through the validating resolver ---------------------------


class TestMxCheckDnssecRequire:
    def test_signed_domain_passes_authenticated_with_every_exchange_resolved(
        self, validating_resolver: UnboundResolver
    ) -> None:
        result = mx_check(validating_resolver.port, sz.SIGNED_DOMAIN, dnssec="require")
        assert result.ok, result.error
        assert result.authenticated is True
        assert [(r.preference, r.exchange) for r in result.records] == exchanges(sz.SIGNED_MX)
        assert all(r.addresses == (sz.LOOPBACK_V4,) for r in result.records)

    def test_unsigned_domain_fails_with_reason_dnssec(self, validating_resolver: UnboundResolver) -> None:
        result = mx_check(validating_resolver.port, sz.PLAIN_DOMAIN, dnssec="require")
        assert (result.ok, result.phase, result.reason) == (False, Phase.MX, Reason.DNSSEC)
        assert result.authenticated is False
        assert "plain.test" in result.error

    def test_signed_domain_with_implicit_mx_passes_on_its_authenticated_denial(
        self, validating_resolver: UnboundResolver
    ) -> None:
        result = mx_check(validating_resolver.port, sz.SIGNED_IMPLICIT_DOMAIN, dnssec="require")
        assert result.ok, result.error
        assert (result.implicit_mx, result.authenticated) == (True, True)


class TestMxCheckDnssecReport:
    def test_signed_domain_is_reported_authenticated(self, validating_resolver: UnboundResolver) -> None:
        result = mx_check(validating_resolver.port, sz.SIGNED_DOMAIN, dnssec="report")
        assert (result.ok, result.authenticated) == (True, True)

    def test_unsigned_domain_is_reported_unauthenticated_and_passes(self, validating_resolver: UnboundResolver) -> None:
        result = mx_check(validating_resolver.port, sz.PLAIN_DOMAIN, dnssec="report")
        assert result.ok, result.error
        assert result.authenticated is False
        assert [(r.exchange, r.addresses) for r in result.records] == [(sz.PLAIN_MX.rstrip("."), (sz.LOOPBACK_V4,))]

    def test_off_does_not_ask_for_the_ad_bit(self, validating_resolver: UnboundResolver) -> None:
        result = mx_check(validating_resolver.port, sz.SIGNED_DOMAIN, dnssec="off")
        assert (result.ok, result.authenticated) == (True, None)


class TestMxCheckBogusDnssec:
    @pytest.mark.parametrize("dnssec", ["off", "report", "require"])
    @pytest.mark.parametrize("domain", list(BROKEN), ids=BROKEN_IDS)
    def test_a_bogus_mx_answer_fails_the_lookup_as_servfail_whatever_the_dnssec_setting(
        self, validating_resolver: UnboundResolver, domain: str, dnssec: str
    ) -> None:
        # the validator withholds bogus data from every client, asked with DO or not
        result = mx_check(validating_resolver.port, domain, dnssec=dnssec)
        assert (result.ok, result.phase, result.reason) == (False, Phase.MX, Reason.SERVFAIL)
        assert result.authenticated is None
        assert result.records == ()
        assert domain.rstrip(".") in result.error
        assert "SERVFAIL" in result.error
        if dnssec != "off":  # the extended error rides in EDNS, which the DNSSEC resolver always sends
            assert any(f"EDE {int(code)}" in result.error for code in BROKEN[domain]), result.error


# -- the one-shot CLI ---------------------------------------------------------------------------


class TestOneShotMxCliThroughUnbound:
    def test_require_passes_for_the_signed_domain(self, validating_resolver: UnboundResolver) -> None:
        code, result = cli_mx(validating_resolver, sz.SIGNED_DOMAIN, "--dnssec", "require")
        assert code == 0, result
        assert result["authenticated"] is True
        assert [(r["preference"], r["exchange"]) for r in result["mx"]] == exchanges(sz.SIGNED_MX)

    def test_report_shows_the_unsigned_domain_unauthenticated_and_require_fails_it(
        self, validating_resolver: UnboundResolver
    ) -> None:
        code, result = cli_mx(validating_resolver, sz.PLAIN_DOMAIN, "--dnssec", "report")
        assert (code, result["authenticated"]) == (0, False)
        code, result = cli_mx(validating_resolver, sz.PLAIN_DOMAIN, "--dnssec", "require")
        assert code == 2
        assert (result["phase"], result["reason"]) == ("mx", "dnssec")

    def test_a_bogus_zone_is_critical_with_reason_servfail(self, validating_resolver: UnboundResolver) -> None:
        code, result = cli_mx(validating_resolver, sz.BOGUS_DOMAIN, "--dnssec", "require")
        assert code == 2
        assert (result["phase"], result["reason"]) == ("mx", "servfail")
        assert result["authenticated"] is None


# -- DANE with a validated TLSA record ----------------------------------------------------------


class TestDaneWithValidatedTlsa:
    def test_lookup_reports_the_tlsa_record_authenticated(
        self, validating_resolver: UnboundResolver, postfix: PostfixServer
    ) -> None:
        resolver = build_resolver(DnsConfig(nameservers=[f"{HOST}:{validating_resolver.port}"], timeout=3.0))
        found = asyncio.run(lookup_tlsa(resolver, sz.SIGNED_MX1))
        assert (found.error, found.authenticated) == ("", True)
        expected = sz.tlsa_3_1_1(postfix.cert_file.read_bytes()).split()
        assert found.records == (Tlsa(3, 1, 1, bytes.fromhex(expected[3])),)

    def test_lookup_reports_an_authenticated_absence_of_tlsa(self, validating_resolver: UnboundResolver) -> None:
        resolver = build_resolver(DnsConfig(nameservers=[f"{HOST}:{validating_resolver.port}"], timeout=3.0))
        found = asyncio.run(lookup_tlsa(resolver, sz.SIGNED_MX2))
        assert (found.records, found.error, found.authenticated) == ((), "", True)

    def test_mx_check_matches_postfix_against_the_validated_tlsa(
        self, validating_resolver: UnboundResolver, postfix: PostfixServer
    ) -> None:
        # verify: false: MTAs do not check PKIX on port 25; the validated TLSA authenticates the server
        result = mx_check(
            validating_resolver.port, sz.SIGNED_DOMAIN, dnssec="require", probe_hosts=True, port=postfix.plain_port,
            tls="starttls", verify=False, dane="verify",
        )  # fmt: skip
        assert result.ok, result.error
        assert result.authenticated is True
        facts = result.records[0].dane
        assert facts is not None
        assert result.records[0].exchange == sz.SIGNED_MX1.rstrip(".")
        assert (facts.authenticated, facts.matched, facts.usable) == (True, True, 1)


# -- the agent: /metrics and the MIB ------------------------------------------------------------


@dataclass
class NetSnmp:
    """net-snmp's snmpget with our MIB and the base MIBs, isolated from ~/.snmp and /etc/snmp."""

    address: str
    env: dict[str, str]
    base_mibs: Path

    def get(self, *names: str) -> dict[str, str]:
        """snmpget by name: instance name (without the module prefix) -> printed value."""
        command = ["snmpget", "-v2c", "-c", COMMUNITY, "-t", "3", "-r", "2", "-M", f"+{MIB_DIR}:{self.base_mibs}",
                   "-m", MODULE, self.address, *(f"{MODULE}::{name}" for name in names)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        values = {}
        for line in result.stdout.splitlines():
            name, _, value = line.partition(" = ")
            values[name.removeprefix(f"{MODULE}::")] = value
        return values


AGENT_CHECKS = {
    "signed": (sz.SIGNED_DOMAIN, "require"),
    "plain": (sz.PLAIN_DOMAIN, "report"),
    "bogus": (sz.BOGUS_DOMAIN, "report"),
    "unasked": (sz.SIGNED_DOMAIN, "off"),
}


@pytest.fixture(scope="module")
def dnssec_agent(
    tmp_path_factory: pytest.TempPathFactory, validating_resolver: UnboundResolver, base_mibs: Path
) -> Iterator[tuple[AgentProcess, NetSnmp]]:
    """`smtp-monitor run` with one MX check per DNSSEC outcome through Unbound, SNMP on a free port."""
    if shutil.which("snmpget") is None:
        pytest.fail("needs Debian's snmp package (snmpget)")
    workdir = tmp_path_factory.mktemp("dnssec-agent")
    snmp_port = free_udp_port()
    config: dict[str, object] = {
        "defaults": {"interval": "0.5s", "timeout": "5s"},
        "dns": {"nameservers": [f"{HOST}:{validating_resolver.port}"], "timeout": "3s"},
        "snmp": {"enabled": True, "listen": [f"udp:{HOST}:{snmp_port}"], "communities": [{"name": COMMUNITY}]},
        "mx": [{"name": name, "domain": domain.rstrip("."), "dnssec": mode}
               for name, (domain, mode) in AGENT_CHECKS.items()],
    }  # fmt: skip
    agent = AgentProcess(workdir, config)
    env = tool_env(workdir)
    try:
        agent.start()
        agent.wait_until(
            lambda: all((agent.value("mx_check_runs_total", check=name) or 0) >= 1 for name in AGENT_CHECKS),
            30, "not every MX check ran",
        )  # fmt: skip
        yield agent, NetSnmp(f"{HOST}:{snmp_port}", env, base_mibs)
    finally:
        agent.stop()


class TestAgentPublishesTheAdBit:
    def test_metrics_carry_the_ad_bit_per_check_and_bogus_as_a_servfail_failure(
        self, dnssec_agent: tuple[AgentProcess, NetSnmp]
    ) -> None:
        agent, _ = dnssec_agent
        samples = agent.samples()

        def value(name: str, **labels: str) -> float | None:
            return samples.get((name, frozenset(labels.items())))

        assert value("mx_check_dnssec_authenticated", check="signed") == 1.0
        assert value("mx_check_dnssec_authenticated", check="plain") == 0.0
        assert value("mx_check_dnssec_authenticated", check="bogus") is None  # no answer, no AD to report
        assert value("mx_check_dnssec_authenticated", check="unasked") is None
        assert value("mx_check_success", check="signed", domain="signed.test") == 1.0
        assert value("mx_check_success", check="plain", domain="plain.test") == 1.0
        assert value("mx_check_success", check="bogus", domain="bogus.test") == 0.0
        assert (value("mx_check_failures_total", check="bogus", phase="mx", reason="servfail") or 0) >= 1

    def test_snmpget_reads_the_ad_bit_and_the_servfail_reason_from_the_mib(
        self, dnssec_agent: tuple[AgentProcess, NetSnmp]
    ) -> None:
        _, snmp = dnssec_agent
        values = snmp.get(*(f'mxCheckDnssec."{name}"' for name in AGENT_CHECKS), 'mxCheckFailedReason."bogus"')
        assert values == {
            'mxCheckDnssec."signed"': "INTEGER: authenticated(2)",
            'mxCheckDnssec."plain"': "INTEGER: unauthenticated(3)",
            'mxCheckDnssec."bogus"': "INTEGER: notChecked(1)",
            'mxCheckDnssec."unasked"': "INTEGER: notChecked(1)",
            'mxCheckFailedReason."bogus"': "INTEGER: servfail(15)",
        }
