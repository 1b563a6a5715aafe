"""DNSBL lookups (monitor.probes.dnsbl) and policy depth against a scripted, misbehaving DNS server: names
reversed as RFC 5782 says, every answer classified, timeouts bounded; and how the results reach the
JSON, /metrics, the MIB rows, the one-shot line and `smtp-monitor status`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.cli import report
from monitor.cli.status import mx_facts
from monitor.config.schema import DnsblZoneConfig, DnsConfig, MxCheckConfig
from monitor.exporters.prometheus.metrics import ProbeExposition, StoreCollector, mx_samples
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.mibview import mx_dnsbl_rows, mx_policy_finding_rows
from monitor.model.delivery import DeliveryResult
from monitor.model.facts import DnsblAnswer, DnsblFacts, DnsblOutcome, FindingLevel, PolicyFinding
from monitor.model.probe_result import result_from_dict
from monitor.model.results import MxResult, Phase, Reason
from monitor.probes import ProbeEnv, build_resolver, dnsbl, mx, policy_records
from monitor.probes.delivery import from_address
from monitor.state.store import ResultsStore
from tests.fakes.dns_server import Garbage, Rcode, Records, ScriptedDnsServer, Silence, Truncated, WrongId
from tests.unit.test_metrics import parsed

ZONE = "bl.example.test"
DOMAIN = "example.test"
EXCHANGE = "mx.example.test"
ADDRESS = "192.0.2.10"
NAME = "10.2.0.192.bl.example.test"
QUERY_TIMEOUT = 0.3


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    with ScriptedDnsServer() as server:
        server.records(DOMAIN, "MX", f"10 {EXCHANGE}.")
        server.records(EXCHANGE, "A", ADDRESS)
        yield server


def lookup(server: ScriptedDnsServer, *addresses: str, zones: tuple[str, ...] = (ZONE,)) -> DnsblFacts:
    resolver = build_resolver(DnsConfig(nameservers=[server.nameserver], timeout=2.0))
    configs = [DnsblZoneConfig(zone=zone) for zone in zones]
    return asyncio.run(dnsbl.check(resolver, addresses, configs, query_timeout=QUERY_TIMEOUT))


def only(facts: DnsblFacts) -> DnsblAnswer:
    assert len(facts.answers) == 1
    return facts.answers[0]


class TestQueryNames:
    @pytest.mark.parametrize(
        ("address", "name"),
        [
            ("192.0.2.99", "99.2.0.192.bl.test"),
            ("2001:db8:1:2:3:4:567:89ab", "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test"),
            ("::ffff:192.0.2.99", "99.2.0.192.bl.test"),  # IPv4-mapped: the IPv4 address's name
            ("fe80::1%eth0", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.bl.test"),
        ],
    )
    def test_rfc_5782_names(self, address: str, name: str) -> None:
        assert dnsbl.query_name(address, "bl.test.") == name

    def test_no_address_is_an_error_answer(self, dns: ScriptedDnsServer) -> None:
        answer = only(lookup(dns, "not-an-address"))
        assert (answer.outcome, answer.error) == (DnsblOutcome.ERROR, "not an IP address")
        assert dns.queries == []


class TestAnswers:
    def test_listed_with_codes_and_reason(self, dns: ScriptedDnsServer) -> None:
        dns.records(NAME, "A", "127.0.0.4", "127.0.0.2")
        dns.records(NAME, "TXT", '"spam source"', '"see https://bl.example.test/"')
        answer = only(lookup(dns, ADDRESS))
        assert answer == DnsblAnswer(
            ADDRESS, ZONE, DnsblOutcome.LISTED, ("127.0.0.2", "127.0.0.4"), "see https://bl.example.test/; spam source"
        )

    @pytest.mark.parametrize(
        ("codes", "outcome"),
        [
            (("127.0.0.1",), DnsblOutcome.REFUSED),
            (("127.255.255.252",), DnsblOutcome.REFUSED),
            (("127.255.255.254",), DnsblOutcome.REFUSED),
            (("127.255.255.255",), DnsblOutcome.REFUSED),
            (("127.0.0.2", "127.255.255.254"), DnsblOutcome.REFUSED),  # a refusal is never half a listing
            (("10.0.0.1",), DnsblOutcome.UNEXPECTED),
            (("127.0.0.2", "198.51.100.7"), DnsblOutcome.UNEXPECTED),
        ],
    )
    def test_codes_that_are_no_listing(
        self, dns: ScriptedDnsServer, codes: tuple[str, ...], outcome: DnsblOutcome
    ) -> None:
        dns.records(NAME, "A", *codes)
        answer = only(lookup(dns, ADDRESS))
        assert (answer.outcome, answer.codes, answer.reason) == (outcome, tuple(sorted(codes)), "")
        assert answer.error
        assert dns.seen(NAME, "TXT") == []  # no reason asked for what is no listing

    def test_nxdomain_and_nodata_are_not_listed(self, dns: ScriptedDnsServer) -> None:
        dns.records("20.2.0.192." + ZONE, "TXT", '"a TXT record but no A"')
        facts = lookup(dns, ADDRESS, "192.0.2.20")
        assert [a.outcome for a in facts.answers] == [DnsblOutcome.NOT_LISTED, DnsblOutcome.NOT_LISTED]

    def test_many_codes_and_a_long_reason_are_bounded(self, dns: ScriptedDnsServer) -> None:
        dns.records(NAME, "A", *(f"127.0.0.{n}" for n in range(2, 40)))
        dns.records(NAME, "TXT", '"' + "\x1b[2J" + "x" * 250 + '"', '"' + "y" * 250 + '"')
        answer = only(lookup(dns, ADDRESS))
        assert answer.outcome is DnsblOutcome.LISTED
        assert len(answer.codes) == 8
        assert len(answer.reason) == 255
        assert answer.reason.isprintable()


class TestMisbehavingDns:
    @pytest.mark.parametrize(
        ("behaviour", "said"),
        [
            (Rcode("SERVFAIL"), "SERVFAIL"),
            (Rcode("REFUSED"), "REFUSED"),
            (Silence(), "timeout"),
            (Garbage(), "timeout"),  # dnspython drops what is no DNS message: the query times out
            (WrongId(), "timeout"),
        ],
    )
    def test_a_failed_lookup_is_an_error_answer_in_time(
        self, dns: ScriptedDnsServer, behaviour: Any, said: str
    ) -> None:
        dns.on(NAME, "A", behaviour)
        started = time.monotonic()
        answer = only(lookup(dns, ADDRESS))
        assert time.monotonic() - started < 2.0  # the per-query timeout, not the resolver's
        assert answer.outcome is DnsblOutcome.ERROR
        assert said in answer.error

    def test_a_truncated_answer_is_retried_over_tcp(self, dns: ScriptedDnsServer) -> None:
        dns.on(NAME, "A", Truncated(Records("127.0.0.2")))
        assert only(lookup(dns, ADDRESS)).outcome is DnsblOutcome.LISTED
        assert [q.transport for q in dns.seen(NAME, "A")] == ["udp", "tcp"]

    def test_a_silent_txt_lookup_leaves_the_listing_without_reason(self, dns: ScriptedDnsServer) -> None:
        dns.records(NAME, "A", "127.0.0.2")
        dns.on(NAME, "TXT", Silence())
        answer = only(lookup(dns, ADDRESS))
        assert (answer.outcome, answer.reason) == (DnsblOutcome.LISTED, "")

    def test_a_silent_zone_costs_rounds_of_the_query_timeout_not_one_per_lookup(self, dns: ScriptedDnsServer) -> None:
        dns.default = Silence()
        addresses = [f"192.0.2.{n}" for n in range(1, 17)]
        started = time.monotonic()
        facts = lookup(dns, *addresses, zones=(ZONE, "other.example.test"))
        elapsed = time.monotonic() - started
        assert len(facts.answers) == 32
        assert {a.outcome for a in facts.answers} == {DnsblOutcome.ERROR}
        # 32 lookups, 16 at a time: two rounds of the 0.3 s timeout, where one after another is 9.6 s
        assert elapsed < 32 * QUERY_TIMEOUT / 3

    def test_addresses_are_looked_up_once_and_bounded(self, dns: ScriptedDnsServer) -> None:
        addresses = [ADDRESS, ADDRESS, *(f"198.51.100.{n}" for n in range(1, 50))]
        facts = lookup(dns, *addresses)
        assert facts.addresses[0] == ADDRESS
        assert len(facts.addresses) == dnsbl.MAX_ADDRESSES
        assert facts.queries == dnsbl.MAX_ADDRESSES


def run_check(server: ScriptedDnsServer, **settings: Any) -> MxResult:
    config = MxCheckConfig.model_validate({"name": "t", "domain": DOMAIN, "timeout": 10, **settings})
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[server.nameserver], timeout=0.5)))
    result = asyncio.run(mx.run(config, env))
    assert result.reason is not Reason.INTERNAL, result.error
    assert result_from_dict(result.as_dict()) == result
    return result


class TestInTheMxCheck:
    def test_a_listing_fails_the_check_in_phase_dnsbl(self, dns: ScriptedDnsServer) -> None:
        dns.records(NAME, "A", "127.0.0.2")
        result = run_check(dns, dnsbl=[ZONE])
        assert (result.ok, result.phase, result.reason) == (False, Phase.DNSBL, Reason.LISTED)
        assert f"{ADDRESS} in {ZONE} (127.0.0.2)" in result.error
        assert "dnsbl" in result.timings

    def test_a_dead_resolver_for_the_zone_is_a_warning_not_a_failure(self, dns: ScriptedDnsServer) -> None:
        dns.on(NAME, "A", Silence())
        result = run_check(dns, dnsbl=[ZONE], dnsbl_timeout="0.2s")
        assert result.ok
        assert result.dnsbl is not None
        assert [a.outcome for a in result.dnsbl.answers] == [DnsblOutcome.ERROR]
        assert report.mx_exit_code(result) == report.EXIT_WARNING

    def test_spf_depth_with_a_failing_include_is_a_lookup_warning(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 include:_spf.example.test include:_slow.example.test -all"')
        dns.on("_spf.example.test", "TXT", Rcode("SERVFAIL"))
        dns.on("_slow.example.test", "TXT", Silence())
        started = time.monotonic()
        result = run_check(dns, spf=True)
        assert time.monotonic() - started < 4.0
        assert result.ok, result.error  # a temperror says nothing about the record
        lookup_finding = next(f for f in result.policy_findings if f.finding == "lookup")
        assert lookup_finding.level is FindingLevel.WARNING
        assert "SERVFAIL" in lookup_finding.detail
        assert "timeout" in lookup_finding.detail

    def test_dmarc_authorisation_lookup_failing_is_said(self, dns: ScriptedDnsServer) -> None:
        dns.records("_dmarc." + DOMAIN, "TXT", '"v=DMARC1; p=reject; rua=mailto:d@reports.example.net"')
        dns.on(f"{DOMAIN}._report._dmarc.reports.example.net", "TXT", Rcode("SERVFAIL"))
        dns.records("reports.example.net", "MX", "10 mx.reports.example.net.")
        result = run_check(dns, dmarc=True)
        found = {f.finding: f for f in result.policy_findings}
        assert found["report_authorization"].level is FindingLevel.WARNING
        assert "lookup failed" in found["report_authorization"].detail
        assert found["report_mx"].level is FindingLevel.OK

    def test_an_spf_include_chain_is_bounded(self, dns: ScriptedDnsServer) -> None:
        # every name includes two more: without a bound, 2**n lookups
        dns.records(DOMAIN, "TXT", '"v=spf1 include:a0.example.test -all"')
        for n in range(40):
            dns.records(
                f"a{n}.example.test", "TXT", f'"v=spf1 include:a{n + 1}.example.test include:b{n}.example.test -all"'
            )
            dns.records(f"b{n}.example.test", "TXT", '"v=spf1 -all"')
        result = run_check(dns, spf=True)
        assert (result.phase, result.reason) == (Phase.POLICY, Reason.POLICY_RECORD)
        assert "dns_lookups" in result.error
        assert len(dns.queries) <= 2 + policy_records.MAX_SPF_QUERIES + 2  # MX, SPF, the walk, DMARC-free


def mx_result() -> MxResult:
    answers = (
        DnsblAnswer("192.0.2.1", "bl.one.test", DnsblOutcome.LISTED, ("127.0.0.2",), "spam\x1b[31m"),
        DnsblAnswer("192.0.2.1", "bl.two.test", DnsblOutcome.REFUSED, ("127.255.255.254",), error="refused"),
        DnsblAnswer("2001:db8::1", "bl.one.test", DnsblOutcome.NOT_LISTED),
        DnsblAnswer("2001:db8::1", "bl.two.test", DnsblOutcome.UNEXPECTED, ("10.0.0.1",), error="outside"),
    )
    return MxResult(
        domain="example.test",
        started_at=1_700_000_000.0,
        ok=False,
        phase=Phase.DNSBL,
        reason=Reason.LISTED,
        error="listed on a DNSBL: 192.0.2.1 in bl.one.test",
        policy_findings=(
            PolicyFinding("spf", "dns_lookups", FindingLevel.ERROR, "11/10 DNS lookups"),
            PolicyFinding("dmarc", "policy", FindingLevel.WARNING, "p=none"),
            PolicyFinding("tls_rpt", "record", FindingLevel.OK, "v=TLSRPTv1; rua=mailto:t@example.test"),
        ),
        dnsbl=DnsblFacts(("bl.one.test", "bl.two.test"), ("192.0.2.1", "2001:db8::1"), answers, queries=5),
    )


class TestSurfaces:
    def test_json_round_trip_and_old_shape_without_the_facts(self) -> None:
        result = mx_result()
        wire = result.as_dict()
        assert wire["dnsbl"]["answers"][0]["outcome"] == "listed"
        assert wire["policy_findings"][1] == {
            "record": "dmarc",
            "finding": "policy",
            "level": "warning",
            "detail": "p=none",
        }
        assert result_from_dict(wire) == result
        plain = MxResult(domain="example.test", started_at=1.0, ok=True).as_dict()
        assert "dnsbl" not in plain
        assert "policy_findings" not in plain

    def test_metrics(self) -> None:
        store = ResultsStore(announce=False)
        store.configure([(MxCheckConfig(name="m", domain="example.test"), 1, 60)])
        store.record("m", mx_result())
        samples = {(name, labels): value for name, labels, value in mx_samples(store.snapshot().states["m"])}
        assert samples[("mx_check_dnsbl_listed", ("m", "192.0.2.1", "bl.one.test"))] == 1.0
        assert samples[("mx_check_dnsbl_listed", ("m", "2001:db8::1", "bl.one.test"))] == 0.0
        assert samples[("mx_check_dnsbl_error", ("m", "192.0.2.1", "bl.two.test", "refused"))] == 1.0
        assert samples[("mx_check_dnsbl_error", ("m", "2001:db8::1", "bl.two.test", "unexpected"))] == 1.0
        assert ("mx_check_dnsbl_listed", ("m", "192.0.2.1", "bl.two.test")) not in samples  # no verdict
        assert samples[("mx_check_dnsbl_queries", ("m",))] == 5
        assert samples[("mx_check_policy_finding", ("m", "spf", "dns_lookups", "error"))] == 1.0
        assert samples[("mx_check_policy_finding", ("m", "tls_rpt", "record", "ok"))] == 1.0

    def test_both_expositions_agree(self) -> None:
        store = ResultsStore(announce=False)
        store.configure([(MxCheckConfig(name="m", domain="example.test"), 1, 60)])
        store.record("m", mx_result())
        registry = CollectorRegistry()
        registry.register(StoreCollector(store, None))
        expected = parsed(generate_latest(registry).decode())
        rendered = parsed(ProbeExposition().render(store.snapshot().states.values()).decode())
        assert rendered == expected
        assert (
            expected[
                (
                    "mx_check_dnsbl_listed",
                    frozenset({"check": "m", "address": "192.0.2.1", "zone": "bl.one.test"}.items()),
                )
            ]
            == 1.0
        )

    def test_mib_rows(self) -> None:
        index = mib_oids.name_index("m")
        rows = dict(mx_dnsbl_rows(index, mx_result()))
        status = mib_oids.DNSBL_STATUS_VALUES
        assert rows[(*index, 1, 1)] == (b"192.0.2.1", b"bl.one.test", status["listed"], b"127.0.0.2", b"spam [31m")
        assert rows[(*index, 1, 2)][2:] == (status["refused"], b"127.255.255.254", b"refused")
        assert rows[(*index, 2, 1)][2:4] == (status["not_listed"], b"")
        assert rows[(*index, 2, 2)][2] == status["unexpected"]
        findings = mx_policy_finding_rows(index, mx_result())
        assert [oid[-1] for oid, _ in findings] == [1, 2, 3]
        assert findings[2][1] == (3, b"record", 1, b"v=TLSRPTv1; rua=mailto:t@example.test")
        assert findings[0][1][2] == mib_oids.FINDING_LEVEL_VALUES["error"]

    def test_one_shot_line_and_status(self) -> None:
        failed = mx_result()
        assert report.mx_exit_code(failed) == report.EXIT_CRITICAL
        line = report.mx_line(failed)
        assert line.startswith("MX CRITICAL - example.test listed: listed on a DNSBL")
        assert "policy_warnings=1 policy_errors=1 dnsbl_listed=1 dnsbl_queries=5" in line
        facts = mx_facts(failed)
        assert facts is not None
        assert facts.listed == ("192.0.2.1 in bl.one.test (127.0.0.2): spam?[31m",)
        assert len(facts.no_verdict) == 2
        assert facts.policy == (("error", "SPF dns_lookups: 11/10 DNS lookups"), ("warning", "DMARC policy: p=none"))
        assert mx_facts(MxResult(domain="example.test", started_at=1.0, ok=True)) is None


class TestReceivedAddresses:
    @pytest.mark.parametrize(
        ("value", "address"),
        [
            (
                "from mail.example.org (mail.example.org [192.0.2.1]) by mx.example.net (Postfix) with ESMTPS id 4Xy"
                " for <a@example.net>; Sun, 6 Dec 2026 22:00:00 +0000",
                "192.0.2.1",
            ),
            ("from [203.0.113.5] (helo=client.example) by mx.example.net with esmtp (Exim 4.96)", "203.0.113.5"),
            ("from client (client [IPv6:2001:db8::25]) by mx.example.net (Postfix) with ESMTP", "2001:db8::25"),
            ("from client (unknown [999.1.1.1]) by mx.example.net with ESMTP", ""),  # not an address
            ("by mx.example.net (Postfix, from userid 0) id 4Xy; Sun, 6 Dec 2026 22:00:00 +0000", ""),
            (
                "from client (client) by relay [198.51.100.7] with ESMTP",
                "",
            ),  # the by clause's address is not the sender's
        ],
    )
    def test_the_from_clause_address(self, value: str, address: str) -> None:
        assert from_address(value) == address


def test_a_name_too_long_for_dns_is_an_error_answer_without_a_query(dns: ScriptedDnsServer) -> None:
    zone = ".".join(["z" * 50] * 4) + ".test"  # 208 characters: with an IPv6 address's 64, over 253
    answer = only(lookup(dns, "2001:db8::1", zones=(zone,)))
    assert answer.outcome is DnsblOutcome.ERROR
    assert "over the 253 of a DNS name" in answer.error
    assert dns.queries == []


def test_status_shows_a_delivery_probes_hop_listings() -> None:
    listed = DnsblAnswer("203.0.113.5", "bl.one.test", DnsblOutcome.LISTED, ("127.0.0.2",), "relay listed")
    facts = DnsblFacts(("bl.one.test",), ("203.0.113.5",), (listed,), queries=2)
    result = DeliveryResult(name="d", started_at=1.0, ok=True, dnsbl=facts)
    found = mx_facts(result)
    assert found is not None
    assert found.listed == ("203.0.113.5 in bl.one.test (127.0.0.2): relay listed",)
    assert found.policy == ()
    assert mx_facts(DeliveryResult(name="d", started_at=1.0, ok=True)) is None


def test_a_listing_leaves_the_policy_checks_their_say(dns: ScriptedDnsServer) -> None:
    dns.records(NAME, "A", "127.0.0.2")
    dns.records(DOMAIN, "TXT", '"v=spf1 include:_gone.example.test -all"')  # a permerror as well
    result = run_check(dns, dnsbl=[ZONE], spf=True)
    # the listing came first and names the run's failure; the SPF findings are there all the same
    assert (result.phase, result.reason) == (Phase.DNSBL, Reason.LISTED)
    assert {(f.finding, f.level) for f in result.policy_findings} >= {("include_missing", FindingLevel.ERROR)}
    assert result.dnsbl is not None
    assert len(result.dnsbl.listed) == 1
