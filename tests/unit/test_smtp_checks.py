"""SMTP probe depth checks against aiosmtpd: banner, extensions, TLS minimum, relay, envelope, AUTH."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from monitor.config.schema import DnsConfig, SmtpAuthConfig, SmtpProbeConfig
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, build_resolver, smtp
from tests.support.certs import Pki

USER, PASSWORD = "monitor", "s3cret-Pa55word"
LOCAL_DOMAIN = "mail.test"


class PolicyHandler:
    """Accepts local recipients, refuses others (no relay), records what it saw, delivers nothing."""

    def __init__(self, open_relay: bool = False) -> None:
        self.open_relay = open_relay
        self.rcpts: list[str] = []
        self.data_seen = False

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.rcpts.append(address)
        if address.startswith("nobody@"):
            return "550 5.1.1 <nobody@mail.test>: Recipient address rejected: User unknown"
        if not address.endswith("@" + LOCAL_DOMAIN) and not self.open_relay:
            return "554 5.7.1 Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.data_seen = True
        return "250 2.0.0 dropped"


def authenticator(server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login.decode() == USER and data.password.decode() == PASSWORD
    return AuthResult(success=ok, handled=False)


async def with_server(
    tmp_path: Path,
    handler: PolicyHandler,
    body: Callable[[int, Path], Awaitable[SmtpResult]],
    *,
    server_auth: bool = False,
    tls_max: ssl.TLSVersion | None = None,
) -> SmtpResult:
    pki = Pki.create(tmp_path)
    ctx = pki.issue().server_context(maximum_version=tls_max)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=LOCAL_DOMAIN,
            tls_context=ctx,
            require_starttls=False,
            authenticator=authenticator,
            auth_require_tls=True,
            auth_exclude_mechanism=[] if server_auth else ["LOGIN", "PLAIN"],
            loop=loop,
        ),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(port, pki.ca_file)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def probe(
    tmp_path: Path,
    handler: PolicyHandler,
    *,
    server_auth: bool = False,
    tls_max: ssl.TLSVersion | None = None,
    **settings: Any,
) -> SmtpResult:
    async def body(port: int, ca_file: Path) -> SmtpResult:
        config = SmtpProbeConfig.model_validate(
            {
                "name": "t",
                "host": "127.0.0.1",
                "port": port,
                "tls": "starttls",
                "timeout": 5,
                "ca_file": ca_file,
                "servername": "mail.test",
                **settings,
            }
        )
        return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))

    return asyncio.run(with_server(tmp_path, handler, body, server_auth=server_auth, tls_max=tls_max))


class TestBannerAndExtensions:
    def test_matching_banner_and_present_extensions_pass(self, tmp_path: Path) -> None:
        result = probe(
            tmp_path, PolicyHandler(), expect_banner=r"^220 mail\.test", expect_extensions=["STARTTLS", "size"]
        )
        assert result.ok, result.error

    def test_other_banner_fails_with_unexpected_banner(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(), expect_banner=r"^220 mx1\.example\.org")
        assert (result.ok, result.phase, result.reason) == (False, Phase.BANNER, Reason.UNEXPECTED_BANNER)
        assert "mx1" in result.error

    def test_missing_extension_is_named(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(), expect_extensions=["STARTTLS", "CHUNKING"])
        assert result.reason is Reason.MISSING_EXTENSION
        assert "CHUNKING" in result.error
        assert "STARTTLS" not in result.error


class TestTlsMinimumVersion:
    def test_tls12_server_fails_a_tls13_minimum_with_version_reported(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(), tls_max=ssl.TLSVersion.TLSv1_2, tls_min_version="TLSv1.3")
        assert (result.phase, result.reason) == (Phase.TLS, Reason.TLS_VERSION)
        assert result.tls is not None
        assert result.tls.version == "TLSv1.2"

    def test_tls13_meets_a_tls12_minimum(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(), tls_min_version="TLSv1.2")
        assert result.ok, result.error


class TestRelayTest:
    def test_refused_outside_recipient_passes_and_nothing_is_sent(self, tmp_path: Path) -> None:
        handler = PolicyHandler()
        result = probe(tmp_path, handler, relay_test={"rcpt_to": "probe@outside.invalid"})
        assert result.ok, result.error
        assert handler.rcpts == ["probe@outside.invalid"]
        assert not handler.data_seen

    def test_accepted_outside_recipient_fails_as_open_relay(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(open_relay=True), relay_test={"rcpt_to": "probe@outside.invalid"})
        assert (result.phase, result.reason) == (Phase.RCPT, Reason.OPEN_RELAY)


class TestEnvelope:
    def test_accepted_recipients_pass_without_data(self, tmp_path: Path) -> None:
        handler = PolicyHandler()
        envelope = {"mail_from": "monitor@mail.test", "rcpt_to": ["postmaster@mail.test"]}
        result = probe(tmp_path, handler, envelope=envelope)
        assert result.ok, result.error
        assert not handler.data_seen
        assert {"mail", "rcpt"} <= set(result.timings)

    def test_unknown_user_expected_550_passes(self, tmp_path: Path) -> None:
        result = probe(
            tmp_path,
            PolicyHandler(),
            envelope={"mail_from": "monitor@mail.test", "rcpt_to": ["nobody@mail.test"], "expect": "5xx"},
        )
        assert result.ok, result.error

    def test_rejected_recipient_where_250_expected_fails_with_the_reply(self, tmp_path: Path) -> None:
        result = probe(
            tmp_path,
            PolicyHandler(),
            envelope={"mail_from": "monitor@mail.test", "rcpt_to": ["nobody@mail.test"]},
        )
        assert (result.phase, result.reason) == (Phase.RCPT, Reason.UNEXPECTED_REPLY)
        assert result.reply_code == 550


class TestAuth:
    def test_good_credentials_authenticate(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(), server_auth=True, auth={"username": USER, "password": PASSWORD})
        assert result.ok, result.error
        assert "auth" in result.timings

    def test_login_mechanism_when_configured(self, tmp_path: Path) -> None:
        result = probe(
            tmp_path,
            PolicyHandler(),
            server_auth=True,
            auth={"username": USER, "password": PASSWORD, "mechanism": "LOGIN"},
        )
        assert result.ok, result.error

    def test_wrong_password_is_auth_failed_and_never_echoed(self, tmp_path: Path) -> None:
        wrong = "Wrong-Pa55word-xyz"
        result = probe(tmp_path, PolicyHandler(), server_auth=True, auth={"username": USER, "password": wrong})
        assert (result.phase, result.reason) == (Phase.AUTH, Reason.AUTH_FAILED)
        assert result.reply_code == 535
        assert wrong not in repr(result.as_dict())

    def test_server_without_auth_is_auth_unavailable(self, tmp_path: Path) -> None:
        result = probe(tmp_path, PolicyHandler(), server_auth=False, auth={"username": USER, "password": PASSWORD})
        assert (result.phase, result.reason) == (Phase.AUTH, Reason.AUTH_UNAVAILABLE)

    def test_auth_without_tls_is_a_config_error(self) -> None:
        with pytest.raises(ValueError, match="over TLS only"):
            SmtpProbeConfig(
                name="t",
                host="127.0.0.1",
                tls="none",
                auth=SmtpAuthConfig.model_validate({"username": USER, "password": PASSWORD}),
            )
