"""RFC 7208 check_host() of the spoof test (is the agent's own address authorised?) through a scripted DNS
server: mechanisms, qualifiers, include and redirect, macros, and the limits that make a permerror."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from monitor.config.schema import DnsConfig
from monitor.probes import build_resolver
from monitor.probes.spf_eval import SpfResult, SpfVerdict, check_host
from tests.fakes.dns_server import Rcode, ScriptedDnsServer

DOMAIN = "example.test"


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    with ScriptedDnsServer() as server:
        yield server


def spf(dns: ScriptedDnsServer, record: str | None, ip: str = "192.0.2.10", domain: str = DOMAIN) -> SpfVerdict:
    if record is not None:
        # one TXT record of several strings when longer than a string may be (RFC 7208 3.3: joined)
        dns.records(domain, "TXT", " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200)))

    async def evaluate() -> SpfVerdict:
        resolver = build_resolver(DnsConfig(nameservers=[dns.nameserver], timeout=1.0))
        return await check_host(resolver, ip, domain, f"someone@{domain}")

    return asyncio.run(evaluate())


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", SpfResult.PASS),
        ("v=spf1 -ip4:192.0.2.10 +all", SpfResult.FAIL),
        ("v=spf1 ip4:198.51.100.1 -all", SpfResult.FAIL),
        ("v=spf1 ip4:198.51.100.1 ~all", SpfResult.SOFTFAIL),
        ("v=spf1 ip4:198.51.100.1 ?all", SpfResult.NEUTRAL),
        ("v=spf1 ip4:198.51.100.1", SpfResult.NEUTRAL),
        ("v=spf1 ip6:2001:db8::/32 -all", SpfResult.FAIL),  # an IPv4 client never matches ip6
        ("v=spf1 ip4:not-an-address -all", SpfResult.PERMERROR),
        ("v=spf1 frobnicate:x -all", SpfResult.PERMERROR),
        ("v=spf1 ip4:198.51.100.1 exp=explain.example.test unknown=x -all", SpfResult.FAIL),
    ],
)
def test_mechanisms_and_qualifiers(dns: ScriptedDnsServer, record: str, expected: SpfResult) -> None:
    assert spf(dns, record).result is expected


def test_ipv6_client(dns: ScriptedDnsServer) -> None:
    assert spf(dns, "v=spf1 ip6:2001:db8::/32 -all", ip="2001:db8::25").result is SpfResult.PASS


def test_no_record_is_none_and_two_records_are_a_permerror(dns: ScriptedDnsServer) -> None:
    dns.records(DOMAIN, "TXT", '"google-site-verification=abc"')
    assert spf(dns, None).result is SpfResult.NONE
    dns.records(DOMAIN, "TXT", '"v=spf1 -all"', '"v=spf1 +all"')
    assert spf(dns, None).result is SpfResult.PERMERROR


def test_a_servfail_is_a_temperror(dns: ScriptedDnsServer) -> None:
    dns.on(DOMAIN, "TXT", Rcode("SERVFAIL"))
    assert spf(dns, None).result is SpfResult.TEMPERROR


def test_include_passes_only_on_the_included_pass(dns: ScriptedDnsServer) -> None:
    dns.records("_spf.example.test", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    assert spf(dns, "v=spf1 include:_spf.example.test -all").result is SpfResult.PASS
    assert spf(dns, "v=spf1 include:_spf.example.test ~all", ip="198.51.100.1").result is SpfResult.SOFTFAIL
    assert spf(dns, "v=spf1 include:missing.example.test -all").result is SpfResult.PERMERROR


def test_redirect_takes_the_target_result(dns: ScriptedDnsServer) -> None:
    dns.records("_spf.example.test", "TXT", '"v=spf1 ip4:192.0.2.10 -all"')
    assert spf(dns, "v=spf1 redirect=_spf.example.test").result is SpfResult.PASS
    assert spf(dns, "v=spf1 redirect=_spf.example.test", ip="198.51.100.1").result is SpfResult.FAIL


def test_an_include_loop_is_a_permerror(dns: ScriptedDnsServer) -> None:
    dns.records("a.example.test", "TXT", '"v=spf1 include:b.example.test -all"')
    dns.records("b.example.test", "TXT", '"v=spf1 include:a.example.test -all"')
    verdict = spf(dns, "v=spf1 include:a.example.test -all")
    assert verdict.result is SpfResult.PERMERROR
    assert "loop" in verdict.why


def test_more_than_ten_lookups_is_a_permerror(dns: ScriptedDnsServer) -> None:
    for i in range(11):
        dns.records(f"i{i}.example.test", "TXT", '"v=spf1 ip4:198.51.100.1"')
    record = "v=spf1 " + " ".join(f"include:i{i}.example.test" for i in range(11)) + " -all"
    verdict = spf(dns, record)
    assert verdict.result is SpfResult.PERMERROR
    assert "more than 10" in verdict.why
    ten = "v=spf1 " + " ".join(f"include:i{i}.example.test" for i in range(10)) + " -all"
    assert spf(dns, ten).result is SpfResult.FAIL


def test_more_than_two_void_lookups_is_a_permerror(dns: ScriptedDnsServer) -> None:
    voids = " ".join(f"a:void{i}.example.test" for i in range(3))
    verdict = spf(dns, f"v=spf1 {voids} -all")
    assert verdict.result is SpfResult.PERMERROR
    assert "void" in verdict.why
    two = " ".join(f"a:void{i}.example.test" for i in range(2))
    assert spf(dns, f"v=spf1 {two} -all").result is SpfResult.FAIL


def test_a_and_mx_with_prefixes(dns: ScriptedDnsServer) -> None:
    dns.records("mail.example.test", "A", "192.0.2.200")
    dns.records(DOMAIN, "MX", "10 mail.example.test.")
    assert spf(dns, "v=spf1 a:mail.example.test -all").result is SpfResult.FAIL
    assert spf(dns, "v=spf1 a:mail.example.test/24 -all").result is SpfResult.PASS
    assert spf(dns, "v=spf1 mx/24 -all").result is SpfResult.PASS
    assert spf(dns, "v=spf1 mx -all").result is SpfResult.FAIL


def test_exists_expands_macros(dns: ScriptedDnsServer) -> None:
    dns.records("10.2.0.192.allow.example.test", "A", "127.0.0.2")
    assert spf(dns, "v=spf1 exists:%{ir}.allow.%{d} -all").result is SpfResult.PASS
    assert spf(dns, "v=spf1 exists:%{ir}.allow.%{d} -all", ip="192.0.2.11").result is SpfResult.FAIL
    assert spf(dns, "v=spf1 exists:%{z} -all").result is SpfResult.PERMERROR
