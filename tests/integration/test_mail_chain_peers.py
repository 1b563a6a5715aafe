"""The delivery chain the delivery probes run against works end to end, shown with the stdlib only.

MSA Postfix (AUTH, DKIM signing) -> MX Postfix of dest.test (SPF, DKIM verify) -> Dovecot (LMTP,
Sieve, IMAP, POP3), found through the chain's own NSD.  See tests.peers.mail_chain.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from tests.peers.dovecot import MailAccount
from tests.peers.mail_chain import MailChain, QueuedMessage


@pytest.fixture
def chain(mail_chain: MailChain) -> Iterator[MailChain]:
    """The session chain, with the MX and Dovecot running again after each test."""
    yield mail_chain
    mail_chain.ensure_running()


def tls_context(chain: MailChain) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(chain.ca_file))


def message(
    chain: MailChain,
    *,
    sender: str | None = None,
    to: MailAccount | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A small message from `sender` (the submitter) to `to` (the probe's mailbox) with a unique Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender or chain.submitter.address
    msg["To"] = (to or chain.mailbox).address
    msg["Subject"] = "chain test"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{chain.sender_domain}>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content("delivery chain test\n")
    return msg


def submit(chain: MailChain, msg: EmailMessage, *, implicit: bool = False) -> None:
    """Submit `msg` to the MSA with AUTH: STARTTLS on the submission port, or implicit TLS."""
    context = tls_context(chain)
    smtp: smtplib.SMTP
    if implicit:
        smtp = smtplib.SMTP_SSL(chain.host, chain.msa_implicit_port, timeout=10, context=context)
    else:
        smtp = smtplib.SMTP(chain.host, chain.msa_submission_port, timeout=10)
    with smtp:
        if not implicit:
            smtp.starttls(context=context)
        smtp.login(chain.submitter.address, chain.submitter.password)
        assert smtp.send_message(msg) == {}


def imap_headers(
    chain: MailChain, message_id: str, folder: str = "INBOX", timeout: float = 15.0, account: MailAccount | None = None
) -> bytes:
    """The header block of the message with `message_id` in `folder`, read over IMAP with implicit
    TLS (certificate verified), polling until it is there."""
    account = account or chain.mailbox
    end = time.monotonic() + timeout
    with imaplib.IMAP4_SSL(chain.host, chain.imaps_port, ssl_context=tls_context(chain), timeout=10) as imap:
        imap.login(account.address, account.password)
        while True:
            imap.select(folder, readonly=True)
            status, data = imap.uid("SEARCH", "HEADER", "Message-ID", message_id)
            assert status == "OK"
            uids = data[0].split()
            if uids:
                status, fetched = imap.uid("FETCH", uids[0], "(BODY.PEEK[HEADER])")
                assert status == "OK"
                part = fetched[0]
                assert isinstance(part, tuple)
                header_block: bytes = part[1]
                return header_block
            if time.monotonic() >= end:
                raise AssertionError(
                    f"{message_id} not in {folder} after {timeout:.0f} s; MSA queue {chain.msa_queue()}, "
                    f"MX queue {chain.mx_queue()}\n{chain.mx.log_tail(10)}"
                )
            time.sleep(0.05)


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return [(name, re.sub(r"\s+", " ", str(value))) for name, value in parsed.items()]


def values(raw: bytes, name: str) -> list[str]:
    return [value for key, value in headers_of(raw) if key.lower() == name.lower()]


class TestRoundTrip:
    def test_submitted_message_arrives_signed_with_dkim_spf_and_dmarc_pass(self, chain: MailChain) -> None:
        msg = message(chain)
        submit(chain, msg)
        raw = imap_headers(chain, msg["Message-ID"])

        # three hops, newest first: Dovecot's LMTP, the MX, the MSA (authenticated submission)
        received = values(raw, "Received")
        assert len(received) == 3, received
        assert re.search(r"^from mx\.dest\.test .* by mail\.dest\.test with LMTP", received[0]), received[0]
        assert re.search(r"^from msa\.src\.test .* by mx\.dest\.test \(Postfix\) with ESMTPS ", received[1]), received[
            1
        ]
        assert re.search(r" by msa\.src\.test \(Postfix\) with ESMTPSA ", received[2]), received[2]

        signatures = values(raw, "DKIM-Signature")
        assert len(signatures) == 1
        assert "d=src.test;" in signatures[0]
        assert "s=chain;" in signatures[0]

        results = " | ".join(values(raw, "Authentication-Results"))
        dkim_pass = r"mx\.dest\.test; dkim=pass \(1024-bit key.*\) header\.d=src\.test .*header\.s=chain"
        spf_pass = r"mx\.dest\.test; spf=pass \(sender SPF authorized\) smtp\.mailfrom=src\.test"
        assert re.search(dkim_pass, results), results
        assert re.search(spf_pass, results), results
        assert results.count("spf=") == 1, results  # policyd-spf's only: OpenDMARC adds none of its own
        assert re.search(r"mx\.dest\.test; dmarc=pass \(p=reject dis=none\) header\.from=src\.test", results), results

    def test_implicit_tls_submission_arrives_too(self, chain: MailChain) -> None:
        msg = message(chain)
        submit(chain, msg, implicit=True)
        raw = imap_headers(chain, msg["Message-ID"])
        assert "dkim=pass" in " ".join(values(raw, "Authentication-Results"))

    def test_unsigned_mail_from_an_unauthorised_domain_gets_spf_fail_dkim_none_dmarc_fail(
        self, chain: MailChain
    ) -> None:
        # straight to the MX from spoof.test, whose SPF authorises only 192.0.2.1: nothing signs it
        msg = message(chain, sender=f"someone@{chain.spoof_domain}")
        with smtplib.SMTP(chain.host, chain.mx_port, local_hostname="client.spoof.test", timeout=10) as smtp:
            smtp.starttls(context=tls_context(chain))
            assert smtp.send_message(msg) == {}
        raw = imap_headers(chain, msg["Message-ID"])

        assert values(raw, "DKIM-Signature") == []
        results = " | ".join(values(raw, "Authentication-Results"))
        assert re.search(r"mx\.dest\.test; dkim=none", results), results
        assert re.search(r"mx\.dest\.test; spf=fail .*smtp\.mailfrom=spoof\.test", results), results
        assert re.search(r"mx\.dest\.test; dmarc=fail \(p=reject dis=none\) header\.from=spoof\.test", results), results
        assert "dkim=pass" not in results
        assert "spf=pass" not in results
        assert len(values(raw, "Received")) == 2  # no MSA hop

    def test_wrong_submission_password_is_refused_with_535(self, chain: MailChain) -> None:
        with smtplib.SMTP(chain.host, chain.msa_submission_port, timeout=10) as smtp:
            smtp.starttls(context=tls_context(chain))
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login(chain.submitter.address, "not-the-password")
        assert refused.value.smtp_code == 535

    def test_msa_relays_nothing_without_auth(self, chain: MailChain) -> None:
        with smtplib.SMTP(chain.host, chain.msa_submission_port, timeout=10) as smtp:
            smtp.starttls(context=tls_context(chain))
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.send_message(message(chain))
        code, reply = refused.value.recipients[chain.mailbox.address]
        assert (code, b"Relay access denied" in reply) == (554, True)


class TestMailbox:
    def test_junk_header_files_the_message_into_the_special_use_junk_folder(self, chain: MailChain) -> None:
        msg = message(chain, headers={chain.junk_header: chain.junk_value})
        submit(chain, msg)
        imap_headers(chain, msg["Message-ID"], folder=chain.junk_folder)

        assert msg["Message-ID"] in [m.message_id for m in chain.junk()]
        assert msg["Message-ID"] not in [m.message_id for m in chain.inbox()]
        with imaplib.IMAP4(chain.host, chain.imap_port, timeout=10) as imap:
            imap.starttls(ssl_context=tls_context(chain))
            imap.login(chain.mailbox.address, chain.mailbox.password)
            status, capabilities = imap.capability()
            assert status == "OK"
            assert {b"IDLE", b"SPECIAL-USE"} <= set(capabilities[0].split())
            status, listed = imap.list()
            assert status == "OK"
            assert rb'(\HasNoChildren \Junk) "/" Junk' in listed

    def test_discard_header_makes_mail_vanish_after_every_hop_accepted_it(self, chain: MailChain) -> None:
        dropped = message(chain, headers={chain.discard_header: "yes"})
        submit(chain, dropped)
        marker = message(chain)  # submitted after it: once this one is in, the first had its turn
        submit(chain, marker)
        imap_headers(chain, marker["Message-ID"])
        wait_until_empty(chain.msa_queue)
        wait_until_empty(chain.mx_queue)

        stored = [m.message_id for m in chain.inbox() + chain.junk()]
        assert dropped["Message-ID"] not in stored
        assert f"sieve: msgid={dropped['Message-ID']}: discard action" in chain.dovecot.log_file.read_text()

    def test_imap_idle_reports_a_new_message_within_a_second(self, chain: MailChain) -> None:
        with imaplib.IMAP4_SSL(chain.host, chain.imaps_port, ssl_context=tls_context(chain), timeout=10) as imap:
            imap.login(chain.mailbox.address, chain.mailbox.password)
            imap.select("INBOX")
            imap.send(b"I1 IDLE\r\n")  # imaplib has no IDLE before Python 3.14: the raw command
            assert imap.readline().startswith(b"+ ")
            delivered = time.monotonic()
            chain.deliver_to_mailbox(message(chain))
            line = imap.readline()
            seen_after = time.monotonic() - delivered
            imap.send(b"DONE\r\n")
            assert re.match(rb"\* \d+ EXISTS", line), line
            while not (line := imap.readline()).startswith(b"I1 "):
                pass
            assert line.startswith(b"I1 OK"), line
        # Dovecot batches mailbox-change notifications for about 0.5 s (NOTIFY_DELAY_MSECS)
        assert seen_after < 1.0, seen_after

    def test_imap_login_needs_starttls_for_a_client_on_another_address(self, chain: MailChain) -> None:
        # Dovecot counts a client whose address equals its own (127.0.0.1) as secured, so a
        # plaintext LOGIN is refused only for another loopback source such as 127.0.0.2
        with (
            socket.create_connection((chain.host, chain.imap_port), timeout=5, source_address=("127.0.0.2", 0)) as raw,
            raw.makefile("rb") as lines,
        ):
            greeting = lines.readline()
            raw.sendall(b"a LOGIN probe secret\r\n")
            while not (reply := lines.readline()).startswith(b"a "):  # an untagged [ALERT] comes first
                assert reply.startswith(b"* "), reply
        assert b"STARTTLS" in greeting
        assert b"LOGINDISABLED" in greeting
        assert reply.startswith(b"a NO [PRIVACYREQUIRED]"), reply

    def test_unrelated_mail_is_listed_and_stays_as_it_was_after_a_header_only_read(self, chain: MailChain) -> None:
        unrelated = message(chain, sender="friend@elsewhere.test")
        chain.deliver_to_mailbox(unrelated)
        before = [m for m in chain.inbox() if m.message_id == unrelated["Message-ID"]]
        assert len(before) == 1
        assert before[0].flags == ""

        imap_headers(chain, unrelated["Message-ID"])  # BODY.PEEK in a read-only select: no \Seen

        after = [m for m in chain.inbox() if m.message_id == unrelated["Message-ID"]]
        assert [(m.file_name, m.flags.replace("S", "")) for m in after] == [(before[0].file_name, "")]
        assert "S" not in after[0].flags

    def test_pop3_over_tls_and_stls_lists_the_messages(self, chain: MailChain) -> None:
        account = chain.other_mailbox  # only this test writes to it: the count is known
        through_chain = message(chain, to=account)
        submit(chain, through_chain)
        imap_headers(chain, through_chain["Message-ID"], account=account)
        direct = message(chain, to=account)
        chain.deliver_to_mailbox(direct, account)
        expected = {through_chain["Message-ID"], direct["Message-ID"]}

        implicit = poplib.POP3_SSL(chain.host, chain.pop3s_port, context=tls_context(chain), timeout=10)
        starttls = poplib.POP3(chain.host, chain.pop3_port, timeout=10)
        starttls.stls(context=tls_context(chain))
        for pop in (implicit, starttls):
            try:
                pop.user(account.address)
                pop.pass_(account.password)
                count, _size = pop.stat()
                _, listing, _ = pop.list()
                assert count == len(listing) == 2
                found = set()
                for number in range(1, count + 1):
                    _, lines, _ = pop.top(number, 0)
                    found.update(values(b"\r\n".join(lines), "Message-ID"))
                assert found == expected
            finally:
                pop.quit()


def wait_until_empty(queue: Callable[[], list[QueuedMessage]], timeout: float = 5.0) -> None:
    """A queue empties just after delivery: the mailbox has the message before Postfix drops its copy."""
    end = time.monotonic() + timeout
    while queued := queue():
        assert time.monotonic() < end, queued
        time.sleep(0.05)


class TestStoreAndForward:
    def test_mx_outage_keeps_the_message_queued_at_the_msa_until_the_mx_returns(self, chain: MailChain) -> None:
        msg = message(chain)
        # An earlier test's message still on its way to the MX would be held with this one (the chain is shared)
        wait_until_empty(chain.msa_queue, timeout=15.0)
        chain.stop_mx()
        try:
            submit(chain, msg)
            outage_end = time.monotonic() + 15.0
            deferred: QueuedMessage | None = None  # the last sample between retries ("active" during one)
            while time.monotonic() < outage_end:
                queued = chain.msa_queue()
                # never lost, never bounced while the MX is down. One message, counted by its queue ID: postqueue
                # walks active/ before deferred/, so one that is deferred during the walk is listed in both.
                assert len({m.queue_id for m in queued}) == 1, queued
                if queued[0].queue_name == "deferred":
                    deferred = queued[0]
                assert msg["Message-ID"] not in [m.message_id for m in chain.inbox()]
                time.sleep(0.5)
            assert deferred is not None
            (recipient,) = deferred.recipients
            assert recipient.address == chain.mailbox.address
            # the MX was found through the test DNS (dest.test MX -> mx.dest.test A 127.0.0.1)
            assert f"connect to mx.dest.test[127.0.0.1]:{chain.mx_port}: Connection refused" in (
                recipient.delay_reason
            ), recipient
        finally:
            chain.start_mx()
        restarted = time.monotonic()
        chain.wait_for_message(msg["Message-ID"], timeout=15.0)
        late_by = time.monotonic() - restarted
        assert late_by < 15.0
        wait_until_empty(chain.msa_queue)
        raw = imap_headers(chain, msg["Message-ID"])
        assert "dkim=pass" in " ".join(values(raw, "Authentication-Results"))

    def test_dovecot_outage_keeps_the_message_at_the_mx_and_imap_refused(self, chain: MailChain) -> None:
        msg = message(chain)
        chain.stop_dovecot()
        try:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((chain.host, chain.imaps_port), timeout=2).close()
            submit(chain, msg)
            end = time.monotonic() + 10.0
            while not [m for m in chain.mx_queue() if m.queue_name == "deferred"]:
                assert time.monotonic() < end, f"MX queue: {chain.mx_queue()}"
                time.sleep(0.1)
        finally:
            chain.start_dovecot()
        chain.wait_for_message(msg["Message-ID"], timeout=15.0)
        wait_until_empty(chain.mx_queue)
