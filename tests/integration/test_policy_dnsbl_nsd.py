"""Policy depth and DNSBL lookups of MX checks against NSD serving tests.peers.policy_zones: each finding
and each DNSBL outcome classified, and the SPF, DMARC and TLS-RPT verdicts compared with checkdmarc's on
the same zones (where they differ, the comments say why)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator

import dns.nameserver
import dns.resolver
import pytest

from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.model.facts import DnsblOutcome, FindingLevel
from monitor.model.probe_result import result_from_dict
from monitor.model.results import MxResult, Phase, Reason
from monitor.probes import ProbeEnv, build_resolver, mx
from tests.peers import policy_zones as zones
from tests.peers.nsd import NsdServer

with warnings.catch_warnings():  # dnspython's DSA deprecation, raised again by checkdmarc's imports
    warnings.simplefilter("ignore")
    import checkdmarc.dmarc
    import checkdmarc.smtp_tls_reporting
    import checkdmarc.spf

OK, WARNING, ERROR = FindingLevel.OK, FindingLevel.WARNING, FindingLevel.ERROR


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    server = NsdServer(tmp_path_factory.mktemp("policy-nsd"), zones.policy_zones())
    try:
        server.start()
        yield server
    finally:
        server.close()


def run_check(nsd: NsdServer, domain: str, **settings: object) -> MxResult:
    config = MxCheckConfig.model_validate({"name": "t", "domain": domain, "timeout": 10, **settings})
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"127.0.0.1:{nsd.port}"], timeout=2)))
    result = asyncio.run(mx.run(config, env))
    assert result_from_dict(result.as_dict()) == result  # the JSON keeps every finding and answer
    return result


def not_ok(result: MxResult) -> set[tuple[str, str, FindingLevel]]:
    return {(f.record, f.finding, f.level) for f in result.policy_findings if f.level is not OK}


# domain -> (the check passes, the findings that are not ok)
EXPECTED_FINDINGS: dict[str, tuple[bool, set[tuple[str, str, FindingLevel]]]] = {
    "sound.pol.test": (True, set()),
    "toomany.pol.test": (False, {("spf", "dns_lookups", ERROR), ("tls_rpt", "record", ERROR)}),
    "tenlookups.pol.test": (True, {("tls_rpt", "record", WARNING)}),
    "void.pol.test": (False, {("spf", "void_lookups", ERROR), ("tls_rpt", "record", WARNING)}),
    "loop.pol.test": (False, {("spf", "include_loop", ERROR), ("tls_rpt", "record", WARNING)}),
    "redirloop.pol.test": (False, {("spf", "include_loop", ERROR), ("tls_rpt", "record", WARNING)}),
    "missing.pol.test": (False, {("spf", "include_missing", ERROR), ("tls_rpt", "record", WARNING)}),
    "twice.pol.test": (False, {("spf", "multiple_records", ERROR), ("tls_rpt", "record", WARNING)}),
    "ptr.pol.test": (True, {("spf", "ptr", WARNING), ("tls_rpt", "record", WARNING)}),
    "none.pol.test": (
        True,
        {
            ("dmarc", "policy", WARNING),
            ("dmarc", "subdomain_policy", WARNING),
            ("dmarc", "pct", WARNING),
            ("tls_rpt", "record", WARNING),
        },
    ),
    "extauth.pol.test": (True, {("tls_rpt", "record", WARNING)}),
    "extnoauth.pol.test": (True, {("dmarc", "report_authorization", WARNING), ("tls_rpt", "record", WARNING)}),
    "nomx.pol.test": (True, {("dmarc", "report_mx", WARNING), ("tls_rpt", "record", WARNING)}),
}


class TestPolicyFindings:
    @pytest.mark.parametrize("domain", list(EXPECTED_FINDINGS))
    def test_each_finding_named_with_its_level(self, nsd: NsdServer, domain: str) -> None:
        passes, expected = EXPECTED_FINDINGS[domain]
        result = run_check(nsd, domain, spf=True, dmarc=True, tls_rpt=True)
        assert not_ok(result) == expected
        assert result.ok is passes, result.error
        if not passes:  # an error-level finding fails the check like a malformed record
            assert (result.phase, result.reason) == (Phase.POLICY, Reason.POLICY_RECORD)
        # every named verdict is there, ok or not: a series per verdict, not one that appears on trouble
        names = {(f.record, f.finding) for f in result.policy_findings}
        assert {("spf", "dns_lookups"), ("dmarc", "policy"), ("tls_rpt", "record")} <= names

    def test_the_lookup_count_is_in_the_detail(self, nsd: NsdServer) -> None:
        details = {
            domain: {f.finding: f.detail for f in run_check(nsd, domain, spf=True).policy_findings}
            for domain in ("toomany.pol.test", "tenlookups.pol.test", "sound.pol.test")
        }
        assert details["toomany.pol.test"]["dns_lookups"].startswith("11/10 DNS lookups")
        assert details["tenlookups.pol.test"]["dns_lookups"] == "10/10 DNS lookups"
        assert details["sound.pol.test"]["dns_lookups"] == "2/10 DNS lookups"

    def test_policy_depth_off_keeps_presence_and_syntax_only(self, nsd: NsdServer) -> None:
        result = run_check(nsd, "toomany.pol.test", spf=True, dmarc=True, policy_depth=False)
        assert result.ok
        assert result.policy_findings == ()
        assert result.spf is not None
        assert result.spf.valid


def _checkdmarc_resolver(nsd: NsdServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", nsd.port)]
    resolver.lifetime = resolver.timeout = 2.0
    return resolver


# domain -> checkdmarc's SPF "valid", and the agent's: no error-level SPF finding
SPF_VALID: dict[str, tuple[bool, bool]] = {
    "sound.pol.test": (True, True),
    "toomany.pol.test": (False, False),  # both count 11 lookups
    "tenlookups.pol.test": (True, True),  # both count 10: at the limit is fine
    # checkdmarc counts the void lookups of a: only (2 of 2, valid); RFC 7208 4.6.4 counts every term that
    # looks a name up, so the agent counts exists:gone3 as the third void lookup: a permerror
    "void.pol.test": (True, False),
    "loop.pol.test": (False, False),
    "redirloop.pol.test": (False, False),
    "missing.pol.test": (False, False),
    "twice.pol.test": (False, False),
    # both pass it; checkdmarc warns that ptr.pol.test has no address (it looks the ptr domain up), the
    # agent that ptr is used at all (RFC 7208 5.5): what a ptr term matches depends on the sender
    "ptr.pol.test": (True, True),
}

# domain -> words of checkdmarc's DMARC warnings, and the agent's non-ok DMARC findings
DMARC_WARNINGS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "sound.pol.test": ((), set()),
    # checkdmarc follows RFC 9989 (DMARCbis), which drops pct; the agent follows RFC 7489, where pct=50
    # leaves half the failing mail without the policy
    "none.pol.test": (
        ("p tag value of none", "sp tag value of none", "pct tag"),
        {"policy", "subdomain_policy", "pct"},
    ),
    "extauth.pol.test": ((), set()),
    "extnoauth.pol.test": (("Authorization record not found",), {"report_authorization"}),
    "nomx.pol.test": (("has no MX records",), {"report_mx"}),
}


class TestAgainstCheckdmarc:
    @pytest.mark.parametrize("domain", list(SPF_VALID))
    def test_spf_verdicts(self, nsd: NsdServer, domain: str) -> None:
        theirs, ours = SPF_VALID[domain]
        found = checkdmarc.spf.check_spf(domain, resolver=_checkdmarc_resolver(nsd))
        assert found["valid"] is theirs, found
        result = run_check(nsd, domain, spf=True)
        errors = [f for f in result.policy_findings if f.level is ERROR] + (
            [] if result.spf and result.spf.valid else [1]
        )
        assert (not errors) is ours, result.error

    @pytest.mark.parametrize("domain", list(DMARC_WARNINGS))
    def test_dmarc_warnings(self, nsd: NsdServer, domain: str) -> None:
        words, ours = DMARC_WARNINGS[domain]
        found = checkdmarc.dmarc.check_dmarc(domain, resolver=_checkdmarc_resolver(nsd))
        assert found["valid"] is True, found
        # checkdmarc also warns when there is no rua= at all (no aggregate reports): the agent does not, a
        # record without reports works as published
        warned = " ".join(w for w in found["warnings"] if "rua tag" not in w)
        assert all(word in warned for word in words), warned
        assert bool(words) is bool(warned), warned
        result = run_check(nsd, domain, dmarc=True)
        assert {f.finding for f in result.policy_findings if f.level is not OK} == ours

    @pytest.mark.parametrize(
        ("domain", "theirs", "ours"),
        [
            ("sound.pol.test", True, OK),
            ("toomany.pol.test", False, ERROR),  # rua=ftp://...: neither mailto: nor https: (RFC 8460 3)
            # no record: checkdmarc says invalid; the agent warns, as mail flows the same without TLS-RPT
            ("tenlookups.pol.test", False, WARNING),
        ],
    )
    def test_tls_rpt_verdicts(self, nsd: NsdServer, domain: str, theirs: bool, ours: FindingLevel) -> None:
        found = checkdmarc.smtp_tls_reporting.check_smtp_tls_reporting(domain, resolver=_checkdmarc_resolver(nsd))
        assert found["valid"] is theirs, found
        result = run_check(nsd, domain, tls_rpt=True)
        assert [(f.finding, f.level) for f in result.policy_findings] == [("record", ours)]


class TestDnsbl:
    def test_a_listed_address_fails_the_check_with_code_and_reason(self, nsd: NsdServer) -> None:
        result = run_check(nsd, "listed.pol.test", dnsbl=[zones.DNSBL_ZONE])
        assert (result.ok, result.phase, result.reason) == (False, Phase.DNSBL, Reason.LISTED)
        assert result.dnsbl is not None
        by_address = {a.address: a for a in result.dnsbl.answers}
        v4, v6 = by_address[zones.LISTED_V4], by_address[zones.LISTED_V6]
        assert (v4.outcome, v4.codes, v4.reason) == (
            DnsblOutcome.LISTED,
            ("127.0.0.2", "127.0.0.4"),
            zones.LISTED_REASON,
        )
        assert (v6.outcome, v6.codes, v6.reason) == (DnsblOutcome.LISTED, ("127.0.0.10",), "v6 listing")  # by nibble
        assert zones.LISTED_REASON in result.error

    @pytest.mark.parametrize(
        ("domain", "outcome", "code"),
        [
            ("clean.pol.test", DnsblOutcome.NOT_LISTED, ()),
            ("refused.pol.test", DnsblOutcome.REFUSED, ("127.255.255.254",)),
            ("queryrefused.pol.test", DnsblOutcome.REFUSED, ("127.0.0.1",)),
            ("unexpected.pol.test", DnsblOutcome.UNEXPECTED, ("192.0.2.99",)),
        ],
    )
    def test_refused_and_unexpected_answers_are_no_listing(
        self, nsd: NsdServer, domain: str, outcome: DnsblOutcome, code: tuple[str, ...]
    ) -> None:
        result = run_check(nsd, domain, dnsbl=[zones.DNSBL_ZONE])
        assert result.ok, result.error  # a refused query is the check's warning, not a listing
        assert result.dnsbl is not None
        assert result.dnsbl.listed == ()
        assert {(a.outcome, a.codes) for a in result.dnsbl.answers} == {(outcome, code)}
        assert all(bool(a.error) is (outcome is not DnsblOutcome.NOT_LISTED) for a in result.dnsbl.answers)

    def test_a_zone_own_error_codes(self, nsd: NsdServer) -> None:
        # 127.0.0.4 is one of the listed address's codes: declared an error code, it makes the answer refused
        zone = {"zone": zones.DNSBL_ZONE, "error_codes": ["127.0.0.4"]}
        result = run_check(nsd, "listed.pol.test", dnsbl=[zone])
        assert result.dnsbl is not None
        outcomes = {a.address: a.outcome for a in result.dnsbl.answers}
        assert outcomes == {zones.LISTED_V4: DnsblOutcome.REFUSED, zones.LISTED_V6: DnsblOutcome.LISTED}

    def test_each_address_in_each_zone_once(self, nsd: NsdServer) -> None:
        result = run_check(nsd, "listed.pol.test", dnsbl=[zones.DNSBL_ZONE, "missing-zone.pol.test"])
        assert result.dnsbl is not None
        assert result.dnsbl.zones == (zones.DNSBL_ZONE, "missing-zone.pol.test")
        assert [(a.address, a.zone) for a in result.dnsbl.answers] == [
            (address, zone)
            for address in (zones.LISTED_V4, zones.LISTED_V6)
            for zone in (zones.DNSBL_ZONE, "missing-zone.pol.test")
        ]
        # an A query per address and zone, and a TXT query per listing
        assert result.dnsbl.queries == 4 + 2


def test_zone_files_load(nsd: NsdServer) -> None:
    # NSD refused nothing: every origin answers (the fixture waits for each SOA)
    assert set(nsd.zones) == {zones.POLICY_ORIGIN, zones.DNSBL_ORIGIN, zones.REPORTS_ORIGIN}
