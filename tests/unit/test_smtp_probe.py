"""monitor.probes.smtp.run against in-process peers: outcome, failed phase, reason and TLS facts."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from monitor.config.schema import DnsConfig, SmtpProbeConfig, TlsMode
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, build_resolver, smtp
from tests.fakes import smtp_servers as fakes
from tests.fakes.smtp_servers import AiosmtpdServer, PeerConnection, ScriptedSmtpServer, Step, Then
from tests.support.certs import SERVER_IP, SERVER_NAME, IssuedCert, Pki

T = TypeVar("T")
HANG_GUARD = 30.0  # seconds: a scenario still running after this has hung
FAST = 5.0  # seconds: bound for outcomes that need no waiting (hang guard, not a speed test)


def run_scenario(coro: Coroutine[Any, Any, T]) -> T:
    """Run one scenario in a fresh event loop; a hang fails the test instead of blocking the run."""

    async def guarded() -> T:
        async with asyncio.timeout(HANG_GUARD):
            return await coro

    return asyncio.run(guarded())


async def probe(port: int, *, tls: TlsMode = "none", timeout: float = 5.0, **options: Any) -> SmtpResult:
    """One probe of 127.0.0.1:`port` with a fixed HELO name and a fresh environment."""
    config = SmtpProbeConfig(
        name="fake", host=SERVER_IP, port=port, tls=tls, timeout=timeout, helo="probe.test", **options
    )
    return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))


@dataclass(frozen=True, slots=True)
class Outcome:
    """A probe result, how long the probe took, and what the fake server saw."""

    result: SmtpResult
    elapsed: float
    connections: list[PeerConnection]

    @property
    def only_connection(self) -> PeerConnection:
        assert len(self.connections) == 1, self.connections
        return self.connections[0]


async def probe_scripted(server: ScriptedSmtpServer, **probe_options: Any) -> Outcome:
    """Probe a scripted server, then wait until the server saw every connection end."""
    async with server:
        started = time.perf_counter()
        result = await probe(server.port, **probe_options)
        elapsed = time.perf_counter() - started
        connections = await server.wait_finished(len(server.connections))
    return Outcome(result=result, elapsed=elapsed, connections=connections)


async def probe_aiosmtpd(server: AiosmtpdServer, **probe_options: Any) -> SmtpResult:
    async with server:
        return await probe(server.port, **probe_options)


def assert_failed(result: SmtpResult, phase: Phase, reason: Reason) -> None:
    assert (result.ok, result.phase, result.reason) == (False, phase, reason), result.error
    assert result.error


class TestPlainEhloAgainstAiosmtpd:
    def test_plain_ehlo_succeeds_with_extensions_parsed(self) -> None:
        server = AiosmtpdServer(data_size_limit=12_345_678)
        result = run_scenario(probe_aiosmtpd(server))
        assert result.ok, result.error
        assert (result.phase, result.reason, result.error, result.reply) == (None, None, "", None)
        assert result.banner.startswith("220 mail.test ")
        assert result.extensions == {"SIZE": "12345678", "8BITMIME": "", "HELP": ""}
        assert result.helo_fallback is False
        assert result.tls is None
        assert (result.address, result.tls_mode) == (SERVER_IP, "none")
        assert set(result.timings) == {"resolve", "connect", "banner", "ehlo", "quit"}
        assert 0 < result.total < FAST
        assert server.handler.ehlo_names == ["probe.test"]

    def test_smtputf8_and_starttls_offers_are_reported_without_tls(self, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=good_cert.server_context(), enable_smtputf8=True)
        result = run_scenario(probe_aiosmtpd(server, tls="none"))
        assert result.ok, result.error
        assert {"SMTPUTF8", "STARTTLS"} <= set(result.extensions)
        assert result.tls is None
        assert server.handler.tls_seen == []


class TestStarttlsAgainstAiosmtpd:
    def test_starttls_succeeds_with_verified_tls_facts(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=good_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert result.ok, result.error
        tls = result.tls
        assert tls is not None
        assert (tls.verified, tls.verify_error) == (True, "")
        seen = server.handler.tls_seen[-1]
        assert (tls.version, tls.cipher) == (seen.version, seen.cipher)
        assert tls.cert is not None
        assert tls.cert.subject == good_cert.subject
        assert "CN=mail.test" in tls.cert.subject
        assert tls.cert.sans == ("DNS:mail.test", "IP:127.0.0.1")
        assert tls.cert.not_after == good_cert.not_after
        assert tls.chain_not_after is not None
        assert tls.chain_not_after <= tls.cert.not_after
        # The extensions are those of the EHLO repeated inside TLS.
        assert "STARTTLS" not in result.extensions
        assert "AUTH" in result.extensions
        assert {"starttls", "tls", "ehlo_tls"} <= set(result.timings)

    def test_reports_the_negotiated_tls12_version_and_cipher(self, pki: Pki, good_cert: IssuedCert) -> None:
        ctx = good_cert.server_context(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        result = run_scenario(
            probe_aiosmtpd(AiosmtpdServer(starttls=ctx), tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME)
        )
        assert result.ok, result.error
        assert result.tls is not None
        assert (result.tls.version, result.tls.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_ip_address_host_verifies_against_the_ip_san(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=good_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="starttls", ca_file=pki.ca_file))
        assert result.ok, result.error
        assert result.tls is not None
        assert result.tls.verified is True

    def test_wrong_hostname_fails_tls_verify_but_reports_the_certificate(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=good_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="starttls", ca_file=pki.ca_file, servername="other.test"))
        assert_failed(result, Phase.TLS, Reason.TLS_VERIFY)
        assert "other.test" in result.error
        assert result.tls is not None
        assert result.tls.verified is False
        assert result.tls.verify_error == result.error
        assert result.tls.cert is not None
        assert result.tls.cert.not_after == good_cert.not_after
        assert result.tls.cert.sans == ("DNS:mail.test", "IP:127.0.0.1")

    def test_expired_certificate_fails_tls_verify_with_certificate_facts(
        self, pki: Pki, expired_cert: IssuedCert
    ) -> None:
        server = AiosmtpdServer(starttls=expired_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert_failed(result, Phase.TLS, Reason.TLS_VERIFY)
        assert "expired" in result.error
        assert result.tls is not None
        assert result.tls.cert is not None
        assert result.tls.cert.not_after == expired_cert.not_after
        assert result.tls.cert.not_after < datetime.datetime.now(datetime.UTC)
        assert result.tls.chain_not_after == expired_cert.not_after

    def test_certificate_from_an_untrusted_ca_fails_tls_verify(self, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=good_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="starttls", servername=SERVER_NAME))
        assert_failed(result, Phase.TLS, Reason.TLS_VERIFY)
        assert result.tls is not None
        assert result.tls.cert is not None
        assert result.tls.cert.subject == good_cert.subject

    def test_verify_disabled_succeeds_unverified_with_certificate_facts(self, expired_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=expired_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="starttls", verify=False, servername="other.test"))
        assert result.ok, result.error
        assert result.tls is not None
        assert (result.tls.verified, result.tls.verify_error) == (False, "verification disabled")
        assert result.tls.cert is not None
        assert result.tls.cert.not_after == expired_cert.not_after


class TestImplicitTlsAgainstAiosmtpd:
    def test_implicit_tls_succeeds_with_verified_tls_facts(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(implicit_tls=good_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="implicit", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert result.ok, result.error
        assert result.tls_mode == "implicit"
        tls = result.tls
        assert tls is not None
        assert tls.verified is True
        seen = server.handler.tls_seen[-1]
        assert (tls.version, tls.cipher) == (seen.version, seen.cipher)
        assert tls.cert is not None
        assert tls.cert.not_after == good_cert.not_after
        assert result.banner.startswith("220 mail.test ")
        assert "STARTTLS" not in result.extensions
        assert set(result.timings) == {"resolve", "connect", "tls", "banner", "ehlo", "quit"}

    def test_implicit_tls_wrong_hostname_fails_tls_verify_with_certificate_facts(
        self, pki: Pki, good_cert: IssuedCert
    ) -> None:
        server = AiosmtpdServer(implicit_tls=good_cert.server_context())
        result = run_scenario(probe_aiosmtpd(server, tls="implicit", ca_file=pki.ca_file, servername="other.test"))
        assert_failed(result, Phase.TLS, Reason.TLS_VERIFY)
        assert result.banner == ""
        assert result.tls is not None
        assert result.tls.cert is not None
        assert result.tls.cert.not_after == good_cert.not_after

    def test_implicit_tls_against_a_plaintext_server_fails_in_tls_phase(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.healthy(), tls="implicit"))
        assert_failed(outcome.result, Phase.TLS, Reason.TLS)
        assert outcome.elapsed < FAST


class TestConnect:
    def test_refused_port_fails_in_connect_phase_with_refused(self, refused_port: int) -> None:
        result = run_scenario(probe(refused_port))
        assert_failed(result, Phase.CONNECT, Reason.REFUSED)
        assert result.address == SERVER_IP


class TestGreetingFailures:
    def test_tarpit_fails_in_banner_phase_with_timeout(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.tarpit(), timeout=0.5))
        assert_failed(outcome.result, Phase.BANNER, Reason.TIMEOUT)
        assert "0.5s" in outcome.result.error
        assert outcome.elapsed < 2.0  # hang guard: the deadline, not the hang guard, ended it
        assert outcome.only_connection.peer_closed

    def test_554_greeting_fails_at_once_with_the_reply(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.greeting_554(), timeout=30))
        result = outcome.result
        assert_failed(result, Phase.BANNER, Reason.REPLY)
        assert result.reply_code == 554
        assert result.reply is not None
        assert result.reply.text == "5.3.2 mail.test no SMTP service here"
        assert result.error == "554 5.3.2 mail.test no SMTP service here"
        assert result.banner == ""
        assert outcome.elapsed < FAST  # did not wait for the 30 s deadline
        conn = outcome.only_connection
        assert conn.peer_closed
        assert not any(line.startswith(b"EHLO") for line in conn.received)

    def test_421_greeting_fails_with_reply_code_421(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.greeting_421(), timeout=30))
        assert_failed(outcome.result, Phase.BANNER, Reason.REPLY)
        assert outcome.result.reply_code == 421
        assert outcome.result.error == "421 4.3.2 mail.test shutting down"
        assert outcome.elapsed < FAST

    def test_endless_line_fails_with_protocol_and_the_probe_stops_reading(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.endless_line(), timeout=30))
        assert_failed(outcome.result, Phase.BANNER, Reason.PROTOCOL)
        assert "longer than" in outcome.result.error
        assert outcome.elapsed < FAST
        # The probe hung up: the fake's endless write loop ended because its peer went away.
        assert outcome.only_connection.peer_closed

    def test_http_server_fails_with_protocol_in_banner_phase(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.http_server(), timeout=30))
        assert_failed(outcome.result, Phase.BANNER, Reason.PROTOCOL)
        assert "not an SMTP reply" in outcome.result.error
        assert "HTTP/1.1 400 Bad Request" in outcome.result.error
        assert outcome.result.reply is None
        assert outcome.elapsed < FAST

    def test_multiline_greeting_is_joined_into_the_banner(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.multiline()))
        result = outcome.result
        assert result.ok, result.error
        assert result.banner == "220 mail.test ESMTP no UCE ready"
        assert result.extensions == {
            "SIZE": "35882577",
            "AUTH": "PLAIN LOGIN",
            "ENHANCEDSTATUSCODES": "",
            "CHUNKING": "",
        }
        assert outcome.only_connection.received == [b"EHLO probe.test", b"QUIT"]


class TestEhloFailures:
    def test_reset_mid_ehlo_fails_in_ehlo_phase_with_reset(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.reset_on_ehlo(), timeout=30))
        assert_failed(outcome.result, Phase.EHLO, Reason.RESET)
        assert outcome.result.banner == "220 mail.test ESMTP fake"
        assert outcome.elapsed < FAST

    @pytest.mark.parametrize("code", [b"500", b"501", b"502", b"504", b"550"])
    def test_refused_ehlo_falls_back_to_helo(self, code: bytes) -> None:
        outcome = run_scenario(probe_scripted(fakes.ehlo_refused_helo_ok(code)))
        result = outcome.result
        assert result.ok, result.error
        assert result.helo_fallback is True
        assert result.extensions == {}
        assert outcome.only_connection.received == [b"EHLO probe.test", b"HELO probe.test", b"QUIT"]

    def test_helo_fallback_then_required_starttls_fails_with_no_starttls(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.ehlo_refused_helo_ok(), tls="starttls"))
        assert_failed(outcome.result, Phase.STARTTLS, Reason.NO_STARTTLS)
        assert outcome.result.helo_fallback is True

    def test_ehlo_421_fails_in_ehlo_phase_without_trying_helo(self) -> None:
        server = ScriptedSmtpServer([Step(None, fakes.GREETING), Step(b"EHLO ", b"421 4.7.0 too busy\r\n", Then.CLOSE)])
        outcome = run_scenario(probe_scripted(server))
        assert_failed(outcome.result, Phase.EHLO, Reason.REPLY)
        assert outcome.result.reply_code == 421
        assert outcome.result.helo_fallback is False
        # 421 means the server closes the channel: no HELO, and no QUIT either
        assert outcome.only_connection.received == [b"EHLO probe.test"]

    def test_helo_refused_after_ehlo_refused_fails_with_the_helo_reply(self) -> None:
        server = ScriptedSmtpServer(
            [
                Step(None, fakes.GREETING),
                Step(b"EHLO ", b"502 5.5.1 no\r\n"),
                Step(b"HELO ", b"550 5.7.1 go away\r\n", Then.HANG),
            ]
        )
        outcome = run_scenario(probe_scripted(server))
        assert_failed(outcome.result, Phase.EHLO, Reason.REPLY)
        assert outcome.result.reply_code == 550
        assert outcome.result.helo_fallback is True

    def test_reply_code_change_mid_reply_fails_with_protocol(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.code_change_mid_reply(), timeout=30))
        assert_failed(outcome.result, Phase.EHLO, Reason.PROTOCOL)
        assert "250 then 251" in outcome.result.error
        assert outcome.elapsed < FAST

    def test_refused_ehlo_inside_tls_fails_in_ehlo_tls_phase_without_helo(self, good_cert: IssuedCert) -> None:
        server = ScriptedSmtpServer(
            [
                Step(None, fakes.GREETING),
                Step(b"EHLO ", fakes.EHLO_STARTTLS),
                Step(b"STARTTLS", fakes.STARTTLS_GO, Then.START_TLS),
                Step(b"EHLO ", b"502 5.5.1 not inside TLS\r\n", Then.HANG),
            ],
            tls=good_cert.server_context(),
        )
        outcome = run_scenario(probe_scripted(server, tls="starttls", verify=False))
        assert_failed(outcome.result, Phase.EHLO_TLS, Reason.REPLY)
        assert outcome.result.reply_code == 502
        assert outcome.result.helo_fallback is False
        assert outcome.only_connection.received == [b"EHLO probe.test", b"STARTTLS", b"EHLO probe.test"]


class TestStarttlsFailures:
    def test_starttls_answered_454_fails_in_starttls_phase_with_reply(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.starttls_454(), tls="starttls"))
        assert_failed(outcome.result, Phase.STARTTLS, Reason.REPLY)
        assert outcome.result.reply_code == 454
        assert outcome.result.tls is None

    def test_starttls_not_advertised_fails_with_no_starttls(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.no_starttls(), tls="starttls"))
        assert_failed(outcome.result, Phase.STARTTLS, Reason.NO_STARTTLS)
        assert "STARTTLS" not in outcome.result.extensions
        # The probe gave up without asking for STARTTLS.
        # STARTTLS is never tried; the session still ends politely with QUIT
        assert outcome.only_connection.received == [b"EHLO probe.test", b"QUIT"]

    def test_starttls_not_advertised_is_fine_when_tls_is_not_wanted(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.no_starttls(), tls="none"))
        assert outcome.result.ok, outcome.result.error

    def test_plaintext_instead_of_a_handshake_fails_in_tls_phase_with_tls(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.starttls_then_plaintext(), tls="starttls", timeout=30))
        assert_failed(outcome.result, Phase.TLS, Reason.TLS)
        assert outcome.elapsed < FAST

    def test_silence_instead_of_a_handshake_times_out_in_tls_phase(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.starttls_then_silent(), tls="starttls", timeout=0.5))
        assert_failed(outcome.result, Phase.TLS, Reason.TIMEOUT)
        assert outcome.elapsed < 2.0
        assert outcome.only_connection.peer_closed

    def test_close_instead_of_a_handshake_fails_in_tls_phase_with_reset(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.starttls_then_close(), tls="starttls", timeout=30))
        assert_failed(outcome.result, Phase.TLS, Reason.RESET)
        assert outcome.elapsed < FAST

    def test_close_notify_inside_tls_fails_in_ehlo_tls_phase_with_reset(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = fakes.starttls_then_close_notify(good_cert.server_context())
        outcome = run_scenario(
            probe_scripted(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME, timeout=30)
        )
        assert_failed(outcome.result, Phase.EHLO_TLS, Reason.RESET)
        assert outcome.result.tls is not None  # the handshake's facts stay reported
        assert outcome.elapsed < FAST

    def test_plaintext_under_the_tls_layer_fails_in_ehlo_tls_phase_with_tls(
        self, pki: Pki, good_cert: IssuedCert
    ) -> None:
        server = fakes.starttls_then_raw_garbage(good_cert.server_context())
        outcome = run_scenario(
            probe_scripted(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME, timeout=30)
        )
        assert_failed(outcome.result, Phase.EHLO_TLS, Reason.TLS)
        assert outcome.elapsed < FAST

    def test_plaintext_injected_after_starttls_ready_is_discarded(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = fakes.starttls_injection(good_cert.server_context())
        outcome = run_scenario(probe_scripted(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        result = outcome.result
        assert result.ok, result.error
        assert result.tls is not None
        assert result.tls.verified is True
        assert not any("INJECTED" in key for key in result.extensions)
        assert result.extensions == {"SIZE": "10240000", "AUTH": "PLAIN LOGIN", "8BITMIME": ""}
        conn = outcome.only_connection
        assert conn.tls_version == result.tls.version
        assert conn.tls_cipher == result.tls.cipher
        assert conn.received == [b"EHLO probe.test", b"STARTTLS", b"EHLO probe.test", b"QUIT"]
        assert conn.unexpected == []


class TestQuit:
    def test_unanswered_quit_does_not_fail_the_probe(self) -> None:
        outcome = run_scenario(probe_scripted(fakes.quit_ignored(), timeout=30))
        assert outcome.result.ok, outcome.result.error
        assert "quit" not in outcome.result.timings
        assert outcome.elapsed < FAST  # QUIT has a short grace, not the whole deadline

    def test_quit_is_sent_after_a_good_dialogue(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = fakes.implicit_tls(good_cert.server_context())
        outcome = run_scenario(probe_scripted(server, tls="implicit", ca_file=pki.ca_file))
        assert outcome.result.ok, outcome.result.error
        assert "quit" in outcome.result.timings
        conn = outcome.only_connection
        assert conn.received == [b"EHLO probe.test", b"QUIT"]
        assert conn.unexpected == []
        assert outcome.result.tls is not None
        assert conn.tls_version == outcome.result.tls.version
