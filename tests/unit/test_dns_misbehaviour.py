"""SPF, DMARC and reverse-DNS lookups of an MX check against a misbehaving DNS server: always a classified result."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.cli import main as cli
from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.model.facts import PolicyRecord
from monitor.model.probe_result import result_from_dict
from monitor.model.results import MxResult, Phase, Reason, ReverseDns
from monitor.probes import ProbeEnv, build_resolver, mx
from tests.fakes.dns_server import (
    Cname,
    Garbage,
    RawRdata,
    Rcode,
    Records,
    ScriptedDnsServer,
    Silence,
    Truncated,
    WrongId,
    long_txt,
)

DOMAIN = "example.test"
EXCHANGE = "mx.example.test"
ADDRESS = "192.0.2.10"  # never connected to: these checks probe no host
PTR_NAME = "10.2.0.192.in-addr.arpa"
DMARC_NAME = f"_dmarc.{DOMAIN}"
SPF = "v=spf1 mx ip4:192.0.2.0/24 -all"
DMARC = "v=DMARC1; p=reject; rua=mailto:dmarc@example.test"
DNS_TIMEOUT = 0.5  # the resolver's lifetime per lookup
CHECK_TIMEOUT = 10.0
FAST = 4.0  # seconds: every scenario ends well inside this (a hang guard, not a speed test)


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    """A scripted server holding a healthy domain: one exchange, forward-confirmed PTR, SPF and DMARC."""
    with ScriptedDnsServer() as server:
        server.records(DOMAIN, "MX", f"10 {EXCHANGE}.")
        server.records(DOMAIN, "TXT", f'"{SPF}"')
        server.records(DMARC_NAME, "TXT", f'"{DMARC}"')
        server.records(EXCHANGE, "A", ADDRESS)
        server.records(PTR_NAME, "PTR", f"{EXCHANGE}.")
        yield server


def check(server: ScriptedDnsServer, **settings: Any) -> MxResult:
    """mx.run as the agent runs it, through `server` with a short DNS timeout; asserts the invariants."""
    config = MxCheckConfig.model_validate({"name": "t", "domain": DOMAIN, "timeout": CHECK_TIMEOUT, **settings})
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[server.nameserver], timeout=DNS_TIMEOUT)))
    started = time.monotonic()
    result = asyncio.run(mx.run(config, env))
    assert time.monotonic() - started < FAST
    assert_classified(result)
    return result


def assert_classified(result: MxResult) -> None:
    """A failure names its phase and reason, never INTERNAL; the result survives JSON and a reload."""
    if not result.ok:
        assert result.phase not in (None, Phase.INTERNAL), result
        assert result.reason not in (None, Reason.INTERNAL), result
        assert result.error
    saved = json.loads(json.dumps(result.as_dict()))
    assert result_from_dict(saved).as_dict() == saved


def spf_of(result: MxResult) -> PolicyRecord:
    assert result.spf is not None, "no SPF verdict"
    return result.spf


def dmarc_of(result: MxResult) -> PolicyRecord:
    assert result.dmarc is not None, "no DMARC verdict"
    return result.dmarc


def failed(result: MxResult) -> tuple[Phase | None, Reason | None]:
    return result.phase, result.reason


def reverse_of(result: MxResult) -> ReverseDns:
    (record,) = result.records
    (rev,) = record.reverse
    return rev


class TestSpfLookup:
    def test_a_healthy_record_passes(self, dns: ScriptedDnsServer) -> None:
        result = check(dns, spf=True)
        assert result.ok, result.error
        assert spf_of(result).as_dict() == {"record": SPF, "valid": True, "problem": ""}

    def test_a_silent_server_is_a_timeout_of_the_spf_lookup(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Silence())
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.TIMEOUT)
        assert result.error.startswith("SPF: lookup failed: example.test TXT: DNS timeout")
        assert result.spf is None  # no verdict on a record nobody could read

    def test_servfail_is_a_servfail_of_the_spf_lookup(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Rcode("SERVFAIL"))
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.SERVFAIL)
        assert (
            result.error
            == f"SPF: lookup failed: example.test TXT: {dns.nameserver.replace(':', '@')} answered SERVFAIL"
        )

    def test_refused_is_a_servfail_of_the_spf_lookup(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Rcode("REFUSED"))
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.SERVFAIL)
        assert "answered REFUSED" in result.error

    def test_garbage_over_udp_is_dropped_like_a_forgery_and_ends_as_a_timeout(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Garbage())
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.TIMEOUT)
        assert "no valid reply" in result.error

    def test_garbage_over_tcp_is_an_unusable_answer(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Truncated(Garbage()))
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.DNS)
        assert "SPF: lookup failed: example.test TXT: unusable answer" in result.error

    def test_a_reply_with_the_wrong_query_id_is_ignored(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", WrongId(Records('"v=spf1 +all"'), then_correct=False))
        assert failed(check(dns, spf=True)) == (Phase.POLICY, Reason.TIMEOUT)

    def test_the_right_reply_behind_one_with_the_wrong_id_is_taken(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", WrongId(Records(f'"{SPF}"'), then_correct=True))
        assert check(dns, spf=True).ok

    def test_two_spf_records_are_a_permerror(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 -all"', '"v=spf1 mx -all"')
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.POLICY_RECORD)
        assert spf_of(result).problem == "2 SPF records: RFC 7208 makes that a permerror"

    def test_the_strings_of_one_record_are_joined_without_adding_a_space(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 mx ip4:192.0.2.0/24" " -all"')
        result = check(dns, spf=True)
        assert result.ok, result.error
        assert spf_of(result).record == "v=spf1 mx ip4:192.0.2.0/24 -all"

    def test_strings_split_inside_a_term_make_one_malformed_term(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 mx ip4:192.0.2.0/24" "-all"')
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.POLICY_RECORD)
        assert spf_of(result).problem == "bad network in 'ip4:192.0.2.0/24-all'"

    def test_a_record_too_large_for_udp_is_fetched_over_tcp(self, dns: ScriptedDnsServer) -> None:
        record = "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(200)) + " -all"
        dns.records(DOMAIN, "TXT", long_txt(record))
        result = check(dns, spf=True)
        assert result.ok, result.error
        assert spf_of(result).record == record
        assert [q.transport for q in dns.seen(DOMAIN, "TXT")] == ["udp", "tcp"]

    def test_a_truncated_reply_is_retried_over_tcp(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Truncated(Records(f'"{SPF}"')))
        assert check(dns, spf=True).ok
        assert [q.transport for q in dns.seen(DOMAIN, "TXT")] == ["udp", "tcp"]

    def test_malformed_txt_rdata_over_tcp_is_an_unusable_answer(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Truncated(RawRdata(b"\xffv=spf1")))  # a string claiming 255 bytes, 6 there
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.DNS)
        assert "unusable answer" in result.error

    def test_binary_bytes_in_the_record_make_it_invalid(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", r'"v=spf1 ip4:192.0.2.1 \255\000 -all"')
        result = check(dns, spf=True)
        assert failed(result) == (Phase.POLICY, Reason.POLICY_RECORD)
        assert spf_of(result).problem == "non-ASCII characters: RFC 7208 records are US-ASCII only"

    def test_a_non_ascii_domain_in_a_mechanism_makes_it_invalid(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 include:ex\\195\\164mple.test -all"')  # UTF-8 "ä"
        result = check(dns, spf=True)
        assert spf_of(result).record == "v=spf1 include:exämple.test -all"
        assert "non-ASCII" in spf_of(result).problem

    def test_a_binary_txt_record_beside_the_spf_record_is_ignored(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", r'"\255\254\000\001"', f'"{SPF}"')
        result = check(dns, spf=True)
        assert result.ok, result.error


class TestDmarcLookup:
    def test_nxdomain_is_a_missing_record(self, dns: ScriptedDnsServer) -> None:
        dns.on(DMARC_NAME, "TXT", Rcode("NXDOMAIN"))
        result = check(dns, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.POLICY_RECORD)
        assert dmarc_of(result).as_dict() == {"record": "", "valid": False, "problem": "no DMARC record (v=DMARC1)"}

    def test_nodata_is_a_missing_record(self, dns: ScriptedDnsServer) -> None:
        dns.on(DMARC_NAME, "TXT", Rcode("NOERROR"))
        assert dmarc_of(check(dns, dmarc=True)).problem == "no DMARC record (v=DMARC1)"

    def test_servfail_is_a_servfail_not_a_missing_record(self, dns: ScriptedDnsServer) -> None:
        dns.on(DMARC_NAME, "TXT", Rcode("SERVFAIL"))
        result = check(dns, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.SERVFAIL)
        assert result.error.startswith("DMARC: lookup failed: _dmarc.example.test TXT:")
        assert result.dmarc is None

    def test_a_timeout_is_a_timeout_not_a_missing_record(self, dns: ScriptedDnsServer) -> None:
        dns.on(DMARC_NAME, "TXT", Silence())
        result = check(dns, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.TIMEOUT)

    def test_a_malformed_policy_is_a_policy_record_problem(self, dns: ScriptedDnsServer) -> None:
        dns.records(DMARC_NAME, "TXT", '"v=DMARC1; p=sometimes"')
        result = check(dns, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.POLICY_RECORD)
        assert result.error == "DMARC: p= must be none, quarantine or reject"
        assert dmarc_of(result).valid is False

    def test_the_spf_verdict_is_kept_when_the_dmarc_lookup_fails(self, dns: ScriptedDnsServer) -> None:
        dns.on(DMARC_NAME, "TXT", Rcode("SERVFAIL"))
        result = check(dns, spf=True, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.SERVFAIL)
        assert spf_of(result).valid is True

    def test_both_lookups_failing_name_both(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Rcode("SERVFAIL"))
        dns.on(DMARC_NAME, "TXT", Silence())
        result = check(dns, spf=True, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.SERVFAIL)  # the first failed lookup's reason
        assert "SPF: lookup failed" in result.error
        assert "DMARC: lookup failed" in result.error

    def test_a_lookup_failure_outranks_a_malformed_record(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 bogus -all"')
        dns.on(DMARC_NAME, "TXT", Rcode("SERVFAIL"))
        result = check(dns, spf=True, dmarc=True)
        assert failed(result) == (Phase.POLICY, Reason.SERVFAIL)
        assert "SPF: unknown term 'bogus'" in result.error


class TestPtrLookup:
    def test_a_forward_confirmed_ptr_passes(self, dns: ScriptedDnsServer) -> None:
        result = check(dns, reverse_dns="require")
        assert result.ok, result.error
        assert reverse_of(result) == ReverseDns(ADDRESS, (EXCHANGE,), True)

    def test_a_timeout_is_an_unconfirmed_address_saying_so(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "PTR", Silence())
        result = check(dns, reverse_dns="require")
        assert failed(result) == (Phase.REVERSE, Reason.REVERSE_DNS)
        rev = reverse_of(result)
        assert (rev.names, rev.confirmed) == ((), False)
        assert rev.error == f"PTR lookup failed: {PTR_NAME} PTR: DNS timeout (no valid reply)"
        assert result.error == f"reverse DNS not forward-confirmed: {ADDRESS}: {rev.error}"

    def test_servfail_is_a_failed_lookup_not_a_missing_ptr(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "PTR", Rcode("SERVFAIL"))
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert rev.error.startswith(f"PTR lookup failed: {PTR_NAME} PTR:")
        assert rev.error.endswith("answered SERVFAIL")

    def test_nxdomain_is_a_missing_ptr(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "PTR", Rcode("NXDOMAIN"))
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert rev.error == f"no PTR record ({PTR_NAME}: no such domain (NXDOMAIN))"

    def test_report_mode_records_the_failure_without_failing(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "PTR", Rcode("SERVFAIL"))
        result = check(dns, reverse_dns="report")
        assert result.ok, result.error
        assert reverse_of(result).confirmed is False

    def test_a_ptr_to_a_name_without_address_is_not_confirmed(self, dns: ScriptedDnsServer) -> None:
        dns.records(PTR_NAME, "PTR", "host.elsewhere.test.")
        dns.records("host.elsewhere.test", "TXT", '"a name with no address"')
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert (rev.names, rev.confirmed) == (("host.elsewhere.test",), False)
        assert rev.error == "PTR host.elsewhere.test: host.elsewhere.test: no A or AAAA record"

    def test_a_ptr_to_a_name_of_another_address_is_not_confirmed(self, dns: ScriptedDnsServer) -> None:
        dns.records(PTR_NAME, "PTR", "other.example.test.")
        dns.records("other.example.test", "A", "192.0.2.99")
        result = check(dns, reverse_dns="require")
        assert failed(result) == (Phase.REVERSE, Reason.REVERSE_DNS)
        assert reverse_of(result).error == f"PTR other.example.test resolves to 192.0.2.99, not {ADDRESS}"

    def test_a_ptr_target_spelled_as_the_address_is_a_name_not_a_confirmation(self, dns: ScriptedDnsServer) -> None:
        dns.records(PTR_NAME, "PTR", f"{ADDRESS}.")  # a common misconfiguration: the name "192.0.2.10."
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert (rev.names, rev.confirmed) == ((ADDRESS,), False)
        assert "no such domain" in rev.error
        assert dns.seen(ADDRESS, "A")  # looked up in the DNS, not taken as the address itself

    def test_a_ptr_whose_name_lookup_times_out_is_not_confirmed(self, dns: ScriptedDnsServer) -> None:
        dns.records(PTR_NAME, "PTR", "slow.example.test.")
        dns.on("slow.example.test", "*", Silence())
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert rev.confirmed is False
        assert rev.error == "PTR slow.example.test: slow.example.test A: DNS timeout (no valid reply)"

    def test_one_confirming_name_among_many_ptrs_confirms(self, dns: ScriptedDnsServer) -> None:
        names = [f"pool-{i:02d}.isp.test." for i in range(1, 40)]
        dns.records(PTR_NAME, "PTR", f"{EXCHANGE}.", *names)  # too large for UDP: over TCP
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert rev.confirmed is True
        assert len(rev.names) == 40
        assert [q.transport for q in dns.seen(PTR_NAME)] == ["udp", "tcp"]

    def test_at_most_ten_ptr_names_are_looked_up(self, dns: ScriptedDnsServer) -> None:
        names = [f"pool-{i:02d}.isp.test." for i in range(1, 40)]
        dns.records(PTR_NAME, "PTR", *names, "zz.example.test.")
        dns.records("zz.example.test", "A", ADDRESS)  # would confirm, but sorts after the first ten
        result = check(dns, reverse_dns="require")
        assert failed(result) == (Phase.REVERSE, Reason.REVERSE_DNS)
        rev = reverse_of(result)
        assert rev.error.endswith("(30 more PTR names not checked)")
        forward = {q.qname for q in dns.queries if q.qtype in ("A", "AAAA") and q.qname != EXCHANGE}
        assert forward == {f"pool-{i:02d}.isp.test" for i in range(1, 11)}

    def test_a_cname_loop_at_the_ptr_is_an_unusable_answer(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "CNAME", Cname("10.loop.2.0.192.in-addr.arpa"))
        dns.on("10.loop.2.0.192.in-addr.arpa", "CNAME", Cname(PTR_NAME))
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert rev.confirmed is False
        assert rev.error.startswith(f"PTR lookup failed: {PTR_NAME} PTR: unusable answer (")
        assert "CNAME chain is too long" in rev.error

    def test_a_cname_loop_at_the_ptr_target_is_not_confirmed(self, dns: ScriptedDnsServer) -> None:
        dns.records(PTR_NAME, "PTR", "a.loop.test.")
        dns.on("a.loop.test", "CNAME", Cname("b.loop.test"))
        dns.on("b.loop.test", "CNAME", Cname("a.loop.test"))
        rev = reverse_of(check(dns, reverse_dns="require"))
        assert rev.confirmed is False
        assert "CNAME chain is too long" in rev.error

    def test_a_classless_delegation_cname_is_followed(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "CNAME", Cname("10.0-25.2.0.192.in-addr.arpa"))  # RFC 2317
        dns.records("10.0-25.2.0.192.in-addr.arpa", "PTR", f"{EXCHANGE}.")
        assert reverse_of(check(dns, reverse_dns="require")).confirmed is True


class TestOneShotJson:
    """`smtp-monitor mx --json` prints the same classified result, with Nagios exit codes."""

    def run_cli(self, *args: str) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["mx", DOMAIN, *args, "--timeout", "5", "--json"])
        return code, json.loads(out.getvalue())

    def test_a_spf_servfail_is_critical_with_reason_servfail(self, dns: ScriptedDnsServer) -> None:
        dns.on(DOMAIN, "TXT", Rcode("SERVFAIL"))
        code, printed = self.run_cli("--nameserver", dns.nameserver, "--spf", "--dmarc")
        assert code == 2
        assert (printed["phase"], printed["reason"]) == ("policy", "servfail")
        assert "spf" not in printed
        assert printed["dmarc"]["valid"] is True

    def test_an_unconfirmed_ptr_is_reported_per_address(self, dns: ScriptedDnsServer) -> None:
        dns.on(PTR_NAME, "PTR", Rcode("NXDOMAIN"))
        code, printed = self.run_cli("--nameserver", dns.nameserver, "--reverse-dns", "require")
        assert code == 2
        assert (printed["phase"], printed["reason"]) == ("reverse", "reverse_dns")
        assert printed["mx"][0]["reverse"] == [
            {
                "address": ADDRESS,
                "names": [],
                "confirmed": False,
                "error": f"no PTR record ({PTR_NAME}: no such domain (NXDOMAIN))",
            }
        ]
