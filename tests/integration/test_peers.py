"""Pins the real-peer harness itself: Postfix ports and TLS, NSD answers, snmptrapd logging, base MIBs."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.peers import zone
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer, read_smtp_greeting
from tests.peers.snmptrapd import TrapReceiver
from tests.support.ports import tcp_port_open


def _verifying_context(postfix: PostfixServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(postfix.ca_file))


def _resolver(dns_server: NsdServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)  # ignore /etc/resolv.conf
    resolver.nameservers = [dns_server.host]
    resolver.port = dns_server.port
    resolver.lifetime = 3.0
    return resolver


# -- Postfix ---------------------------------------------------------------------------


def test_postfix_plain_and_submission_ports_greet_220_as_mail_test_over_plain_tcp(
    postfix: PostfixServer,
) -> None:
    for port in (postfix.plain_port, postfix.submission_port):
        greeting = read_smtp_greeting(port, host=postfix.host)
        assert greeting.startswith("220 mail.test ESMTP"), (port, greeting)


def test_postfix_implicit_port_sends_nothing_before_a_tls_handshake(postfix: PostfixServer) -> None:
    # implicit TLS: a plain client waiting for a greeting gets none
    with (
        socket.create_connection((postfix.host, postfix.implicit_port), timeout=0.5) as sock,
        pytest.raises(TimeoutError),
    ):
        sock.recv(100)


def test_postfix_implicit_port_greets_220_after_tls_verified_against_ca_file_as_mail_test(
    postfix: PostfixServer,
) -> None:
    context = _verifying_context(postfix)
    with (
        socket.create_connection((postfix.host, postfix.implicit_port), timeout=3.0) as raw,
        context.wrap_socket(raw, server_hostname=postfix.servername) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.recv(4096).startswith(b"220 mail.test ESMTP")


def test_postfix_implicit_port_fails_verification_for_a_name_not_in_the_certificate(
    postfix: PostfixServer,
) -> None:
    context = _verifying_context(postfix)
    with (
        socket.create_connection((postfix.host, postfix.implicit_port), timeout=3.0) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="other.test")


def test_postfix_plain_port_offers_starttls_and_upgrades_verified_for_127_0_0_1(
    postfix: PostfixServer,
) -> None:
    with smtplib.SMTP(postfix.host, postfix.plain_port, timeout=3.0) as client:
        client.ehlo("probe.test")
        assert client.has_extn("starttls")
        # smtplib verifies the certificate against the host it connected to: the IP SAN
        code, _ = client.starttls(context=_verifying_context(postfix))
        assert code == 220
        client.ehlo("probe.test")
        assert not client.has_extn("starttls")


def test_postfix_submission_port_refuses_mail_before_starttls(postfix: PostfixServer) -> None:
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=3.0) as client:
        client.ehlo("probe.test")
        assert client.has_extn("starttls")
        code, message = client.mail("probe@good.test")
        assert code == 530, message


def test_postfix_pause_closes_all_ports_and_resume_reopens_the_same_ports(postfix: PostfixServer) -> None:
    ports = postfix.ports
    postfix.pause()
    try:
        assert not postfix.running()
        assert not any(tcp_port_open(port) for port in ports)
    finally:
        postfix.resume()
    assert postfix.ports == ports
    assert read_smtp_greeting(postfix.plain_port).startswith("220 ")


# -- NSD -------------------------------------------------------------------------------


def test_nsd_answers_mx_for_good_test_in_preference_order(dns_server: NsdServer) -> None:
    answer = _resolver(dns_server).resolve(zone.GOOD_DOMAIN, "MX")
    records = sorted((rr.preference, rr.exchange.to_text()) for rr in answer)
    assert tuple(records) == zone.GOOD_MX
    assert answer.response.flags & dns.flags.AA  # authoritative, not recursed


def test_nsd_answers_nxdomain_for_a_missing_name(dns_server: NsdServer) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        _resolver(dns_server).resolve(zone.MISSING_DOMAIN, "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        _resolver(dns_server).resolve(zone.DANGLING_MX_HOST, "A")


def test_nsd_serves_the_standard_zone_records(dns_server: NsdServer) -> None:
    resolver = _resolver(dns_server)
    assert [rr.to_text() for rr in resolver.resolve(zone.NULLMX_DOMAIN, "MX")] == ["0 ."]
    assert [rr.to_text() for rr in resolver.resolve(zone.IMPLICIT_DOMAIN, "A")] == [zone.LOOPBACK_V4]
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve(zone.IMPLICIT_DOMAIN, "MX")
    assert [rr.to_text() for rr in resolver.resolve(zone.GOOD_MX2, "AAAA")] == [zone.LOOPBACK_V6]
    assert [rr.to_text() for rr in resolver.resolve(zone.MAIL_HOST, "A")] == [zone.LOOPBACK_V4]
    with pytest.raises(dns.resolver.NoAnswer):  # exists (TXT) but has no address
        resolver.resolve(zone.NOADDR_MX_HOST, "A")


def test_nsd_answers_over_tcp_too(dns_server: NsdServer) -> None:
    query = dns.message.make_query(zone.GOOD_DOMAIN, dns.rdatatype.MX)
    reply = dns.query.tcp(query, dns_server.host, port=dns_server.port, timeout=3.0)
    assert reply.rcode() == dns.rcode.NOERROR
    assert len(reply.answer[0]) == len(zone.GOOD_MX)


def test_nsd_does_not_rate_limit_a_burst_of_queries(dns_server: NsdServer) -> None:
    # With Debian's default RRL (200 qps per /24) the first truncated answer came after
    # about 400 queries (~1 s) here; 1.5 s of back-to-back queries crosses that.
    query = dns.message.make_query(zone.GOOD_DOMAIN, dns.rdatatype.MX)
    end = time.monotonic() + 1.5
    count = 0
    while time.monotonic() < end and count < 3000:
        reply = dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=2.0)
        assert not reply.flags & dns.flags.TC, f"truncated after {count} queries"
        assert len(reply.answer) == 1
        count += 1


# -- snmptrapd -------------------------------------------------------------------------


def test_snmptrapd_logs_a_v2c_trap_sent_with_the_snmptrap_cli(trap_receiver: TrapReceiver) -> None:
    subprocess.run(
        ["snmptrap", "-v", "2c", "-c", "public", "-m", "", trap_receiver.address, "",
         "1.3.6.1.4.1.32473.0.1", "1.3.6.1.4.1.32473.1.1", "s", "harness check"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    line = trap_receiver.wait_for(r"OID: \.1\.3\.6\.1\.4\.1\.32473\.0\.1\b", timeout=5.0)
    assert line.startswith("TRAP2, SNMP v2c, community public ")
    assert '.1.3.6.1.4.1.32473.1.1 = STRING: "harness check"' in line
    assert trap_receiver.notifications() == [line]


# -- base MIBs -------------------------------------------------------------------------


def test_base_mib_dir_holds_the_snmpv2_base_modules(base_mibs: Path) -> None:
    for module in ("SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF", "SNMPv2-MIB", "SNMP-FRAMEWORK-MIB"):
        assert (base_mibs / f"{module}.mib").is_file(), module
