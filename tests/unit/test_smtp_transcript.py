"""The SMTP probe records its dialogue as it happens: every line each way with its time, the TLS handshake
in one line, the failure as the last note; bounded against hostile servers, and no secret in it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from monitor.config.schema import DnsConfig, SmtpProbeConfig, TlsMode
from monitor.model.probe_result import result_from_json, result_to_json
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.model.transcript import CUT_MARK, MAX_BYTES, MAX_LINE, MAX_LINES, REDACTED, Direction, Transcript
from monitor.probes import ProbeEnv, build_resolver, smtp
from tests.fakes import smtp_servers as fakes
from tests.fakes.auth_secrets import leaks, secret_forms
from tests.fakes.smtp_servers import QUIT, AiosmtpdServer, EchoingAuthServer, ScriptedSmtpServer, Step
from tests.support.certs import SERVER_IP, SERVER_NAME, IssuedCert, Pki

T = TypeVar("T")
PASSWORD = "Quokka-Zebra-Hunter2-Passphrase"


def run_scenario(coro: Coroutine[Any, Any, T]) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(guarded())


async def probe(port: int, *, tls: TlsMode = "none", timeout: float = 5.0, **options: Any) -> SmtpResult:
    config = SmtpProbeConfig(
        name="fake", host=SERVER_IP, port=port, tls=tls, timeout=timeout, helo="probe.test", **options
    )
    return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))


async def probe_server(server: ScriptedSmtpServer | AiosmtpdServer | EchoingAuthServer, **options: Any) -> SmtpResult:
    async with server:
        return await probe(server.port, **options)


def dialogue(result: SmtpResult) -> list[tuple[str, str]]:
    assert result.transcript is not None
    return [(line.direction.value, line.text) for line in result.transcript.lines]


def texts(result: SmtpResult, direction: Direction) -> list[str]:
    assert result.transcript is not None
    return [line.text for line in result.transcript.lines if line.direction is direction]


class TestHealthyDialogue:
    def test_starttls_dialogue_is_recorded_line_by_line_with_the_handshake_in_one_line(
        self, pki: Pki, good_cert: IssuedCert
    ) -> None:
        server = fakes.healthy_starttls(good_cert.server_context())
        result = run_scenario(probe_server(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert result.ok, result.error
        lines = dialogue(result)
        assert lines[:3] == [
            ("--", f"trying {SERVER_IP} port {server.port}"),
            ("--", "connected"),
            ("S", "220 mail.test ESMTP fake"),
        ]
        assert ("C", "EHLO probe.test") in lines
        assert [text for who, text in lines if who == "S"][1:5] == [
            "250-mail.test greets you",
            "250-SIZE 10240000",
            "250-STARTTLS",
            "250 8BITMIME",
        ]
        tls_lines = [text for who, text in lines if who == "TLS"]
        assert len(tls_lines) == 1
        assert tls_lines[0].startswith("TLSv1.3 TLS_")
        assert "subject CN=mail.test" in tls_lines[0]
        assert tls_lines[0].endswith(", verified")
        assert lines.index(("C", "STARTTLS")) < lines.index(("TLS", tls_lines[0]))
        assert lines[-2:] == [("C", "QUIT"), ("S", "221 2.0.0 bye")]
        assert result.transcript is not None
        offsets = [line.at for line in result.transcript.lines]
        assert offsets == sorted(offsets)
        assert 0 <= offsets[0] <= offsets[-1] <= result.total + 0.01

    def test_a_hostile_banner_is_kept_as_text_for_the_reader_to_escape(self) -> None:
        banner = b"220 <script>alert('x')</script> mail.test\r\n"
        server = ScriptedSmtpServer([Step(None, banner), Step(b"EHLO ", fakes.EHLO_PLAIN), QUIT])
        result = run_scenario(probe_server(server))
        assert result.ok
        assert "220 <script>alert('x')</script> mail.test" in texts(result, Direction.RECEIVED)

    def test_the_transcript_round_trips_through_the_saved_json(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = fakes.healthy_starttls(good_cert.server_context())
        result = run_scenario(probe_server(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        saved = result_to_json(result)
        back = result_from_json(saved)
        assert isinstance(back, SmtpResult)
        assert back.transcript == result.transcript
        assert result_to_json(back) == saved
        wire = json.loads(saved)["transcript"]
        assert wire["cut"] is False
        assert wire["lines"][2][1:] == ["S", "220 mail.test ESMTP fake"]

    def test_saved_texts_the_fast_json_reader_refuses_are_read_all_the_same(self) -> None:
        # pydantic-core's reader refuses a lone surrogate, which json.dumps writes as an escape; such a row is
        # read by json.loads instead of being dropped as unusable. Nesting past both readers is a ValueError.
        server = ScriptedSmtpServer([Step(None, b"220 mail.test\r\n"), Step(b"EHLO ", fakes.EHLO_PLAIN), QUIT])
        result = run_scenario(probe_server(server))
        assert isinstance(result, SmtpResult)
        odd = replace(result, banner="220 \udcff mail.test")
        saved = result_to_json(odd)
        assert "\\udcff" in saved
        back = result_from_json(saved)
        assert isinstance(back, SmtpResult)
        assert back.banner == "220 \udcff mail.test"
        assert back.transcript == result.transcript
        with pytest.raises(ValueError, match="nested too deeply"):
            result_from_json("[" * 100_000 + "]" * 100_000)


class TestFailures:
    def test_a_554_greeting_is_recorded_and_the_failure_is_the_last_note(self) -> None:
        result = run_scenario(probe_server(fakes.greeting_554()))
        assert (result.phase, result.reason) == (Phase.BANNER, Reason.REPLY)
        lines = dialogue(result)
        assert ("S", "554 5.3.2 mail.test no SMTP service here") in lines
        assert ("C", "QUIT") in lines  # the polite goodbye is part of what happened
        assert lines[-1] == ("--", f"failed in banner: reply: {result.error}")

    def test_a_refused_starttls_shows_the_454(self) -> None:
        result = run_scenario(probe_server(fakes.starttls_454(), tls="starttls"))
        assert (result.phase, result.reason) == (Phase.STARTTLS, Reason.REPLY)
        lines = dialogue(result)
        assert lines[lines.index(("C", "STARTTLS")) + 1] == ("S", "454 4.7.0 TLS not available due to temporary reason")
        assert lines[-1][1].startswith("failed in starttls: reply: 454")

    def test_garbage_instead_of_smtp_is_recorded_and_classified(self) -> None:
        result = run_scenario(probe_server(fakes.http_server()))
        assert result.reason is Reason.PROTOCOL
        assert ("S", "HTTP/1.1 400 Bad Request") in dialogue(result)
        assert dialogue(result)[-1][1].startswith("failed in banner: protocol: not an SMTP reply")

    def test_control_characters_are_escaped(self) -> None:
        server = ScriptedSmtpServer(
            [Step(None, b"220 \x1b[2J\x07mail.test\r\n"), Step(b"EHLO ", fakes.EHLO_PLAIN), QUIT]
        )
        result = run_scenario(probe_server(server))
        assert "220 \\x1b[2J\\x07mail.test" in texts(result, Direction.RECEIVED)
        assert result.transcript is not None
        assert "\x1b" not in result.transcript.as_text()

    def test_an_endless_line_is_cut_and_the_transcript_stays_bounded(self) -> None:
        result = run_scenario(probe_server(fakes.endless_line()))
        assert (result.phase, result.reason) == (Phase.BANNER, Reason.PROTOCOL)
        received = texts(result, Direction.RECEIVED)
        assert len(received) == 1
        assert received[0].startswith("220 xxxx")
        assert received[0].endswith(CUT_MARK)
        assert len(received[0]) == MAX_LINE

    def test_a_flood_of_reply_lines_is_cut_at_the_bound(self) -> None:
        flood = b"".join(b"250-line %d %s\r\n" % (i, b"y" * 300) for i in range(99)) + b"250 end\r\n"
        server = ScriptedSmtpServer([Step(None, fakes.GREETING), Step(b"EHLO ", flood), QUIT])
        result = run_scenario(probe_server(server))
        assert result.ok
        transcript = result.transcript
        assert transcript is not None
        assert transcript.cut
        assert len(transcript.lines) <= MAX_LINES
        assert sum(len(line.text.encode()) for line in transcript.lines) <= MAX_BYTES
        assert len(result_to_json(result)) < 2 * MAX_BYTES

    def test_a_refused_connection_names_the_address_tried(self, refused_port: int) -> None:
        result = run_scenario(probe(refused_port))
        assert result.reason is Reason.REFUSED
        assert dialogue(result) == [
            ("--", f"trying {SERVER_IP} port {refused_port}"),
            ("--", f"failed in connect: refused: {result.error}"),
        ]

    def test_a_certificate_that_does_not_verify_is_shown_from_the_second_look(
        self, pki: Pki, expired_cert: IssuedCert
    ) -> None:
        server = fakes.healthy_starttls(expired_cert.server_context())
        result = run_scenario(probe_server(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert result.reason is Reason.TLS_VERIFY
        tls_lines = texts(result, Direction.TLS)
        assert len(tls_lines) == 1
        assert tls_lines[0].startswith("second look, unverified: TLSv1.")
        assert "subject CN=mail.test" in tls_lines[0]
        assert "not verified: certificate verification failed" in tls_lines[0]
        assert dialogue(result)[-1][1].startswith("failed in tls: tls_verify: certificate verification failed")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("source", ["value", "file", "env"])
def test_auth_is_recorded_without_any_form_of_the_password(
    pki: Pki, good_cert: IssuedCert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mechanism: str, source: str
) -> None:
    if source == "file":
        secret_file = tmp_path / "password"
        secret_file.write_text(PASSWORD + "\n")
        password: dict[str, Any] = {"file": str(secret_file)}
    elif source == "env":
        monkeypatch.setenv("TRANSCRIPT_TEST_PASSWORD", PASSWORD)
        password = {"env": "TRANSCRIPT_TEST_PASSWORD"}
    else:
        password = {"value": PASSWORD}
    # the server echoes the token and the decoded credentials in its reply, and the password in a later banner
    server = EchoingAuthServer(good_cert.server_context(), reply="535 5.7.8 bad {echo} ({decoded})")
    result = run_scenario(
        probe_server(
            server,
            tls="starttls",
            ca_file=pki.ca_file,
            servername=SERVER_NAME,
            auth={"username": "ab", "password": password, "mechanism": mechanism},
        )
    )
    assert result.reason is Reason.AUTH_FAILED
    assert os.environ.get("TRANSCRIPT_TEST_PASSWORD") in (None, PASSWORD)
    lines = dialogue(result)
    first_auth = next(text for who, text in lines if who == "C" and text.startswith("AUTH"))
    assert first_auth == (f"AUTH PLAIN {REDACTED}" if mechanism == "PLAIN" else "AUTH LOGIN")
    assert ("S", f"535 {REDACTED}") in lines
    assert result.transcript is not None
    forms = secret_forms("ab", PASSWORD)
    for text in (result.transcript.as_text(), result_to_json(result), repr(result.transcript)):
        assert leaks(text, forms) == [], text


def test_a_password_echoed_outside_auth_is_redacted_too(pki: Pki, good_cert: IssuedCert) -> None:
    """A server that puts the password in its EHLO answer: plain, base64 and hex forms all go."""
    echo = f"250-X-ECHO {PASSWORD} {PASSWORD.encode().hex()}\r\n250 AUTH PLAIN\r\n".encode()
    server = ScriptedSmtpServer(
        [
            Step(None, fakes.GREETING),
            Step(b"EHLO ", fakes.EHLO_STARTTLS),
            Step(b"STARTTLS", fakes.STARTTLS_GO, fakes.Then.START_TLS),
            Step(b"EHLO ", echo),
            Step(b"AUTH ", b"535 5.7.8 no\r\n"),
            QUIT,
        ],
        tls=good_cert.server_context(),
    )
    result = run_scenario(
        probe_server(
            server,
            tls="starttls",
            ca_file=pki.ca_file,
            servername=SERVER_NAME,
            auth={"username": "abc", "password": PASSWORD},
        )
    )
    assert result.reason is Reason.AUTH_FAILED
    assert ("S", f"250-X-ECHO {REDACTED} {REDACTED}") in dialogue(result)
    assert result.transcript is not None
    assert leaks(result.transcript.as_text(), secret_forms("abc", PASSWORD)) == []


def test_every_address_of_address_family_both_has_its_own_transcript() -> None:
    async def scenario() -> SmtpResult:
        async with fakes.healthy() as server:
            config = SmtpProbeConfig(
                name="fake",
                host="localhost",
                port=server.port,
                tls="none",
                timeout=5,
                helo="probe.test",
                address_family="both",
            )
            return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))

    result = run_scenario(scenario())
    assert result.address_results
    for per_address in result.address_results:
        assert isinstance(per_address.transcript, Transcript)
        assert per_address.transcript.lines[0].text.startswith(f"trying {per_address.address} port")


def test_each_probed_exchange_of_an_mx_check_carries_its_transcript() -> None:
    from monitor.config.schema import MxCheckConfig
    from monitor.probes import mx
    from tests.fakes.dns_server import ScriptedDnsServer

    async def scenario(nameserver: str) -> Any:
        async with fakes.greeting_554() as refusing:
            config = MxCheckConfig.model_validate(
                {
                    "name": "mx",
                    "domain": "example.test",
                    "timeout": 5,
                    "probe_hosts": "all_addresses",
                    "port": refusing.port,
                    "tls": "none",
                }
            )
            env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[nameserver], timeout=1.0)))
            return await mx.run(config, env)

    with ScriptedDnsServer() as dns:
        dns.records("example.test", "MX", "10 mx1.example.test.")
        dns.records("mx1.example.test", "A", "127.0.0.1")
        result = run_scenario(scenario(dns.nameserver))
    (record,) = result.records
    probes = record.address_probes or (record.probe,)
    assert probes
    for probe_result in probes:
        assert probe_result is not None
        assert ("S", "554 5.3.2 mail.test no SMTP service here") in dialogue(probe_result)
        assert dialogue(probe_result)[-1][1].startswith("failed in banner: reply: 554")
    saved = result_from_json(result_to_json(result))
    assert saved == result
