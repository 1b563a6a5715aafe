"""SMTP probe depth checks against a real Postfix on loopback: banner, extensions, TLS minimum, AUTH,
envelope, relay test; and that none of them gets a message queued.

The server is tests.peers.postfix_sasl's instance (fixture `postfix_sasl`); AUTH-unavailable uses
the session's plain Postfix (fixture `postfix`), which has no SASL.  The probe runs in-process.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from monitor.config.schema import DnsConfig, SmtpProbeConfig
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, build_resolver, smtp
from tests.peers.postfix import PostfixServer
from tests.peers.postfix_sasl import PostfixSaslServer

OUTSIDE = "probe@outside.invalid"
SENDER = "monitor@smtp-monitor.invalid"


def probe(server: PostfixServer, port: int, *, tls: str = "starttls", **checks: Any) -> SmtpResult:
    """One probe of server's `port`, the certificate verified as mail.test, with the given checks."""
    config = SmtpProbeConfig.model_validate(
        {
            "name": "postfix",
            "host": server.host,
            "port": port,
            "tls": tls,
            "timeout": 10,
            "ca_file": server.ca_file,
            "servername": server.servername,
            **checks,
        }
    )
    return asyncio.run(smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig()))))


def failure(result: SmtpResult) -> tuple[bool, Phase | None, Reason | None]:
    return (result.ok, result.phase, result.reason)


def auth(server: PostfixSaslServer, **overrides: str) -> dict[str, str]:
    return {"username": server.username, "password": server.password, **overrides}


class TestBanner:
    def test_postfix_greeting_matches_expect_banner(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, expect_banner=r"^220 mail\.test ESMTP")
        assert result.ok, result.error
        assert result.banner.startswith("220 mail.test ESMTP Postfix")

    def test_other_banner_fails_with_unexpected_banner_naming_the_pattern(
        self, postfix_sasl: PostfixSaslServer
    ) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, expect_banner=r"^220 mx1\.example\.org")
        assert failure(result) == (False, Phase.BANNER, Reason.UNEXPECTED_BANNER)
        assert "mx1" in result.error
        assert "220 mail.test ESMTP" in result.error


class TestExtensions:
    def test_starttls_pipelining_and_size_are_found(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, expect_extensions=["STARTTLS", "PIPELINING", "SIZE"])
        assert result.ok, result.error

    def test_missing_extension_is_named_and_present_ones_are_not(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, expect_extensions=["SMTPUTF8", "XFOO"])
        assert failure(result) == (False, Phase.EHLO_TLS, Reason.MISSING_EXTENSION)
        assert "XFOO" in result.error
        assert "SMTPUTF8" not in result.error

    def test_auth_is_offered_inside_tls_only(self, postfix_sasl: PostfixSaslServer) -> None:
        inside = probe(postfix_sasl, postfix_sasl.plain_port, expect_extensions=["AUTH"])
        assert inside.ok, inside.error
        assert inside.extensions["AUTH"].split() == ["PLAIN", "LOGIN"]
        cleartext = probe(postfix_sasl, postfix_sasl.plain_port, tls="none", expect_extensions=["AUTH"])
        assert failure(cleartext) == (False, Phase.EHLO, Reason.MISSING_EXTENSION)


class TestTlsMinimumVersion:
    def test_tls12_only_port_fails_a_tls13_minimum_reporting_tls12(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.tls12_port, tls_min_version="TLSv1.3")
        assert failure(result) == (False, Phase.TLS, Reason.TLS_VERSION)
        assert result.tls is not None
        assert result.tls.version == "TLSv1.2"
        assert result.tls.verified

    def test_tls12_only_port_meets_a_tls12_minimum(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.tls12_port, tls_min_version="TLSv1.2")
        assert result.ok, result.error
        assert result.tls is not None
        assert result.tls.version == "TLSv1.2"

    def test_default_port_negotiates_tls13_and_meets_a_tls13_minimum(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, tls_min_version="TLSv1.3")
        assert result.ok, result.error
        assert result.tls is not None
        assert result.tls.version == "TLSv1.3"


class TestAuth:
    def test_plain_with_good_credentials_authenticates(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, auth=auth(postfix_sasl, mechanism="PLAIN"))
        assert result.ok, result.error
        assert "auth" in result.timings

    def test_login_with_good_credentials_authenticates(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, auth=auth(postfix_sasl, mechanism="LOGIN"))
        assert result.ok, result.error
        assert "auth" in result.timings

    def test_unconfigured_mechanism_picks_one_offered_over_implicit_tls(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.implicit_port, tls="implicit", auth=auth(postfix_sasl))
        assert result.ok, result.error

    def test_bare_username_authenticates_in_the_default_realm_mail_test(self, postfix_sasl: PostfixSaslServer) -> None:
        # the sasldb holds monitor@mail.test; Cyrus puts a realm-less name in myhostname's realm
        result = probe(postfix_sasl, postfix_sasl.plain_port, auth=auth(postfix_sasl, username="monitor"))
        assert result.ok, result.error

    def test_wrong_password_is_auth_failed_535_and_never_echoed(self, postfix_sasl: PostfixSaslServer) -> None:
        for mechanism in ("PLAIN", "LOGIN"):
            wrong = f"Wrong-{mechanism}-Pa55word"
            result = probe(
                postfix_sasl, postfix_sasl.plain_port, auth=auth(postfix_sasl, password=wrong, mechanism=mechanism)
            )
            assert failure(result) == (False, Phase.AUTH, Reason.AUTH_FAILED), mechanism
            assert result.reply_code == 535
            assert wrong not in repr(result.as_dict())

    def test_user_outside_the_sasldb_is_auth_failed(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, auth=auth(postfix_sasl, username="nobody@mail.test"))
        assert failure(result) == (False, Phase.AUTH, Reason.AUTH_FAILED)
        assert result.reply_code == 535

    def test_postfix_without_sasl_is_auth_unavailable(self, postfix: PostfixServer) -> None:
        result = probe(postfix, postfix.plain_port, auth={"username": "monitor@mail.test", "password": "irrelevant"})
        assert failure(result) == (False, Phase.AUTH, Reason.AUTH_UNAVAILABLE)
        assert "(none)" in result.error


class TestEnvelope:
    def test_known_recipient_expected_250_passes(self, postfix_sasl: PostfixSaslServer) -> None:
        envelope = {"mail_from": SENDER, "rcpt_to": [postfix_sasl.known_recipient], "expect": "250"}
        result = probe(postfix_sasl, postfix_sasl.plain_port, envelope=envelope)
        assert result.ok, result.error
        assert {"mail", "rcpt"} <= set(result.timings)

    def test_unknown_user_where_250_expected_is_unexpected_reply_550(self, postfix_sasl: PostfixSaslServer) -> None:
        envelope = {"mail_from": SENDER, "rcpt_to": [postfix_sasl.unknown_recipient], "expect": "250"}
        result = probe(postfix_sasl, postfix_sasl.plain_port, envelope=envelope)
        assert failure(result) == (False, Phase.RCPT, Reason.UNEXPECTED_REPLY)
        assert result.reply_code == 550
        assert result.reply is not None
        assert "5.1.1" in result.reply.text
        assert "User unknown" in result.reply.text

    def test_unknown_user_expected_5xx_passes(self, postfix_sasl: PostfixSaslServer) -> None:
        envelope = {"mail_from": SENDER, "rcpt_to": [postfix_sasl.unknown_recipient], "expect": "5xx"}
        result = probe(postfix_sasl, postfix_sasl.plain_port, envelope=envelope)
        assert result.ok, result.error

    def test_every_recipient_is_checked_not_just_the_first(self, postfix_sasl: PostfixSaslServer) -> None:
        rcpts = [postfix_sasl.known_recipient, postfix_sasl.unknown_recipient]
        result = probe(postfix_sasl, postfix_sasl.plain_port, envelope={"mail_from": SENDER, "rcpt_to": rcpts})
        assert failure(result) == (False, Phase.RCPT, Reason.UNEXPECTED_REPLY)
        assert postfix_sasl.unknown_recipient in result.error


class TestRelayTest:
    def test_outside_recipient_refused_to_unauthenticated_client_passes(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.plain_port, relay_test={"rcpt_to": OUTSIDE})
        assert result.ok, result.error
        assert {"mail", "rcpt"} <= set(result.timings)

    def test_outside_recipient_accepted_is_open_relay(self, postfix_sasl: PostfixSaslServer) -> None:
        result = probe(postfix_sasl, postfix_sasl.open_relay_port, relay_test={"rcpt_to": OUTSIDE})
        assert failure(result) == (False, Phase.RCPT, Reason.OPEN_RELAY)
        assert OUTSIDE in result.error

    def test_open_relay_finding_ends_the_session_with_rset_and_quit(self, postfix_sasl: PostfixSaslServer) -> None:
        before = len(re.findall(r"openrelay/smtpd.*disconnect from", postfix_sasl.maillog()))
        result = probe(postfix_sasl, postfix_sasl.open_relay_port, relay_test={"rcpt_to": OUTSIDE})
        assert result.reason is Reason.OPEN_RELAY
        log = _wait_for_log(postfix_sasl, r"openrelay/smtpd.*disconnect from", before + 1)
        last = re.findall(r"openrelay/smtpd.*disconnect from.*", log)[-1]
        # Postfix counts the commands of the session: the probe reset and quit instead of vanishing
        assert "rset=1" in last
        assert "quit=1" in last

    def test_relay_test_runs_before_auth_so_credentials_do_not_mask_an_open_relay(
        self, postfix_sasl: PostfixSaslServer
    ) -> None:
        # after AUTH, Postfix relays for anyone (permit_sasl_authenticated): the probe must not log in first
        result = probe(postfix_sasl, postfix_sasl.plain_port, relay_test={"rcpt_to": OUTSIDE}, auth=auth(postfix_sasl))
        assert result.ok, result.error
        assert {"rcpt", "auth"} <= set(result.timings)


def _wait_for_log(server: PostfixSaslServer, pattern: str, count: int, deadline: float = 10.0) -> str:
    """The maillog once `pattern` occurs at least `count` times (postlogd writes asynchronously)."""
    end = time.monotonic() + deadline
    while True:
        text = server.maillog()
        if len(re.findall(pattern, text, re.MULTILINE)) >= count or time.monotonic() >= end:
            return text
        time.sleep(0.05)


class TestNothingIsQueued:
    # Postfix logs each session's command counts on disconnect; one accepted RCPT reads `rcpt=1 `
    # (the envelope check RSETs after it; a failed relay test drops the connection instead)
    _ACCEPTED_RCPT = r"disconnect from .* mail=1 rcpt=1 "

    def test_accepted_envelope_and_open_relay_rcpt_leave_no_message_behind(
        self, postfix_sasl: PostfixSaslServer
    ) -> None:
        before = len(re.findall(self._ACCEPTED_RCPT, postfix_sasl.maillog(), re.MULTILINE))
        envelope = {"mail_from": SENDER, "rcpt_to": [postfix_sasl.known_recipient]}
        assert probe(postfix_sasl, postfix_sasl.plain_port, envelope=envelope).ok
        assert not probe(postfix_sasl, postfix_sasl.open_relay_port, relay_test={"rcpt_to": OUTSIDE}).ok
        log = _wait_for_log(postfix_sasl, self._ACCEPTED_RCPT, before + 2)
        assert len(re.findall(self._ACCEPTED_RCPT, log, re.MULTILINE)) >= before + 2, postfix_sasl.log_tail()
        time.sleep(0.5)  # room for qmgr to pick up a message, had one been queued
        log = postfix_sasl.maillog()
        for sign_of_mail in ("queued as", "status=sent", "status=bounced", "(queue active)", "data=1"):
            assert sign_of_mail not in log, postfix_sasl.log_tail()
        assert postfix_sasl.queued_messages() == []
