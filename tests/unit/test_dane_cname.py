"""TLSA owner names of an aliased MX exchange (RFC 7672 2.2.3), through a scripted DNS server and a STARTTLS fake."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.flags as dns_flags
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.model.facts import DaneFacts
from monitor.model.probe_result import result_from_dict
from monitor.model.results import MxResult, Phase, Reason
from monitor.probes import ProbeEnv, build_resolver, mx
from monitor.probes.dane import Tlsa
from tests.fakes import smtp_servers
from tests.fakes.dns_server import Cname, Rcode, Records, ScriptedDnsServer

DOMAIN = "example.test"
EXCHANGE = "mx.example.test"  # the MX target: an alias
TARGET = "smtp.hosting.test"  # what it is an alias of
WRONG = Tlsa(3, 1, 1, hashlib.sha256(b"some other key").digest())
HANG_GUARD = 30.0


@dataclass(frozen=True)
class Server:
    """An intermediate CA's DANE-TA record, and leaf certificates it issued for chosen names."""

    ta: Tlsa  # 2 0 1 of the intermediate, which the server presents
    contexts: dict[str, ssl.SSLContext]  # leaf name -> server context presenting leaf + intermediate


@pytest.fixture(scope="module")
def pki() -> Server:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    der = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes()).public_bytes(serialization.Encoding.DER)
    contexts = {}
    for name in (EXCHANGE, TARGET, "unrelated.test", "mx.plain.test"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        intermediate.issue_cert(name).configure_cert(context)
        contexts[name] = context
    return Server(ta=Tlsa(2, 0, 1, hashlib.sha256(der).digest()), contexts=contexts)


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    """example.test's MX is an alias of smtp.hosting.test (127.0.0.1); every answer DNSSEC-secure."""
    with ScriptedDnsServer() as server:
        server.records(DOMAIN, "MX", f"10 {EXCHANGE}.", secure=True)
        server.on(EXCHANGE, "CNAME", Cname(f"{TARGET}.", secure=True))
        server.records(TARGET, "A", "127.0.0.1", secure=True)
        yield server


def tlsa_owner(name: str, port: int) -> str:
    return f"_{port}._tcp.{name}"


def check(dns: ScriptedDnsServer, context: ssl.SSLContext, tlsa: dict[str, Any], **settings: Any) -> MxResult:
    """A DANE MX check against a healthy STARTTLS fake; `tlsa` maps owner host -> behaviour for its TLSA."""

    async def scenario() -> MxResult:
        async with asyncio.timeout(HANG_GUARD), smtp_servers.healthy_starttls(context) as smtp:
            for host, behaviour in tlsa.items():
                dns.on(tlsa_owner(host, smtp.port), "TLSA", behaviour)
            config = MxCheckConfig.model_validate(
                {
                    "name": "t",
                    "domain": DOMAIN,
                    "timeout": 10,
                    "probe_hosts": True,
                    "port": smtp.port,
                    "tls": "starttls",
                    "verify": False,
                    "dane": "verify",
                    **settings,
                }
            )
            env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[dns.nameserver], timeout=1.0)))
            return await mx.run(config, env)

    result = asyncio.run(scenario())
    assert result_from_dict(result.as_dict()).as_dict() == result.as_dict()
    return result


def dane_facts(result: MxResult) -> DaneFacts:
    (record,) = result.records
    assert record.dane is not None, "no DANE facts"
    return record.dane


def probed_port(result: MxResult) -> int:
    """The port the check's one exchange was probed on (the TLSA owner name carries it)."""
    (record,) = result.records
    assert record.probe is not None, "the exchange was not probed"
    return record.probe.port


def tlsa_queries(dns: ScriptedDnsServer) -> list[str]:
    return [q.qname for q in dns.queries if q.qtype == "TLSA"]


class TestSecureAlias:
    def test_tlsa_at_the_expanded_name_is_used_before_the_original(self, dns: ScriptedDnsServer, pki: Server) -> None:
        tlsa = {TARGET: Records(str(pki.ta), secure=True), EXCHANGE: Records(str(WRONG), secure=True)}
        result = check(dns, pki.contexts[TARGET], tlsa)
        assert result.ok, result.error
        facts = dane_facts(result)
        port = probed_port(result)
        assert facts.tlsa_name == tlsa_owner(TARGET, port)
        assert (facts.cname_target, facts.cname_secure) == (TARGET, True)
        assert (facts.matched, facts.matched_record) == (True, str(pki.ta))
        assert tlsa_queries(dns) == [tlsa_owner(TARGET, port)]  # the original name is not needed

    def test_the_address_lookups_ask_for_the_ad_bit(self, dns: ScriptedDnsServer, pki: Server) -> None:
        check(dns, pki.contexts[TARGET], {TARGET: Records(str(pki.ta), secure=True)})
        queries = dns.seen(EXCHANGE, "A")
        assert queries
        assert all(q.message.ednsflags & dns_flags.DO for q in queries)

    def test_dane_ta_accepts_a_certificate_for_the_original_name(self, dns: ScriptedDnsServer, pki: Server) -> None:
        result = check(dns, pki.contexts[EXCHANGE], {TARGET: Records(str(pki.ta), secure=True)})
        assert result.ok, result.error
        assert dane_facts(result).reference_names == (TARGET, EXCHANGE)

    def test_dane_ta_still_refuses_a_certificate_for_another_name(self, dns: ScriptedDnsServer, pki: Server) -> None:
        result = check(dns, pki.contexts["unrelated.test"], {TARGET: Records(str(pki.ta), secure=True)})
        assert (result.phase, result.reason) == (Phase.DANE, Reason.DANE_MISMATCH)
        assert f"do not match {TARGET}, {EXCHANGE}" in result.error

    @pytest.mark.parametrize(
        "denial", [Rcode("NXDOMAIN", secure=True), Rcode("NOERROR", secure=True)], ids=["nxdomain", "nodata"]
    )
    def test_no_tlsa_at_the_expanded_name_falls_back_to_the_original(
        self, dns: ScriptedDnsServer, pki: Server, denial: Rcode
    ) -> None:
        result = check(dns, pki.contexts[TARGET], {TARGET: denial, EXCHANGE: Records(str(pki.ta), secure=True)})
        assert result.ok, result.error
        port = probed_port(result)
        facts = dane_facts(result)
        assert facts.tlsa_name == tlsa_owner(EXCHANGE, port)
        assert (facts.cname_target, facts.cname_secure, facts.matched) == (TARGET, True, True)
        assert tlsa_queries(dns) == [tlsa_owner(TARGET, port), tlsa_owner(EXCHANGE, port)]

    def test_no_tlsa_at_either_name_means_no_dane(self, dns: ScriptedDnsServer, pki: Server) -> None:
        result = check(dns, pki.contexts[TARGET], {})
        assert result.ok, result.error
        facts = dane_facts(result)
        assert (facts.records, facts.matched) == ((), None)
        assert facts.tlsa_name.endswith(EXCHANGE)

    def test_a_failed_lookup_at_the_expanded_name_does_not_fall_back(self, dns: ScriptedDnsServer, pki: Server) -> None:
        tlsa = {TARGET: Rcode("SERVFAIL"), EXCHANGE: Records(str(pki.ta), secure=True)}
        result = check(dns, pki.contexts[TARGET], tlsa)
        assert (result.phase, result.reason) == (Phase.DANE, Reason.DANE_MISMATCH)
        port = probed_port(result)
        assert dane_facts(result).tlsa_name == tlsa_owner(TARGET, port)
        assert "TLSA lookup failed" in result.error
        assert tlsa_queries(dns) == [tlsa_owner(TARGET, port)]

    def test_with_dnssec_off_the_alias_cannot_be_secure(self, dns: ScriptedDnsServer, pki: Server) -> None:
        tlsa = {TARGET: Records(str(WRONG), secure=True), EXCHANGE: Records(str(pki.ta), secure=True)}
        result = check(dns, pki.contexts[EXCHANGE], tlsa, dnssec="off")
        assert result.ok, result.error
        facts = dane_facts(result)
        assert (facts.cname_target, facts.cname_secure) == (TARGET, False)
        assert facts.tlsa_name.endswith(EXCHANGE)


class TestInsecureAlias:
    @pytest.fixture
    def insecure(self, dns: ScriptedDnsServer) -> ScriptedDnsServer:
        dns.on(EXCHANGE, "CNAME", Cname(f"{TARGET}.", secure=False))  # the target's A is still secure
        return dns

    def test_tlsa_at_the_original_name_is_used(self, insecure: ScriptedDnsServer, pki: Server) -> None:
        tlsa = {TARGET: Records(str(WRONG), secure=True), EXCHANGE: Records(str(pki.ta), secure=True)}
        result = check(insecure, pki.contexts[EXCHANGE], tlsa)
        assert result.ok, result.error
        port = probed_port(result)
        facts = dane_facts(result)
        assert facts.tlsa_name == tlsa_owner(EXCHANGE, port)
        assert (facts.cname_target, facts.cname_secure) == (TARGET, False)
        assert tlsa_queries(insecure) == [tlsa_owner(EXCHANGE, port)]  # the expanded name is never asked

    def test_dane_ta_accepts_only_the_original_name(self, insecure: ScriptedDnsServer, pki: Server) -> None:
        result = check(insecure, pki.contexts[TARGET], {EXCHANGE: Records(str(pki.ta), secure=True)})
        assert (result.phase, result.reason) == (Phase.DANE, Reason.DANE_MISMATCH)
        assert dane_facts(result).reference_names == (EXCHANGE,)


class TestExchangeWithoutAlias:
    def test_tlsa_at_the_exchange_and_no_alias_facts(self, dns: ScriptedDnsServer, pki: Server) -> None:
        dns.records("plain.test", "MX", "10 mx.plain.test.", secure=True)
        dns.records("mx.plain.test", "A", "127.0.0.1", secure=True)
        tlsa = {"mx.plain.test": Records(str(pki.ta), secure=True)}
        result = check(dns, pki.contexts["mx.plain.test"], tlsa, domain="plain.test")
        assert result.ok, result.error
        facts = dane_facts(result)
        assert (facts.cname_target, facts.cname_secure, facts.reference_names) == ("", None, ("mx.plain.test",))
        assert facts.tlsa_name.endswith("._tcp.mx.plain.test")


class TestSavedResults:
    def test_dane_facts_saved_before_alias_support_load_with_defaults(self) -> None:
        saved = {
            "kind": "mx",
            "domain": DOMAIN,
            "started_at": 0.0,
            "status": "ok",
            "mx": [
                {
                    "preference": 10,
                    "exchange": EXCHANGE,
                    "addresses": ["127.0.0.1"],
                    "dane": {"tlsa_name": f"_25._tcp.{EXCHANGE}", "records": [], "matched": None},
                }
            ],
        }
        restored = result_from_dict(saved)
        assert isinstance(restored, MxResult)
        facts = dane_facts(restored)
        assert facts.tlsa_name == f"_25._tcp.{EXCHANGE}"
        assert (facts.cname_target, facts.cname_secure, facts.reference_names) == ("", None, (EXCHANGE,))
