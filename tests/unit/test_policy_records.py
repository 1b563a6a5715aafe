"""SPF and DMARC record syntax verdicts."""

from __future__ import annotations

import asyncio

import pytest

from monitor.config.schema import DnsConfig
from monitor.model.facts import FindingLevel, PolicyFinding
from monitor.probes import build_resolver
from monitor.probes.policy_records import check_dmarc, check_spf, check_tls_rpt, spf_depth
from tests.fakes.dns_server import ScriptedDnsServer


class TestSpf:
    @pytest.mark.parametrize(
        "record",
        [
            "v=spf1 -all",
            "v=spf1 mx a:mail.example.org/24 ip4:192.0.2.0/24 ip6:2001:db8::/32 include:_spf.example.org ~all",
            "v=spf1 redirect=_spf.example.org",
            "v=spf1 exists:%{i}.spf.example.org ?all",
        ],
    )
    def test_valid_records_have_no_problem(self, record: str) -> None:
        assert check_spf(["google-site-verification=x", record]).problem == ""

    def test_absent_record_is_a_problem(self) -> None:
        assert "no SPF record" in check_spf(["v=DMARC1; p=none"]).problem

    def test_two_records_are_a_permerror(self) -> None:
        assert "permerror" in check_spf(["v=spf1 -all", "v=spf1 mx -all"]).problem

    @pytest.mark.parametrize(
        ("record", "named"),
        [
            ("v=spf1 ip4:300.0.0.1 -all", "300.0.0.1"),
            ("v=spf1 ip4:2001:db8::1 -all", "wrong address family"),
            ("v=spf1 mx bogus -all", "bogus"),
        ],
    )
    def test_malformed_terms_are_named(self, record: str, named: str) -> None:
        assert named in check_spf([record]).problem

    def test_spf1x_is_not_an_spf_record(self) -> None:
        assert "no SPF record" in check_spf(["v=spf10 -all"]).problem


class TestDmarc:
    def test_valid_record(self) -> None:
        verdict = check_dmarc(["v=DMARC1; p=quarantine; pct=50; rua=mailto:a@example.org,mailto:b@example.org"])
        assert verdict.problem == ""

    @pytest.mark.parametrize(
        ("record", "named"),
        [
            ("v=DMARC1", "p="),
            ("v=DMARC1; p=maybe", "p="),
            ("v=DMARC1; p=none; sp=never", "sp="),
            ("v=DMARC1; p=none; pct=150", "pct="),
            ("v=DMARC1; p=none; rua=https://example.org/", "mailto"),
            ("v=DMARC1; p=none; garbage", "malformed"),
        ],
    )
    def test_malformed_records_are_named(self, record: str, named: str) -> None:
        assert named in check_dmarc([record]).problem

    def test_absent_and_duplicate_records(self) -> None:
        assert "no DMARC record" in check_dmarc([]).problem
        assert "2 DMARC records" in check_dmarc(["v=DMARC1; p=none", "v=DMARC1; p=reject"]).problem


class TestTlsRpt:
    @pytest.mark.parametrize(
        "record",
        [
            "v=TLSRPTv1; rua=mailto:tls@example.org",
            "v=TLSRPTv1;rua=https://reports.example.org/v1,mailto:tls@example.org;",
            "v=TLSRPTv1; rua=mailto:tls@example.org; ext_1=anything",
        ],
    )
    def test_valid_records(self, record: str) -> None:
        finding = check_tls_rpt(["some other text", record])
        assert (finding.record, finding.finding, finding.level) == ("tls_rpt", "record", FindingLevel.OK)

    @pytest.mark.parametrize(
        ("records", "named"),
        [
            (["v=TLSRPTv1"], "no rua="),
            (["v=TLSRPTv1; rua=ftp://example.org/"], "neither mailto: nor https:"),
            (["v=TLSRPTv1; rua=mailto:"], "neither mailto: nor https:"),
            (["v=TLSRPTv1; rua"], "malformed field"),
            (["v=TLSRPTv1x; rua=mailto:a@example.org"], "must start with"),
            (["v=TLSRPTv1; rua=mailto:a@example.org", "v=TLSRPTv1; rua=mailto:b@example.org"], "2 TLS-RPT records"),
        ],
    )
    def test_broken_records_are_errors(self, records: list[str], named: str) -> None:
        finding = check_tls_rpt(records)
        assert finding.level is FindingLevel.ERROR
        assert named in finding.detail

    def test_no_record_is_a_warning(self) -> None:
        assert check_tls_rpt(["v=spf1 -all"]).level is FindingLevel.WARNING


def spf_findings(server: ScriptedDnsServer, record: str) -> dict[str, PolicyFinding]:
    resolver = build_resolver(DnsConfig(nameservers=[server.nameserver], timeout=1.0))
    found = asyncio.run(spf_depth(resolver, "example.test", record))
    return {f.finding: f for f in found}


class TestSpfDepth:
    def test_more_than_ten_exchanges_of_an_mx_term_is_a_permerror(self) -> None:
        with ScriptedDnsServer() as server:
            server.records("example.test", "MX", *(f"10 mx{n}.example.test." for n in range(11)))
            found = spf_findings(server, "v=spf1 mx -all")
        assert found["dns_lookups"].level is FindingLevel.ERROR
        assert "mx:example.test has 11 exchanges" in found["dns_lookups"].detail

    def test_macros_count_as_lookups_but_are_not_looked_up(self) -> None:
        with ScriptedDnsServer() as server:
            found = spf_findings(server, "v=spf1 exists:%{i}.bl.example.test include:%{d}.spf.example.test -all")
            assert server.queries == []
        assert found["dns_lookups"].detail == "2/10 DNS lookups"
        assert found["void_lookups"].level is FindingLevel.OK

    def test_redirect_is_ignored_beside_all(self) -> None:
        # RFC 7208 6.1: with an all term the redirect never applies, so its target is neither looked up nor counted
        with ScriptedDnsServer() as server:
            found = spf_findings(server, "v=spf1 ip4:192.0.2.1 -all redirect=_spf.example.test")
            assert server.seen("_spf.example.test") == []
        assert found["dns_lookups"].detail == "0/10 DNS lookups"
        assert {f.level for f in found.values()} == {FindingLevel.OK}

    def test_a_and_mx_with_prefix_lengths_are_lookups(self) -> None:
        with ScriptedDnsServer() as server:
            server.records("example.test", "A", "192.0.2.1")
            server.records("example.test", "MX", "10 mx.example.test.")
            server.records("other.example.test", "A", "192.0.2.2")
            found = spf_findings(server, "v=spf1 a/24 mx//64 a:other.example.test/28 -all")
            assert len(server.seen("example.test", "MX")) == 1
        assert found["dns_lookups"].detail == "3/10 DNS lookups"
