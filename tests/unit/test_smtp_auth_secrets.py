"""The AUTH password never leaves the SMTP probe, in any form, whatever the server echoes.

AUTH PLAIN sends base64("\\0user\\0password"): base64(password) is a substring of that token only
when len("\\0user\\0") is a multiple of 3, so the usernames here cover all three alignments."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from monitor.config.schema import DnsConfig, SmtpAuthConfig, SmtpProbeConfig
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, build_resolver, smtp
from tests.fakes.auth_secrets import b64, password_only_runs, secret_forms
from tests.fakes.smtp_servers import (
    QUIT,
    STARTTLS_GO,
    EchoingAuthServer,
    ScriptedSmtpServer,
    Step,
    Then,
)
from tests.support.certs import SERVER_IP, SERVER_NAME, IssuedCert, Pki

T = TypeVar("T")
PASSWORD = "Quokka-Zebra-Hunter2-Passphrase"  # long enough that every base64 form is distinctive
# len("\0" + user + "\0") mod 3 is 0, 1 and 2: the password's alignment inside the PLAIN token
USERNAMES = ("a", "ab", "abc")
MECHANISMS = ("PLAIN", "LOGIN")


def assert_no_secret(result: SmtpResult, username: str, password: str) -> None:
    texts = {
        "as_dict": json.dumps(result.as_dict()),
        "repr": repr(result),
        "error": result.error,
        "reply": str(result.reply),
    }
    for name, form in secret_forms(username, password).items():
        for where, text in texts.items():
            assert form not in text, f"{name} ({form!r}) leaked into {where}: {text[:400]}"


def run_scenario(coro: Coroutine[Any, Any, T]) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(guarded())


async def probe(port: int, pki: Pki, username: str, mechanism: str | None) -> SmtpResult:
    config = SmtpProbeConfig(
        name="auth",
        host=SERVER_IP,
        port=port,
        tls="starttls",
        timeout=5,
        helo="probe.test",
        ca_file=pki.ca_file,
        servername=SERVER_NAME,
        auth=SmtpAuthConfig.model_validate({"username": username, "password": PASSWORD, "mechanism": mechanism}),
    )
    return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))


async def probe_echoing(server: EchoingAuthServer, pki: Pki, username: str, mechanism: str) -> SmtpResult:
    async with server:
        result = await probe(server.port, pki, username, mechanism)
    # the credentials really went out, so the server had them to echo
    sent = b" ".join(server.received).decode()
    if mechanism == "PLAIN":
        assert secret_forms(username, PASSWORD)["PLAIN token"] in sent
    else:
        assert b64(PASSWORD.encode()) in sent
        assert b64(username.encode()) in sent
    return result


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("username", USERNAMES)
class TestEchoingServer:
    def test_535_echoing_the_token_keeps_code_and_enhanced_code_only(
        self, pki: Pki, good_cert: IssuedCert, username: str, mechanism: str
    ) -> None:
        server = EchoingAuthServer(good_cert.server_context())
        result = run_scenario(probe_echoing(server, pki, username, mechanism))
        assert (result.ok, result.phase, result.reason) == (False, Phase.AUTH, Reason.AUTH_FAILED), result.error
        assert result.reply is not None
        assert result.reply.code == 535
        assert str(result.reply).startswith("535 5.7.8 ")
        assert "for token" not in result.error  # the server's own words are not kept at all
        assert_no_secret(result, username, password=PASSWORD)

    def test_535_echoing_the_decoded_credentials(
        self, pki: Pki, good_cert: IssuedCert, username: str, mechanism: str
    ) -> None:
        server = EchoingAuthServer(good_cert.server_context(), reply="535 5.7.8 bad credentials: {decoded}")
        result = run_scenario(probe_echoing(server, pki, username, mechanism))
        assert result.reason is Reason.AUTH_FAILED
        assert_no_secret(result, username, password=PASSWORD)

    def test_other_refusal_echoing_the_token_is_a_reply_failure(
        self, pki: Pki, good_cert: IssuedCert, username: str, mechanism: str
    ) -> None:
        server = EchoingAuthServer(good_cert.server_context(), reply="501 5.5.2 cannot decode {echo} ({decoded})")
        result = run_scenario(probe_echoing(server, pki, username, mechanism))
        assert (result.phase, result.reason) == (Phase.AUTH, Reason.REPLY), result.error
        assert str(result.reply).startswith("501 5.5.2 ")
        assert "cannot decode" not in result.error
        assert_no_secret(result, username, password=PASSWORD)

    def test_malformed_reply_echoing_the_token_is_a_protocol_failure(
        self, pki: Pki, good_cert: IssuedCert, username: str, mechanism: str
    ) -> None:
        server = EchoingAuthServer(good_cert.server_context(), reply="oops {echo} {decoded}")
        result = run_scenario(probe_echoing(server, pki, username, mechanism))
        assert (result.phase, result.reason) == (Phase.AUTH, Reason.PROTOCOL), result.error
        assert "not an SMTP reply" in result.error
        assert_no_secret(result, username, password=PASSWORD)


class TestEnhancedStatusCode:
    @pytest.mark.parametrize(
        "reply",
        [
            "535 Authentication failed for {echo}",  # no enhanced code at all
            "535 4.7.8 wrong class for a 5xx reply {echo}",
            "535 {echo} 5.7.8",
        ],
    )
    def test_anything_but_a_well_formed_enhanced_code_is_dropped(
        self, pki: Pki, good_cert: IssuedCert, reply: str
    ) -> None:
        server = EchoingAuthServer(good_cert.server_context(), reply=reply)
        result = run_scenario(probe_echoing(server, pki, "ab", "PLAIN"))
        assert result.reason is Reason.AUTH_FAILED
        assert result.reply is not None
        assert result.reply.code == 535
        assert not result.reply.text[:1].isdigit(), result.reply
        assert_no_secret(result, "ab", password=PASSWORD)


class TestEchoOnALaterConnection:
    def test_credentials_from_an_earlier_session_in_banner_and_ehlo_are_scrubbed(
        self, pki: Pki, good_cert: IssuedCert
    ) -> None:
        """A server that kept what an earlier probe sent may show it anywhere, before AUTH too."""
        username = "abc"
        forms = secret_forms(username, PASSWORD)
        token, encoded = forms["PLAIN token"].encode(), forms["base64 alignment 1"].encode()
        server = ScriptedSmtpServer(
            [
                Step(None, b"220 mail.test last client said " + token + b" " + PASSWORD.encode() + b"\r\n"),
                Step(b"EHLO ", b"250-mail.test greets you\r\n250-X-SEEN " + encoded + b"\r\n250 STARTTLS\r\n"),
                Step(b"STARTTLS", STARTTLS_GO, Then.START_TLS),
                Step(b"EHLO ", b"250-mail.test\r\n250-AUTH PLAIN LOGIN\r\n250 X-TOKEN " + token + b"\r\n"),
                Step(b"AUTH PLAIN ", b"235 2.7.0 Authentication successful\r\n"),
                QUIT,
            ],
            tls=good_cert.server_context(),
        )

        async def scenario() -> SmtpResult:
            async with server:
                return await probe(server.port, pki, username, "PLAIN")

        result = run_scenario(scenario())
        assert result.ok, result.error
        assert result.banner.startswith("220 mail.test last client said ")
        assert "X-TOKEN" in result.extensions
        assert_no_secret(result, username, password=PASSWORD)


def test_password_only_runs_cover_the_plain_token_at_every_alignment() -> None:
    """The helper itself: each token holds the run of its own alignment."""
    for username in USERNAMES:
        token = secret_forms(username, PASSWORD)["PLAIN token"]
        k = len(f"\0{username}\0") % 3
        assert password_only_runs(PASSWORD.encode())[k] in token


class TestUndecodableCredentials:
    def test_an_environment_password_with_undecodable_bytes_is_sent_as_those_bytes(
        self, pki: Pki, good_cert: IssuedCert, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        raw = b"Quokka-\xff-Zebra-Hunter2"  # not UTF-8: os.environ holds it surrogate-escaped
        monkeypatch.setitem(os.environb, b"SMTPMON_TEST_RAW_PASSWORD", raw)
        server = EchoingAuthServer(good_cert.server_context())

        async def scenario() -> SmtpResult:
            async with server:
                config = SmtpProbeConfig(
                    name="auth",
                    host=SERVER_IP,
                    port=server.port,
                    tls="starttls",
                    timeout=5,
                    helo="probe.test",
                    ca_file=pki.ca_file,
                    servername=SERVER_NAME,
                    auth=SmtpAuthConfig.model_validate(
                        {"username": "ab", "password": {"env": "SMTPMON_TEST_RAW_PASSWORD"}, "mechanism": "PLAIN"}
                    ),
                )
                return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))

        result = run_scenario(scenario())
        assert (result.phase, result.reason) == (Phase.AUTH, Reason.AUTH_FAILED), result.error
        token = b64(b"\0ab\0" + raw)
        assert f"AUTH PLAIN {token}".encode() in server.received
        dumped = json.dumps(result.as_dict())
        for form in (token, b64(raw), *password_only_runs(raw)):
            assert form not in dumped

    def test_a_password_that_is_no_unicode_text_fails_without_naming_its_characters(self, pki: Pki) -> None:
        config = SmtpProbeConfig(
            name="auth",
            host=SERVER_IP,
            port=25,
            tls="starttls",
            ca_file=pki.ca_file,
            auth=SmtpAuthConfig.model_validate({"username": "ab", "password": "lone-\ud800-surrogate"}),
        )
        with pytest.raises(ValueError, match="not valid UTF-8") as info:
            run_scenario(smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig()))))
        assert "\ud800" not in str(info.value)
        assert "position" not in str(info.value)
