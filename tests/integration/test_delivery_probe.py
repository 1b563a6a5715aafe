"""The delivery probe against the real chain: MSA Postfix -> MX Postfix -> Dovecot (tests.peers.mail_chain)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli.main import main
from monitor.config.schema import DeliveryProbeConfig, DnsConfig
from monitor.model.delivery import DeliveryPhase, DeliveryReason, DeliveryResult
from monitor.model.results import Reason
from monitor.probes import ProbeEnv, build_resolver
from monitor.probes.delivery import hops_of, look_for, run, sweep
from tests.peers.mail_chain import MailChain


@pytest.fixture
def chain(mail_chain: MailChain) -> Iterator[MailChain]:
    """The session chain, with the MX and Dovecot running again after each test."""
    yield mail_chain
    mail_chain.ensure_running()


def env_for(chain: MailChain) -> ProbeEnv:
    return ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"{chain.host}:{chain.dns_port}"])))


def probe_config(chain: MailChain, **overrides: Any) -> DeliveryProbeConfig:
    """Submission with STARTTLS and AUTH, IMAP with implicit TLS: every certificate verified by the chain's CA."""
    return DeliveryProbeConfig.model_validate(chain.delivery_probe(**overrides))


def deliver(chain: MailChain, config: DeliveryProbeConfig) -> DeliveryResult:
    return asyncio.run(run(config, env_for(chain)))


def unrelated_message(chain: MailChain) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "friend@elsewhere.test"
    message["To"] = chain.mailbox.address
    message["Subject"] = "not a probe"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@elsewhere.test>"
    message.set_content("keep me\n")
    return message


def stored_ids(chain: MailChain) -> list[str]:
    return [m.message_id for m in chain.inbox() + chain.junk()]


class TestRoundTrip:
    def test_submission_and_imap_idle_report_every_phase_three_hops_and_passing_verdicts(
        self, chain: MailChain
    ) -> None:
        config = probe_config(
            chain, expect_auth={"spf": "pass", "dkim": "pass", "dmarc": "pass"}, expect_folder="inbox"
        )
        result = deliver(chain, config)

        assert result.ok, result
        assert (result.phase, result.reason, result.pending, result.late) == (None, None, False, False)
        assert result.idle
        assert len(result.token) == 32
        assert result.submitted_to == f"{chain.host}:{chain.msa_submission_port}"
        assert result.queue_id.isalnum(), result.queue_id
        assert result.latency is not None
        assert 0 < result.latency < 10
        assert result.submitted_at is not None
        assert result.arrived_at is not None
        assert result.arrived_at - result.submitted_at == pytest.approx(result.latency, abs=0.05)
        assert {"fetch_open", "submit", "wait", "cleanup", "submit_auth"} <= result.timings.keys()
        # MSA (authenticated submission), MX, Dovecot's LMTP: in travel order
        assert [(h.by_host, h.protocol) for h in result.hops] == [
            (chain.msa_host, "ESMTPSA"),
            (chain.mx_host, "ESMTPS"),
            (chain.mailbox_host, "LMTP"),
        ]
        assert result.hops[0].queue_id == result.queue_id  # the MSA's Received names the queue ID of the 250
        assert result.hops[1].from_host == chain.msa_host
        assert all(h.delay is not None and 0 <= h.delay < 10 for h in result.hops), result.hops
        assert {(v.method, v.result, v.authserv_id) for v in result.verdicts} >= {
            ("spf", "pass", chain.mx_host),
            ("dkim", "pass", chain.mx_host),
            ("dmarc", "pass", chain.mx_host),
        }
        assert (result.folder, result.folder_name) == ("inbox", "INBOX")
        assert result.deleted
        assert result.message_id not in stored_ids(chain)  # nothing left behind

    def test_implicit_tls_submission_and_pop3_over_tls(self, chain: MailChain) -> None:
        config = probe_config(
            chain,
            submit={"port": chain.msa_implicit_port, "tls": "implicit"},
            mailbox={"protocol": "pop3", "port": chain.pop3s_port, "tls": "implicit"},
        )
        result = deliver(chain, config)

        assert result.ok, result
        assert not result.idle
        assert len(result.hops) == 3
        assert result.verdict("dkim") == "pass"
        assert result.deleted
        assert result.message_id not in stored_ids(chain)

    def test_pop3_with_stls_and_imap_with_starttls(self, chain: MailChain) -> None:
        for mailbox in (
            {"protocol": "pop3", "port": chain.pop3_port, "tls": "starttls"},
            {"protocol": "imap", "port": chain.imap_port, "tls": "starttls"},
        ):
            result = deliver(chain, probe_config(chain, mailbox=mailbox))
            assert result.ok, (mailbox, result)
            assert result.deleted


class TestPlacementAndVerdicts:
    def test_a_message_the_sieve_rule_files_into_junk_is_found_there_and_fails_expect_folder(
        self, chain: MailChain
    ) -> None:
        config = probe_config(chain, extra_headers={chain.junk_header: chain.junk_value}, expect_folder="inbox")
        result = deliver(chain, config)

        assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.DELIVER, DeliveryReason.WRONG_FOLDER)
        assert (result.folder, result.folder_name) == ("junk", chain.junk_folder)
        assert result.deleted  # found in Junk, and removed from there
        assert result.message_id not in stored_ids(chain)

    def test_expect_auth_names_the_verdict_that_is_not_the_expected_one(self, chain: MailChain) -> None:
        result = deliver(chain, probe_config(chain, expect_auth={"dkim": "fail", "spf": "pass"}))
        assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.DELIVER, DeliveryReason.AUTH_VERDICT)
        assert "dkim=pass (expected fail)" in result.error
        assert "spf" not in result.error


class TestFailures:
    def test_wrong_mailbox_password_fails_fetch_auth_failed_before_anything_is_sent(self, chain: MailChain) -> None:
        queued_before = len(chain.msa_queue())
        result = deliver(chain, probe_config(chain, mailbox={"password": "not-the-password"}, timeouts={"mailbox": 20}))
        assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.FETCH, Reason.AUTH_FAILED)
        assert "not-the-password" not in repr(result)
        assert (result.token, result.pending) == ("", False)
        assert len(chain.msa_queue()) == queued_before

    def test_wrong_pop3_password_fails_fetch_auth_failed(self, chain: MailChain) -> None:
        # Dovecot delays a refusal 2 s, doubled per failure from the same address (auth_policy penalty)
        config = probe_config(
            chain,
            mailbox={"protocol": "pop3", "port": chain.pop3s_port, "password": "not-the-password"},
            timeouts={"mailbox": 20},
        )
        result = deliver(chain, config)
        assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.FETCH, Reason.AUTH_FAILED)
        assert "not-the-password" not in repr(result)

    def test_dovecot_down_fails_fetch_refused(self, chain: MailChain) -> None:
        chain.stop_dovecot()
        try:
            imap = deliver(chain, probe_config(chain))
            pop3 = deliver(chain, probe_config(chain, mailbox={"protocol": "pop3", "port": chain.pop3s_port}))
        finally:
            chain.start_dovecot()
        for result in (imap, pop3):
            assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.FETCH, Reason.REFUSED), result
            assert not result.pending

    def test_refused_submission_auth_fails_submit_auth_failed_without_the_password(self, chain: MailChain) -> None:
        result = deliver(
            chain,
            probe_config(
                chain, submit={"auth": {"username": chain.submitter.address, "password": "Wrong-Submit-Pa55"}}
            ),
        )
        assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.SUBMIT, Reason.AUTH_FAILED)
        assert result.reply is not None
        assert result.reply.code == 535
        assert "Wrong-Submit-Pa55" not in repr(result)
        assert not result.pending

    def test_via_mx_finds_the_exchange_through_dns_and_reports_mx_refused_when_it_is_down(
        self, chain: MailChain
    ) -> None:
        via_mx = {"via": "mx", "host": None, "auth": None, "port": chain.mx_port}
        chain.stop_mx()
        try:
            down = deliver(chain, probe_config(chain, submit=via_mx))
        finally:
            chain.start_mx()
        assert (down.ok, down.phase, down.reason) == (False, DeliveryPhase.SUBMIT, Reason.REFUSED), down
        assert f"{chain.mx_host}:{chain.mx_port}" in down.error

        up = deliver(chain, probe_config(chain, submit=via_mx))
        assert up.ok, up
        assert up.submitted_to == f"{chain.mx_host}:{chain.mx_port}"
        assert [h.by_host for h in up.hops] == [chain.mx_host, chain.mailbox_host]  # no MSA hop
        assert up.verdict("dkim") == "none"  # nothing signed it: a verdict that is not pass


class TestStoreAndForward:
    def test_mx_outage_makes_the_run_late_and_a_later_look_finds_the_pending_message(self, chain: MailChain) -> None:
        config = probe_config(chain, deliver_within=4)
        env = env_for(chain)
        chain.stop_mx()
        try:
            began = time.monotonic()
            result = asyncio.run(run(config, env))
            took = time.monotonic() - began
        finally:
            chain.start_mx()
        assert (result.ok, result.phase, result.reason) == (False, DeliveryPhase.DELIVER, DeliveryReason.LATE)
        assert (result.pending, result.late) == (True, True)
        assert result.token
        assert result.queue_id
        assert took < 4 + 5  # the deadline plus the mailbox's last step, not the mail's eventual arrival

        chain.wait_for_message(result.message_id, timeout=20)
        found = asyncio.run(look_for(config, env, [result.token, "0" * 32]))
        assert list(found) == [result.token]
        message, deleted = found[result.token]
        assert deleted
        assert result.message_id not in stored_ids(chain)
        assert message.seen_at - (result.submitted_at or 0) > 4  # arrived late: after the deadline
        hops = hops_of(message.header, result.submitted_at)
        assert [h.by_host for h in hops] == [chain.msa_host, chain.mx_host, chain.mailbox_host]
        assert hops[1].delay is not None
        assert hops[1].delay >= 3  # the MSA held it while the MX was down


class TestOtherMail:
    def test_unrelated_mail_keeps_its_flags_and_place_through_every_kind_of_run(self, chain: MailChain) -> None:
        unrelated = unrelated_message(chain)
        chain.deliver_to_mailbox(unrelated)
        junk_unrelated = unrelated_message(chain)
        junk_unrelated[chain.junk_header] = chain.junk_value
        chain.deliver_to_mailbox(junk_unrelated)
        before = {m.message_id: (m.file_name, m.flags) for m in chain.inbox() + chain.junk()}
        assert unrelated["Message-ID"] in before
        assert junk_unrelated["Message-ID"] in before

        results = [
            deliver(chain, probe_config(chain)),
            deliver(chain, probe_config(chain, extra_headers={chain.junk_header: chain.junk_value})),
            deliver(chain, probe_config(chain, mailbox={"protocol": "pop3", "port": chain.pop3s_port})),
        ]
        assert all(r.ok and r.deleted for r in results), results

        after = {m.message_id: (m.file_name, m.flags) for m in chain.inbox() + chain.junk()}
        assert after == before


class TestOneShot:
    def write_probe(self, chain: MailChain, path: Path, **overrides: Any) -> Path:
        document = probe_config(chain, **overrides).model_dump(mode="json", by_alias=True, exclude_none=True)
        for part in ("mailbox", "submit"):  # secrets dump masked: the real ones again
            section = document[part]
            if part == "mailbox":
                section["password"] = overrides.get("mailbox", {}).get("password", chain.mailbox.password)
            else:
                section["auth"]["password"] = chain.submitter.password
        path.write_text(yaml.safe_dump(document))
        return path

    def test_deliver_prints_a_plugin_line_with_latency_and_hops_and_exits_ok(
        self, chain: MailChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        probe = self.write_probe(chain, tmp_path / "probe.yaml")
        code = main(["deliver", str(probe), "--nameserver", f"{chain.host}:{chain.dns_port}"])
        line = capsys.readouterr().out.strip()
        assert code == 0, line
        assert line.startswith("DELIVERY OK - chain: delivered in inbox in "), line
        assert "(dmarc=pass dkim=pass spf=pass)" in line
        assert " | latency=" in line
        assert ";20 hops=3 hop1_delay=" in line

    def test_deliver_json_of_a_refused_mailbox_login_exits_critical(
        self, chain: MailChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        probe = self.write_probe(
            chain, tmp_path / "probe.yaml", mailbox={"password": "not-the-password"}, timeouts={"mailbox": 20}
        )
        code = main(["deliver", str(probe), "--json"])
        output = capsys.readouterr().out
        document = json.loads(output)
        assert code == 2
        assert (document["kind"], document["status"], document["phase"], document["reason"]) == (
            "delivery",
            "failed",
            "fetch",
            "auth_failed",
        )
        assert "not-the-password" not in output


class TestSweep:
    def probe_message(self, chain: MailChain, probe: str, token: str, age: float, junk: bool = False) -> EmailMessage:
        message = unrelated_message(chain)
        del message["Date"]
        message["Date"] = email.utils.format_datetime(datetime.now(UTC) - timedelta(seconds=age))
        message["X-Smtp-Monitor-Probe"] = probe
        message["X-Smtp-Monitor-Token"] = token
        if junk:
            message[chain.junk_header] = chain.junk_value
        return message

    @pytest.mark.parametrize("protocol", ["imap", "pop3"])
    def test_only_this_probes_messages_older_than_lost_after_go(self, chain: MailChain, protocol: str) -> None:
        old, old_junk, fresh, pending = (uuid.uuid4().hex for _ in range(4))
        messages = {
            "old": self.probe_message(chain, "chain", old, 7200),
            "old in junk": self.probe_message(chain, "chain", old_junk, 7200, junk=True),
            "fresh": self.probe_message(chain, "chain", fresh, 60),
            "old but pending": self.probe_message(chain, "chain", pending, 7200),
            "another probe's": self.probe_message(chain, "chain-2", uuid.uuid4().hex, 7200),
            "unrelated": unrelated_message(chain),
        }
        for message in messages.values():
            chain.deliver_to_mailbox(message)
        mailbox = {"protocol": "pop3", "port": chain.pop3s_port} if protocol == "pop3" else {}
        config = probe_config(chain, mailbox=mailbox, lost_after=3600)

        removed = asyncio.run(sweep(config, env_for(chain), keep={pending}))

        stored = stored_ids(chain)
        gone = {name for name, message in messages.items() if message["Message-ID"] not in stored}
        if protocol == "imap":
            assert set(removed) == {old, old_junk}
            assert gone == {"old", "old in junk"}
        else:  # POP3 sees the inbox only
            assert set(removed) == {old}
            assert gone == {"old"}
        for message in messages.values():  # leave the mailbox as it was for the other tests
            for stored_message in chain.inbox() + chain.junk():
                if stored_message.message_id == message["Message-ID"] and "X-Smtp-Monitor-Probe" in message:
                    asyncio.run(look_for(config, env_for(chain), [str(message["X-Smtp-Monitor-Token"])]))
