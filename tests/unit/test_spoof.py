"""The MX check's spoof test against aiosmtpd: refused at MAIL, at RCPT, after DATA; accepted; inconclusive
when the protected domain's SPF authorises the agent's own address; through a scripted DNS server."""

from __future__ import annotations

import asyncio
import email
from collections.abc import Iterator
from email.policy import default as default_policy
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.model.probe_result import result_from_dict
from monitor.model.results import MxResult, Phase, Reason
from monitor.model.spoof import SpoofAttempt, SpoofOutcome, SpoofStep
from monitor.probes import ProbeEnv, build_resolver, mx, spoof
from tests.fakes.dns_server import ScriptedDnsServer
from tests.fakes.smtp_servers import AiosmtpdServer, RecordingHandler

DOMAIN = "example.test"
EXCHANGE = "mx.example.test"
RECIPIENT = "postmaster@example.test"
SPF_NOT_LOOPBACK = "v=spf1 ip4:192.0.2.1 -all"
HANG_GUARD = 30.0


class Mta(RecordingHandler):
    """An MX that refuses with `reply` at `at` ("mail", "rcpt", "data"), or accepts ("" or "never")."""

    def __init__(self, at: str = "", reply: str = "550 5.7.1 rejected by policy") -> None:
        super().__init__()
        self.at = at
        self.reply = reply
        self.mail_from: list[str] = []
        self.messages: list[bytes] = []

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.mail_from.append(address)
        if self.at == "mail":
            return self.reply
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.at == "rcpt":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.original_content or envelope.content))
        if self.at == "data":
            return self.reply
        return "250 2.0.0 Ok: queued as 4XyZ"


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    with ScriptedDnsServer() as server:
        server.records(DOMAIN, "MX", f"10 {EXCHANGE}.")
        server.records(EXCHANGE, "A", "127.0.0.1")
        server.records(DOMAIN, "TXT", f'"{SPF_NOT_LOOPBACK}"')
        yield server


def check(dns: ScriptedDnsServer, handler: Mta, **spoof: Any) -> MxResult:
    async def scenario() -> MxResult:
        async with asyncio.timeout(HANG_GUARD), AiosmtpdServer(handler=handler) as server:
            config = MxCheckConfig.model_validate(
                {
                    "name": "spoofcheck",
                    "domain": DOMAIN,
                    "timeout": 10,
                    "port": server.port,
                    "spoof_test": {"recipient": RECIPIENT, **spoof},
                }
            )
            env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[dns.nameserver], timeout=1.0)))
            return await mx.run(config, env)

    result = asyncio.run(scenario())
    assert result_from_dict(result.as_dict()).as_dict() == result.as_dict()  # saved and restored whole
    return result


def only_attempt(result: MxResult) -> SpoofAttempt:
    (record,) = result.records
    (attempt,) = record.spoof
    assert (attempt.exchange, attempt.address) == (EXCHANGE, "127.0.0.1")
    return attempt


class TestRefused:
    @pytest.mark.parametrize("at", ["mail", "rcpt", "data"])
    def test_a_refusal_at_each_step_passes_the_check(self, dns: ScriptedDnsServer, at: str) -> None:
        handler = Mta(at=at, reply="550 5.7.1 forged sender")
        result = check(dns, handler)
        assert result.ok, result.error
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.step) == (SpoofOutcome.REFUSED, SpoofStep(at))
        assert (attempt.reply_code, attempt.reply) == (550, "550 5.7.1 forged sender")
        assert (attempt.source_address, attempt.source_spf) == ("127.0.0.1", "fail")
        assert handler.mail_from == [f"spoof-test@{DOMAIN}"]
        assert len(handler.messages) == (1 if at == "data" else 0)
        assert result.as_dict()["mx"][0]["spoof"][0]["outcome"] == "refused"
        assert "spoof" in result.timings

    def test_the_message_carries_the_forged_from_and_the_probe_hygiene_headers(self, dns: ScriptedDnsServer) -> None:
        handler = Mta(at="data")
        check(dns, handler, mail_from=f"ceo@{DOMAIN}")
        (raw,) = handler.messages
        message = email.message_from_bytes(raw, policy=default_policy)
        assert handler.mail_from == [f"ceo@{DOMAIN}"]
        assert message["From"] == f"ceo@{DOMAIN}"
        assert message["To"] == RECIPIENT
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["X-Smtp-Monitor-Probe"] == "spoofcheck"
        token = message["X-Smtp-Monitor-Token"]
        assert len(token) == 32
        assert message["Message-ID"] == f"<smtp-monitor.{token}@{DOMAIN}>"

    def test_a_temporary_refusal_is_inconclusive_not_refused(self, dns: ScriptedDnsServer) -> None:
        result = check(dns, Mta(at="rcpt", reply="451 4.7.1 greylisted, try again later"))
        assert result.ok, result.error
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.step, attempt.reply_code) == (SpoofOutcome.INCONCLUSIVE, SpoofStep.RCPT, 451)


class TestAccepted:
    def test_an_accepted_forgery_fails_the_check_as_spoofable(self, dns: ScriptedDnsServer) -> None:
        handler = Mta()
        result = check(dns, handler)
        assert (result.ok, result.phase, result.reason) == (False, Phase.SPOOF, Reason.SPOOFABLE)
        assert f"{EXCHANGE} (127.0.0.1): 250 2.0.0 Ok: queued as 4XyZ" in result.error
        assert f"spoof-test@{DOMAIN}" in result.error
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.step, attempt.reply_code) == (SpoofOutcome.SPOOFABLE, SpoofStep.DATA, 250)
        assert attempt.message_id.startswith("<smtp-monitor.")
        assert attempt.mailbox is None  # no delivery probe named: nothing to read
        assert len(handler.messages) == 1
        wire = result.as_dict()
        assert (wire["phase"], wire["reason"]) == ("spoof", "spoofable")


class TestInconclusive:
    def test_spf_authorising_the_agents_address_sends_nothing(self, dns: ScriptedDnsServer) -> None:
        dns.records(DOMAIN, "TXT", '"v=spf1 include:_spf.example.test -all"')
        dns.records("_spf.example.test", "TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')
        handler = Mta()
        result = check(dns, handler)
        assert result.ok, result.error
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.source_spf) == (SpoofOutcome.INCONCLUSIVE, "pass")
        assert "authorises the agent's own address 127.0.0.1" in attempt.error
        assert handler.mail_from == []  # no forgery was even started

    def test_behind_nat_the_configured_public_address_is_what_spf_is_asked_about(self, dns: ScriptedDnsServer) -> None:
        # SPF_NOT_LOOPBACK authorises 192.0.2.1: the agent's address once NAT has rewritten it
        handler = Mta()
        result = check(dns, handler, public_addresses=["2001:db8::25", "192.0.2.1"])
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.source_address, attempt.source_spf) == (
            SpoofOutcome.INCONCLUSIVE,
            "192.0.2.1",  # the IPv4 one, for an IPv4 connection
            "pass",
        )
        assert handler.mail_from == []

    def test_an_unreachable_exchange_is_an_error_not_a_verdict(self, dns: ScriptedDnsServer) -> None:
        dns.records(EXCHANGE, "A", "127.0.0.1")

        async def scenario() -> MxResult:
            config = MxCheckConfig.model_validate(
                {"name": "c", "domain": DOMAIN, "timeout": 5, "port": 9, "spoof_test": {"recipient": RECIPIENT}}
            )
            env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[dns.nameserver], timeout=1.0)))
            return await mx.run(config, env)

        result = asyncio.run(scenario())
        assert result.ok, result.error
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.step) == (SpoofOutcome.ERROR, SpoofStep.SESSION)
        assert "refused" in attempt.error


class TestConfig:
    def test_off_by_default(self) -> None:
        assert MxCheckConfig.model_validate({"name": "c", "domain": DOMAIN}).spoof_test is None

    def test_the_forged_sender_must_be_in_the_protected_domain(self) -> None:
        with pytest.raises(ValueError, match=r"must be an address in example\.test"):
            MxCheckConfig.model_validate(
                {"name": "c", "domain": DOMAIN, "spoof_test": {"recipient": RECIPIENT, "mail_from": "a@other.test"}}
            )
        sub = MxCheckConfig.model_validate(
            {"name": "c", "domain": DOMAIN, "spoof_test": {"recipient": RECIPIENT, "mail_from": "a@eu.example.test"}}
        )
        assert sub.spoof_sender == "a@eu.example.test"


class TestBounds:
    def test_a_long_reply_is_kept_bounded(self, dns: ScriptedDnsServer) -> None:
        result = check(dns, Mta(at="rcpt", reply="550 " + "x" * 1500))
        attempt = only_attempt(result)
        assert (attempt.outcome, attempt.reply_code) == (SpoofOutcome.REFUSED, 550)
        assert len(attempt.reply) == spoof.MAX_TEXT

    def test_no_more_forgeries_than_the_cap_are_sent(
        self, dns: ScriptedDnsServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(spoof, "MAX_ATTEMPTS", 1)
        dns.records(EXCHANGE, "A", "127.0.0.1", "127.0.0.2")
        handler = Mta(at="data")
        result = check(dns, handler)
        (record,) = result.records
        # the A records come in no fixed order: one address gets the forgery, the other is not sent one
        skipped = [a for a in record.spoof if a.error.startswith("not sent")]
        sent = [a for a in record.spoof if not a.error.startswith("not sent")]
        assert (len(sent), len(skipped)) == (1, 1)
        assert {sent[0].address, skipped[0].address} == {"127.0.0.1", "127.0.0.2"}
        assert skipped[0].outcome is SpoofOutcome.ERROR
        assert "at most 1 addresses" in skipped[0].error
        assert len(handler.mail_from) == (1 if sent[0].address == "127.0.0.1" else 0)

    def test_a_mailbox_wait_must_fit_in_the_checks_timeout(self) -> None:
        spoof = {"recipient": RECIPIENT, "mailbox": "inbox", "wait": 30}
        with pytest.raises(ValueError, match=r"timeout must be longer than spoof_test\.wait"):
            MxCheckConfig.model_validate({"name": "c", "domain": DOMAIN, "timeout": 20, "spoof_test": spoof})
        MxCheckConfig.model_validate({"name": "c", "domain": DOMAIN, "timeout": 40, "spoof_test": spoof})
