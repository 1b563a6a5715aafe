"""The MX check's spoof test against the real mail chain (tests.peers.mail_chain): protected.test has two
MXs on the same port, the chain MX Postfix (policyd-spf and OpenDMARC record verdicts but enforce
nothing) and a strict Postfix whose policyd-spf refuses an SPF fail at RCPT.  One check shows one
exchange refusing and one spoofable, the accepted forgery found in the delivery probe's mailbox with its
Authentication-Results, and deleted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import Config, DnsConfig, MxCheckConfig
from monitor.model.results import MxResult, Phase, Reason
from monitor.model.spoof import SpoofAttempt, SpoofOutcome, SpoofStep
from monitor.probes import ProbeEnv, build_resolver, mx
from tests.peers.mail_chain import MailChain, StrictMxPostfix

MAILBOX_PROBE = "chain-mailbox"


@pytest.fixture(scope="module")
def strict_mx(mail_chain: MailChain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictMxPostfix]:
    mail_chain.ensure_running()
    server = mail_chain.make_strict_mx(tmp_path_factory.mktemp("strict-mx"))
    try:
        server.start()
        yield server
    finally:
        server.close()


def config_document(chain: MailChain, **spoof: Any) -> dict[str, Any]:
    return {
        "delivery": [
            {
                "name": MAILBOX_PROBE,
                "submit": {"host": chain.host, "port": chain.msa_submission_port},
                "from": chain.submitter.address,
                "to": chain.mailbox.address,
                "mailbox": {
                    "protocol": "imap",
                    "host": chain.host,
                    "port": chain.imaps_port,
                    "tls": "implicit",
                    "username": chain.mailbox.address,
                    "password": chain.mailbox.password,
                    "ca_file": str(chain.ca_file),
                    "servername": chain.servername,
                    "poll_interval": 0.5,
                },
                "authserv_id": chain.mx_host,
                "timeouts": {"submit": 10, "mailbox": 5, "cleanup": 5},
            }
        ],
        "mx": [
            {
                "name": "protected",
                "domain": chain.protected_domain,
                "port": chain.mx_port,
                "timeout": 60,
                "spoof_test": {"recipient": chain.mailbox.address, "mailbox": MAILBOX_PROBE, "wait": 20, **spoof},
            }
        ],
    }


def check(chain: MailChain, config: MxCheckConfig) -> MxResult:
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"{chain.host}:{chain.dns_port}"])))
    return asyncio.run(mx.run(config, env))


def attempt_at(result: MxResult, exchange: str) -> SpoofAttempt:
    (record,) = [r for r in result.records if r.exchange == exchange]
    (attempt,) = record.spoof
    return attempt


def test_one_exchange_refuses_the_other_is_spoofable_and_the_forgery_is_read_and_deleted(
    mail_chain: MailChain, strict_mx: StrictMxPostfix, tmp_path: Path
) -> None:
    chain = mail_chain
    config = Config.model_validate(config_document(chain)).mx[0]
    result = check(chain, config)

    assert (result.ok, result.phase, result.reason) == (False, Phase.SPOOF, Reason.SPOOFABLE), result.error
    assert f"{chain.mx_host} (127.0.0.1): 250" in result.error
    assert chain.strict_mx_host not in result.error

    strict = attempt_at(result, chain.strict_mx_host)
    assert strict.address == chain.strict_mx_address
    assert (strict.outcome, strict.step, strict.reply_code) == (SpoofOutcome.REFUSED, SpoofStep.RCPT, 550)
    assert "SPF" in strict.reply, strict.reply  # policyd-spf's own refusal text
    assert strict.source_spf == "fail"

    open_mx = attempt_at(result, chain.mx_host)
    assert (open_mx.outcome, open_mx.step, open_mx.reply_code) == (SpoofOutcome.SPOOFABLE, SpoofStep.DATA, 250)
    assert (open_mx.source_address, open_mx.source_spf) == ("127.0.0.1", "fail")
    landed = open_mx.mailbox
    assert landed is not None
    assert (landed.found, landed.folder, landed.deleted, landed.error) == (True, "inbox", True, "")
    assert landed.verdict("spf") == "fail"
    assert landed.verdict("dmarc") == "fail"
    assert {v.authserv_id for v in landed.verdicts} == {chain.mx_host}
    # deleted: the forgery is gone from the Maildir
    assert all(message.message_id != open_mx.message_id for message in chain.inbox())
    assert all(message.message_id != open_mx.message_id for message in chain.junk())


def test_without_a_mailbox_the_acceptance_alone_is_reported_and_a_later_run_sweeps_the_forgery(
    mail_chain: MailChain, strict_mx: StrictMxPostfix
) -> None:
    chain = mail_chain
    document = config_document(chain)
    del document["mx"][0]["spoof_test"]["mailbox"]
    result = check(chain, Config.model_validate(document).mx[0])
    assert (result.phase, result.reason) == (Phase.SPOOF, Reason.SPOOFABLE)
    unread = attempt_at(result, chain.mx_host)
    assert (unread.outcome, unread.mailbox) == (SpoofOutcome.SPOOFABLE, None)
    assert chain.wait_for_message(unread.message_id).message_id == unread.message_id  # left where it landed

    # the next run that may read the mailbox deletes its own forgery and this check's leftovers
    again = check(chain, Config.model_validate(config_document(chain)).mx[0])
    read = attempt_at(again, chain.mx_host)
    assert read.mailbox is not None
    assert read.mailbox.deleted
    left = {message.message_id for message in chain.inbox() + chain.junk()}
    assert unread.message_id not in left
    assert read.message_id not in left
