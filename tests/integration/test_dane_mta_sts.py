"""DANE and MTA-STS against real peers: TLSA from NSD matched to Postfix's STARTTLS chain, policies over real HTTPS."""

from __future__ import annotations

import _ssl  # ENCODING_DER lives here only
import asyncio
import hashlib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.flags
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.model.facts import MtaStsPolicyFacts
from monitor.model.results import MxResult, Phase, Reason
from monitor.probes import ProbeEnv, build_resolver, mx
from monitor.probes.dane import Tlsa, lookup_tlsa, verify
from monitor.probes.mta_sts import StsPolicy, check_exchanges, fetch_policy, lookup_txt
from tests.fakes.dns_server import Rcode, ScriptedDnsServer
from tests.peers import zone
from tests.peers.https import POLICY_PATH, HttpsServer, silent_listener
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.support.ports import HOST, free_tcp_port

DANE_ORIGIN = "dane.test."
MAX_REPLY = 65536


def resolver_for(port: int, timeout: float = 3.0) -> dns.asyncresolver.Resolver:
    return build_resolver(DnsConfig(nameservers=[f"{HOST}:{port}"], timeout=timeout))


# -- Postfix's certificate, from a real STARTTLS handshake ------------------------------


def _reply(sock: socket.socket) -> bytes:
    """One (multi-line) SMTP reply, bounded."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
        if len(data) > MAX_REPLY:
            raise ValueError("SMTP reply too long")
        lines = data.split(b"\r\n")
        if data.endswith(b"\r\n") and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def starttls_chain(postfix: PostfixServer) -> list[bytes]:
    """The DER chain Postfix presents after STARTTLS on its plain port, leaf first."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # DANE decides, not the PKIX store
    with socket.create_connection((postfix.host, postfix.plain_port), timeout=5.0) as raw:
        _reply(raw)
        raw.sendall(b"EHLO client.test\r\n")
        assert b"STARTTLS" in _reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        assert _reply(raw).startswith(b"220")
        with context.wrap_socket(raw, server_hostname=postfix.servername) as tls:
            # get_unverified_chain() is public from Python 3.13 only
            sslobj: Any = getattr(tls, "_sslobj", tls)
            chain = [cert.public_bytes(_ssl.ENCODING_DER) for cert in sslobj.get_unverified_chain()]
            leaf = tls.getpeercert(binary_form=True)
            tls.sendall(b"QUIT\r\n")
    assert chain
    assert chain[0] == leaf
    return chain


@dataclass(frozen=True)
class DaneZone:
    """The test-local NSD serving dane.test, and the TLSA records it publishes."""

    server: NsdServer
    ee_spki: Tlsa  # 3 1 1 of Postfix's key, at _25._tcp.mx.dane.test
    pkix: Tlsa  # 0 0 1 of Postfix's certificate (unusable for SMTP), same name
    ee_port: Tlsa  # 3 0 1 at _<plain_port>._tcp.mx.dane.test
    wrong: Tlsa  # 3 1 1 of another key, at _25._tcp.wrong.dane.test
    ta: Tlsa  # 2 0 1 of the self-signed certificate, at _25._tcp.ta.dane.test


def _dane_zone_text(records: dict[str, list[Tlsa]]) -> str:
    lines = [
        f"$ORIGIN {DANE_ORIGIN}",
        "$TTL 300",
        f"@ IN SOA ns.{DANE_ORIGIN} hostmaster.{DANE_ORIGIN} 1 3600 600 86400 300",
        f"@ IN NS ns.{DANE_ORIGIN}",
        "ns IN A 127.0.0.1",
        "mx IN A 127.0.0.1",
        "wrong IN A 127.0.0.1",
        "@ IN MX 10 mx",  # dane.test: its exchange presents the certificate its TLSA names
        "badcert IN MX 10 wrong",  # badcert.dane.test: TLSA of another key
        # cname.dane.test: its exchange is an alias of wrong.dane.test and has the right TLSA itself;
        # NSD sets no AD, so the alias is insecure and only the original name's TLSA applies (RFC 7672 2.2.3)
        "cname IN MX 10 alias",
        "alias IN CNAME wrong",
        # cnamenotlsa.dane.test: an alias of mx.dane.test without TLSA of its own: mx's are not used
        "cnamenotlsa IN MX 10 alias2",
        "alias2 IN CNAME mx",
        '_25._tcp.notlsa IN TXT "a name without TLSA"',
    ]
    for owner, tlsas in records.items():
        lines += [f"{owner} IN TLSA {t}" for t in tlsas]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dane_zone(tmp_path_factory: pytest.TempPathFactory, postfix: PostfixServer) -> Iterator[DaneZone]:
    """dane.test built at run time from the session Postfix's certificate (self-signed: leaf == CA)."""
    cert_der = x509.load_pem_x509_certificate(Path(postfix.ca_file).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    spki = (
        x509.load_der_x509_certificate(cert_der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cert_sha256 = hashlib.sha256(cert_der).digest()
    ee_spki, pkix = Tlsa(3, 1, 1, hashlib.sha256(spki).digest()), Tlsa(0, 0, 1, cert_sha256)
    ee_port, ta = Tlsa(3, 0, 1, cert_sha256), Tlsa(2, 0, 1, cert_sha256)
    wrong = Tlsa(3, 1, 1, hashlib.sha256(b"some other key").digest())
    text = _dane_zone_text(
        {
            "_25._tcp.mx": [ee_spki, pkix],
            f"_{postfix.plain_port}._tcp.mx": [ee_port],
            "_25._tcp.wrong": [wrong],
            f"_{postfix.plain_port}._tcp.wrong": [wrong],
            "_25._tcp.ta": [ta],
            f"_{postfix.plain_port}._tcp.alias": [ee_port],
        }
    )
    server = NsdServer(tmp_path_factory.mktemp("dane-nsd"), {DANE_ORIGIN: text})
    try:
        server.start()
        yield DaneZone(server, ee_spki=ee_spki, pkix=pkix, ee_port=ee_port, wrong=wrong, ta=ta)
    finally:
        server.close()


@pytest.fixture(scope="module")
def postfix_chain(postfix: PostfixServer) -> list[bytes]:
    return starttls_chain(postfix)


class TestLookupTlsa:
    def test_returns_the_published_records_unauthenticated_from_an_authoritative_server(
        self, dane_zone: DaneZone
    ) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), "mx.dane.test"))
        assert found.name == "_25._tcp.mx.dane.test"
        assert sorted(found.records, key=str) == sorted([dane_zone.ee_spki, dane_zone.pkix], key=str)
        assert (found.error, found.reason) == ("", None)
        assert not found.authenticated  # NSD does not validate: it never sets AD

    def test_the_port_selects_the_owner_name(self, dane_zone: DaneZone, postfix: PostfixServer) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), "mx.dane.test.", postfix.plain_port))
        assert found.records == (dane_zone.ee_port,)

    @pytest.mark.parametrize("exchange", ["notlsa.dane.test", "absent.dane.test"], ids=["nodata", "nxdomain"])
    def test_nodata_and_nxdomain_mean_no_tlsa_not_an_error(self, dane_zone: DaneZone, exchange: str) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), exchange))
        assert (found.records, found.error, found.reason) == ((), "", None)

    def test_a_refused_query_is_an_error(self, dane_zone: DaneZone) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), "mx.elsewhere.example"))
        assert found.records == ()
        assert found.reason is Reason.SERVFAIL
        assert "_25._tcp.mx.elsewhere.example" in found.error

    def test_a_silent_server_is_a_timeout_error(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind((HOST, 0))
            started = time.monotonic()
            found = asyncio.run(lookup_tlsa(resolver_for(silent.getsockname()[1], timeout=0.5), "mx.dane.test"))
        assert found.reason is Reason.TIMEOUT
        assert time.monotonic() - started < 3.0

    def test_asks_with_do_and_reports_the_ad_bit_of_the_answer(self) -> None:
        with ScriptedDnsServer() as responder:
            responder.records("_25._tcp.mx.dane.test", "TLSA", str(AD_RECORD), secure=True)
            resolver = resolver_for(responder.port)
            settings = (resolver.edns, resolver.ednsflags, resolver.flags)
            found = asyncio.run(lookup_tlsa(resolver, "mx.dane.test"))
            assert found.authenticated
            assert found.records == (AD_RECORD,)
            query = responder.queries[-1].message
            assert query.ednsflags & dns.flags.DO
            assert query.flags & dns.flags.AD
            assert (resolver.edns, resolver.ednsflags, resolver.flags) == settings  # the shared resolver is untouched

    def test_reports_the_ad_bit_of_a_denial(self) -> None:
        with ScriptedDnsServer() as responder:
            responder.on("_25._tcp.absent.dane.test", "TLSA", Rcode("NXDOMAIN", secure=True))
            found = asyncio.run(lookup_tlsa(resolver_for(responder.port), "absent.dane.test"))
        assert (found.records, found.error, found.authenticated) == ((), "", True)


AD_RECORD = Tlsa(3, 1, 1, bytes(range(32)))  # what the scripted validating resolver answers


class TestVerifyAgainstPostfix:
    def test_3_1_1_from_dns_matches_the_chain_of_a_real_starttls_handshake(
        self, dane_zone: DaneZone, postfix_chain: list[bytes]
    ) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), "mx.dane.test"))
        outcome = verify(found.records, postfix_chain, names=["mx.dane.test"])
        assert outcome.matched, outcome.detail
        assert outcome.usable == 1  # the 0 0 1 record is PKIX-TA: unusable for SMTP
        assert outcome.matched_record == dane_zone.ee_spki

    def test_a_record_for_another_key_does_not_match(self, dane_zone: DaneZone, postfix_chain: list[bytes]) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), "wrong.dane.test"))
        outcome = verify(found.records, postfix_chain, names=["wrong.dane.test"])
        assert (outcome.matched, outcome.usable) == (False, 1)

    def test_2_0_1_of_the_self_signed_certificate_needs_the_name_in_it(
        self, dane_zone: DaneZone, postfix_chain: list[bytes], postfix: PostfixServer
    ) -> None:
        found = asyncio.run(lookup_tlsa(resolver_for(dane_zone.server.port), "ta.dane.test"))
        assert verify(found.records, postfix_chain, names=[postfix.servername]).matched
        mismatch = verify(found.records, postfix_chain, names=["ta.dane.test"])
        assert not mismatch.matched
        assert "do not match ta.dane.test" in mismatch.detail


# -- MTA-STS ----------------------------------------------------------------------------

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.good.test\r\nmx: *.good.test\r\nmax_age: 604800\r\n"
GOOD = zone.GOOD_DOMAIN.rstrip(".")


@pytest.fixture
def https(tmp_path: Path) -> Iterator[HttpsServer]:
    server = HttpsServer(tmp_path / "https", hostnames=(zone.GOOD_MTA_STS_HOST.rstrip("."),))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def fetch(
    dns_server: NsdServer,
    https: HttpsServer,
    domain: str = GOOD,
    *,
    port: int | None = None,
    ca_file: Path | None = None,
    timeout: float = 5.0,
) -> StsPolicy:
    """fetch_policy through the session NSD, against `https` unless port/ca_file say otherwise."""
    resolver = resolver_for(dns_server.port)
    return asyncio.run(
        fetch_policy(domain, resolver, port=port or https.port, ca_file=ca_file or https.ca_file, timeout=timeout)
    )


class TestLookupTxt:
    def test_good_test_publishes_the_zone_id(self, dns_server: NsdServer) -> None:
        txt = asyncio.run(lookup_txt(resolver_for(dns_server.port), zone.GOOD_DOMAIN))
        assert (txt.ok, txt.id, txt.name) == (True, zone.GOOD_MTA_STS_ID, "_mta-sts.good.test")

    @pytest.mark.parametrize(
        ("domain", "kind"),
        [
            (zone.MULTISTS_DOMAIN, "multiple"),
            (zone.BADSTS_DOMAIN, "malformed"),
            (zone.IMPLICIT_DOMAIN, "absent"),
            ("example.invalid", "dns"),
        ],
        ids=["two-records", "malformed", "nxdomain", "refused"],
    )
    def test_unusable_records_give_no_id_and_say_why(self, dns_server: NsdServer, domain: str, kind: str) -> None:
        txt = asyncio.run(lookup_txt(resolver_for(dns_server.port), domain))
        assert (txt.ok, txt.id, txt.error_kind) == (False, "", kind)
        assert txt.error


class TestFetchPolicy:
    def test_a_good_policy_over_verified_https(self, dns_server: NsdServer, https: HttpsServer) -> None:
        https.serve_policy(POLICY, content_type="text/plain; charset=utf-8")
        policy = fetch(dns_server, https)
        assert (policy.error, policy.error_kind) == ("", "")
        assert (policy.mode, policy.max_age) == ("enforce", 604800)
        assert policy.mx_patterns == ("mx1.good.test", "*.good.test")
        assert policy.verified
        assert policy.http_status == 200
        assert policy.url == f"https://mta-sts.good.test:{https.port}{POLICY_PATH}"
        leaf = x509.load_pem_x509_certificate(https.leaf.cert_chain_pems[0].bytes())
        assert policy.cert_not_after == leaf.not_valid_after_utc
        assert https.requests == [POLICY_PATH]
        assert check_exchanges(policy, [mx for _, mx in zone.GOOD_MX]) == []

    def test_a_certificate_from_another_ca_fails_tls_verify(
        self, dns_server: NsdServer, https: HttpsServer, tmp_path: Path
    ) -> None:
        https.serve_policy(POLICY)
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        policy = fetch(dns_server, https, ca_file=other_ca)
        assert (policy.error_kind, policy.verified, policy.mode) == ("tls_verify", False, "")
        assert "certificate verification failed: unable to get local issuer certificate" in policy.error
        assert https.requests == []

    def test_a_certificate_for_another_name_fails_tls_verify(self, dns_server: NsdServer, tmp_path: Path) -> None:
        with HttpsServer(tmp_path / "other", hostnames=("other.test",)) as other:
            other.serve_policy(POLICY)
            policy = fetch(dns_server, other)
        assert (policy.error_kind, policy.verified) == ("tls_verify", False)
        assert "Hostname mismatch" in policy.error

    def test_a_redirect_is_not_followed(self, dns_server: NsdServer, https: HttpsServer) -> None:
        elsewhere = f"https://mta-sts.good.test:{https.port}/elsewhere"
        https.serve_policy("", status=301, headers=(("Location", elsewhere),))
        https.serve("/elsewhere", POLICY)
        policy = fetch(dns_server, https)
        assert (policy.error_kind, policy.http_status, policy.mode) == ("http_status", 301, "")
        assert "redirect" in policy.error
        assert "/elsewhere" in policy.error
        assert https.requests == [POLICY_PATH]
        assert policy.verified  # TLS was fine; the response was not a policy

    def test_a_missing_policy_is_an_http_status_error(self, dns_server: NsdServer, https: HttpsServer) -> None:
        policy = fetch(dns_server, https)
        assert (policy.error_kind, policy.http_status) == ("http_status", 404)

    def test_another_content_type_is_refused(self, dns_server: NsdServer, https: HttpsServer) -> None:
        https.serve_policy(POLICY, content_type="text/html")
        policy = fetch(dns_server, https)
        assert (policy.error_kind, policy.mode) == ("content_type", "")
        assert "text/html" in policy.error

    def test_an_invalid_policy_is_a_parse_error(self, dns_server: NsdServer, https: HttpsServer) -> None:
        https.serve_policy(POLICY.replace("enforce", "strict"))
        policy = fetch(dns_server, https)
        assert (policy.error_kind, policy.verified) == ("parse", True)
        assert "invalid mode 'strict'" in policy.error

    def test_an_oversized_body_is_refused_unread(self, dns_server: NsdServer, https: HttpsServer) -> None:
        https.serve_policy(POLICY + "x-pad: " + "a" * 70000 + "\n")
        policy = fetch(dns_server, https)
        assert policy.error_kind == "parse"
        assert "larger than 65536 bytes" in policy.error

    def test_a_policy_host_without_address_is_a_dns_error(self, dns_server: NsdServer, https: HttpsServer) -> None:
        policy = fetch(dns_server, https, domain=zone.IMPLICIT_DOMAIN)
        assert policy.error_kind == "dns"
        assert "mta-sts.implicit.test" in policy.error

    def test_nothing_listening_is_a_connect_error(self, dns_server: NsdServer, https: HttpsServer) -> None:
        policy = fetch(dns_server, https, port=free_tcp_port())
        assert (policy.error_kind, policy.verified) == ("connect", False)

    def test_a_server_that_never_answers_times_out(self, dns_server: NsdServer, https: HttpsServer) -> None:
        with silent_listener() as silent:
            started = time.monotonic()
            policy = fetch(dns_server, https, port=silent.getsockname()[1], timeout=0.5)
        assert policy.error_kind == "timeout"
        assert time.monotonic() - started < 3.0


def mx_check(dns_port: int, **settings: Any) -> MxResult:
    """A full MX check (monitor.probes.mx.run) through the DNS server at `dns_port`."""
    config = MxCheckConfig.model_validate({"name": "t", "timeout": 8, **settings})
    env = ProbeEnv(resolver=resolver_for(dns_port))
    return asyncio.run(mx.run(config, env))


class TestMxCheckWithDane:
    def settings(self, postfix: PostfixServer, domain: str) -> dict[str, Any]:
        # verify: false: MTAs do not check PKIX on port 25; DANE is what authenticates the server
        return {
            "domain": domain,
            "probe_hosts": True,
            "port": postfix.plain_port,
            "tls": "starttls",
            "verify": False,
            "dane": "verify",
        }

    def test_matching_tlsa_passes_and_reports_the_record(self, dane_zone: DaneZone, postfix: PostfixServer) -> None:
        result = mx_check(dane_zone.server.port, **self.settings(postfix, "dane.test"))
        assert result.ok, result.error
        facts = result.records[0].dane
        assert facts is not None
        assert facts.matched is True
        assert facts.matched_record == str(dane_zone.ee_port)
        assert "dane" in result.timings

    def test_tlsa_of_another_key_fails_with_dane_mismatch(self, dane_zone: DaneZone, postfix: PostfixServer) -> None:
        result = mx_check(dane_zone.server.port, **self.settings(postfix, "badcert.dane.test"))
        assert (result.phase, result.reason) == (Phase.DANE, Reason.DANE_MISMATCH)
        assert result.records[0].dane is not None
        assert result.records[0].dane.matched is False
        assert "wrong.dane.test" in result.error

    def test_report_mode_records_the_mismatch_without_failing(
        self, dane_zone: DaneZone, postfix: PostfixServer
    ) -> None:
        result = mx_check(dane_zone.server.port, **{**self.settings(postfix, "badcert.dane.test"), "dane": "report"})
        assert result.ok, result.error
        assert result.records[0].dane is not None
        assert result.records[0].dane.matched is False

    def test_an_insecure_alias_uses_the_tlsa_of_the_original_name(
        self, dane_zone: DaneZone, postfix: PostfixServer
    ) -> None:
        result = mx_check(dane_zone.server.port, **self.settings(postfix, "cname.dane.test"))
        assert result.ok, result.error
        facts = result.records[0].dane
        assert facts is not None
        assert facts.tlsa_name == f"_{postfix.plain_port}._tcp.alias.dane.test"
        assert (facts.cname_target, facts.cname_secure) == ("wrong.dane.test", False)
        assert (facts.matched, facts.matched_record) == (True, str(dane_zone.ee_port))
        assert facts.reference_names == ("alias.dane.test",)

    def test_an_insecure_alias_without_tlsa_of_its_own_does_not_use_the_targets(
        self, dane_zone: DaneZone, postfix: PostfixServer
    ) -> None:
        result = mx_check(dane_zone.server.port, **self.settings(postfix, "cnamenotlsa.dane.test"))
        assert result.ok, result.error
        facts = result.records[0].dane
        assert facts is not None
        assert facts.tlsa_name == f"_{postfix.plain_port}._tcp.alias2.dane.test"
        assert (facts.records, facts.matched, facts.cname_target) == ((), None, "mx.dane.test")

    def test_dane_needs_starttls_host_probes(self) -> None:
        with pytest.raises(ValueError, match="dane needs probe_hosts"):
            MxCheckConfig(name="t", domain="dane.test", dane="verify")


def fetched_policy(result: MxResult) -> MtaStsPolicyFacts:
    """What the MX check's policy fetch found (it follows a valid TXT record)."""
    assert result.mta_sts is not None
    assert result.mta_sts.policy is not None
    return result.mta_sts.policy


class TestMxCheckWithMtaSts:
    def settings(self, https: HttpsServer, mode: str = "verify") -> dict[str, Any]:
        return {"domain": GOOD, "mta_sts": mode, "mta_sts_port": https.port, "mta_sts_ca_file": str(https.ca_file)}

    def test_enforced_policy_covering_every_exchange_passes(self, dns_server: NsdServer, https: HttpsServer) -> None:
        https.serve_policy(POLICY)
        result = mx_check(dns_server.port, **self.settings(https))
        assert result.ok, result.error
        policy = fetched_policy(result)
        assert (policy.mode, policy.max_age, policy.uncovered, policy.verified) == ("enforce", 604800, (), True)

    def test_enforced_policy_not_covering_an_exchange_fails(self, dns_server: NsdServer, https: HttpsServer) -> None:
        https.serve_policy("version: STSv1\nmode: enforce\nmx: mx1.good.test\nmax_age: 86400\n")
        result = mx_check(dns_server.port, **self.settings(https))
        assert (result.phase, result.reason) == (Phase.MTA_STS, Reason.MTA_STS_MISMATCH)
        assert "mx2.good.test" in result.error

    def test_testing_policy_reports_uncovered_exchanges_without_failing(
        self, dns_server: NsdServer, https: HttpsServer
    ) -> None:
        https.serve_policy("version: STSv1\nmode: testing\nmx: mx1.good.test\nmax_age: 86400\n")
        result = mx_check(dns_server.port, **self.settings(https))
        assert result.ok, result.error
        assert fetched_policy(result).uncovered == ("mx2.good.test",)

    def test_policy_host_with_untrusted_certificate_fails(
        self, dns_server: NsdServer, https: HttpsServer, tmp_path: Path
    ) -> None:
        https.serve_policy(POLICY)
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        result = mx_check(dns_server.port, **{**self.settings(https), "mta_sts_ca_file": str(other_ca)})
        assert result.reason is Reason.MTA_STS_MISMATCH
        assert fetched_policy(result).error_kind == "tls_verify"

    def test_domain_without_mta_sts_is_reported_absent_and_passes(
        self, dns_server: NsdServer, https: HttpsServer
    ) -> None:
        result = mx_check(dns_server.port, **{**self.settings(https), "domain": "implicit.test"})
        assert result.ok, result.error
        assert result.mta_sts is not None
        assert result.mta_sts.present is False
