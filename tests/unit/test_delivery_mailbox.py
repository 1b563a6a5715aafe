"""The delivery probe's mailbox sessions against scripted IMAP and POP3 servers: found, deleted, and every
misbehaviour classified within its bounds."""

from __future__ import annotations

import asyncio
import functools
import logging
import poplib
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import dns.asyncresolver
import pytest

from monitor.config.schema import DeliveryMailboxConfig, DeliveryTimeouts
from monitor.model.failures import ProbeFailure
from monitor.model.results import Reason
from monitor.probes import ProbeEnv, mailbox
from monitor.probes.mailbox import INBOX, JUNK, MAX_SESSION, ImapMailbox, Pop3Mailbox
from tests.fakes.imap_servers import GREETING, Act, FakeImapServer, FakePop3Server, MailboxScript
from tests.support.certs import SERVER_NAME, Pki

TOKEN = "0123456789abcdef0123456789abcdef"
STEP = 1.0  # the mailbox step timeout of these tests: a tarpit costs this much
HANG_GUARD = 30.0


def header(token: str = TOKEN, subject: str = "probe") -> bytes:
    return (
        f"Received: from mx.dest.test by mail.dest.test with LMTP; Sun, 6 Dec 2026 20:00:01 +0000\r\n"
        f"Subject: {subject}\r\nX-Smtp-Monitor-Token: {token}\r\n\r\n"
    ).encode()


def env() -> ProbeEnv:
    return ProbeEnv(resolver=dns.asyncresolver.Resolver(configure=False))


def mailbox_config(pki: Pki, port: int, protocol: str, **overrides: Any) -> DeliveryMailboxConfig:
    return DeliveryMailboxConfig.model_validate(
        {
            "protocol": protocol,
            "host": "127.0.0.1",
            "port": port,
            "tls": "implicit",
            "username": "probe@dest.test",
            "password": "mailbox-secret",
            "ca_file": str(pki.ca_file),
            "servername": SERVER_NAME,
            "poll_interval": 0.1,
            **overrides,
        }
    )


def scenario(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test run on its own event loop, stopped by HANG_GUARD if the code under test hangs."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        async def guarded() -> None:
            async with asyncio.timeout(HANG_GUARD):
                await test(*args, **kwargs)

        asyncio.run(guarded())

    return run


async def failure_of(action: Callable[[], Any]) -> tuple[ProbeFailure, float]:
    began = time.monotonic()
    with pytest.raises(ProbeFailure) as failed:
        await action()
    return failed.value, time.monotonic() - began


@pytest.fixture
def tls(pki: Pki) -> Any:
    return pki.issue().server_context()


class TestImapFound:
    @scenario
    async def test_search_fetch_and_delete_touch_the_probe_message_only(self, pki: Pki, tls: Any) -> None:
        other = header("f" * 32, "someone else's mail")
        script = MailboxScript(folders={"INBOX": {1: other, 2: header()}, "Junk": {}})
        async with FakeImapServer(tls, script) as server:
            mailbox = ImapMailbox(mailbox_config(pki, server.port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))
            await mailbox.open()
            try:
                assert mailbox.folders == {INBOX: "INBOX", JUNK: "Junk"}  # \Junk found by LIST
                found = await mailbox.wait_for(TOKEN, time.monotonic() + 2)
                assert found is not None
                assert (found.folder, found.folder_name, found.key) == (INBOX, "INBOX", "2")
                assert await mailbox.delete(found) == ""
            finally:
                await mailbox.close()
        assert script.folders["INBOX"] == {1: other}
        fetched = [c for c in server.seen.commands if c.startswith("UID FETCH")]
        assert fetched == ["UID FETCH 2 (BODY.PEEK[HEADER])"]  # never the other message, never a body
        assert "UID STORE 2 +FLAGS.SILENT (\\Deleted)" in server.seen.commands
        assert "UID EXPUNGE 2" in server.seen.commands
        assert "mailbox-secret" not in " ".join(server.seen.commands)  # the fake's log shows it as ***

    @scenario
    async def test_idle_reports_an_arrival_without_polling(self, pki: Pki, tls: Any) -> None:
        script = MailboxScript(
            junk_folder=None,
            folders={"INBOX": {}},
            deleted={"INBOX": set()},
            idle_push_after=0.3,
            arriving=(7, header()),
        )
        async with FakeImapServer(tls, script) as server:
            mailbox = ImapMailbox(
                mailbox_config(pki, server.port, "imap", poll_interval=30), env(), DeliveryTimeouts(mailbox=STEP)
            )
            await mailbox.open()
            try:
                began = time.monotonic()
                found = await mailbox.wait_for(TOKEN, time.monotonic() + 10)
                waited = time.monotonic() - began
            finally:
                await mailbox.close()
        assert mailbox.idle
        assert found is not None
        assert found.key == "7"
        assert 0.3 <= waited < 2.0  # the push, not the 30 s poll interval
        assert server.seen.commands.count("DONE") == 1

    @scenario
    async def test_without_uidplus_expunge_waits_when_other_mail_is_flagged_deleted(self, pki: Pki, tls: Any) -> None:
        script = MailboxScript(
            capabilities="IMAP4rev1 SPECIAL-USE",
            folders={"INBOX": {1: header("e" * 32), 2: header()}, "Junk": {}},
            deleted={"INBOX": {1}, "Junk": set()},
        )
        async with FakeImapServer(tls, script) as server:
            mailbox = ImapMailbox(mailbox_config(pki, server.port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))
            await mailbox.open()
            try:
                found = await mailbox.wait_for(TOKEN, time.monotonic() + 2)
                assert found is not None
                note = await mailbox.delete(found)
            finally:
                await mailbox.close()
        assert "left flagged" in note
        assert "EXPUNGE" not in server.seen.commands
        assert set(script.folders["INBOX"]) == {1, 2}  # the other user's \Deleted message is still there

    @scenario
    async def test_not_there_by_the_deadline_is_none(self, pki: Pki, tls: Any) -> None:
        async with FakeImapServer(tls, MailboxScript()) as server:
            mailbox = ImapMailbox(mailbox_config(pki, server.port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))
            await mailbox.open()
            try:
                assert await mailbox.wait_for(TOKEN, time.monotonic() + 0.3) is None
            finally:
                await mailbox.close()


class TestImapMisbehaving:
    @pytest.mark.parametrize(
        ("at", "act", "reason"),
        [
            (GREETING, Act.HANG, Reason.TIMEOUT),
            (GREETING, Act.GARBAGE, Reason.PROTOCOL),
            (GREETING, Act.STREAM, Reason.PROTOCOL),  # an endless line
            (GREETING, Act.CLOSE, Reason.RESET),
            ("LOGIN", Act.CLOSE, Reason.RESET),
            ("LOGIN", Act.HANG, Reason.TIMEOUT),
            ("LOGIN", Act.HUGE_LITERAL, Reason.PROTOCOL),
            ("LIST", Act.LITERAL_FLOOD, Reason.PROTOCOL),
            ("SELECT", Act.STREAM, Reason.PROTOCOL),
        ],
        ids=lambda v: getattr(v, "value", v),
    )
    @scenario
    async def test_open_fails_classified_and_bounded(
        self, pki: Pki, tls: Any, at: str, act: Act, reason: Reason
    ) -> None:
        script = MailboxScript(misbehave={at: act})
        async with FakeImapServer(tls, script) as server:
            mailbox = ImapMailbox(mailbox_config(pki, server.port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))

            async def open_and_look() -> None:
                try:
                    await mailbox.open()
                    await mailbox.wait_for(TOKEN, time.monotonic() + 1)
                finally:
                    await mailbox.close()

            failure, took = await failure_of(open_and_look)
        assert failure.reason is reason, failure.message
        assert took < STEP + 1.5
        assert "mailbox-secret" not in failure.message
        if act in (Act.STREAM, Act.HUGE_LITERAL, Act.LITERAL_FLOOD):
            assert mailbox.proto is not None
            # reading stopped at the cap: past it by one read of asyncio's TLS layer at most (256 KiB)
            assert mailbox.proto.received <= MAX_SESSION + 256 * 1024

    @scenario
    async def test_refused_login_is_auth_failed_without_the_server_text(self, pki: Pki, tls: Any) -> None:
        async with FakeImapServer(tls, MailboxScript()) as server:
            config = mailbox_config(pki, server.port, "imap", password="Wrong-Pa55")
            mailbox = ImapMailbox(config, env(), DeliveryTimeouts(mailbox=STEP))
            failure, _ = await failure_of(mailbox.open)
            await mailbox.close()
        assert failure.reason is Reason.AUTH_FAILED
        assert failure.message == "login refused: NO [AUTHENTICATIONFAILED]"  # the fake echoes the password

    def test_no_log_record_holds_the_password_even_at_debug(
        self, pki: Pki, tls: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        @scenario
        async def login_refused_with_an_echo() -> None:
            async with FakeImapServer(tls, MailboxScript()) as server:
                config = mailbox_config(pki, server.port, "imap", password='Wrong"Pa55\\')
                mailbox = ImapMailbox(config, env(), DeliveryTimeouts(mailbox=STEP))
                await failure_of(mailbox.open)
                await mailbox.close()

        with caplog.at_level(logging.DEBUG):
            login_refused_with_an_echo()
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "Pa55" not in logged

    @scenario
    async def test_a_certificate_for_another_name_is_tls_verify(self, pki: Pki) -> None:
        other = pki.issue("other.test").server_context()
        async with FakeImapServer(other, MailboxScript()) as server:
            mailbox = ImapMailbox(mailbox_config(pki, server.port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))
            failure, _ = await failure_of(mailbox.open)
            await mailbox.close()
        assert failure.reason is Reason.TLS_VERIFY

    @scenario
    async def test_nothing_listening_is_refused(self, pki: Pki, refused_port: int) -> None:
        mailbox = ImapMailbox(mailbox_config(pki, refused_port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))
        failure, _ = await failure_of(mailbox.open)
        assert failure.reason is Reason.REFUSED


class TestPop3:
    @scenario
    async def test_found_by_its_header_and_only_it_deleted(self, pki: Pki, tls: Any) -> None:
        other = header("f" * 32, "someone else's mail")
        script = MailboxScript(folders={"INBOX": {1: header(), 2: other}})
        async with FakePop3Server(tls, script) as server:
            mailbox = Pop3Mailbox(mailbox_config(pki, server.port, "pop3"), env(), DeliveryTimeouts(mailbox=STEP))
            await mailbox.open()
            found = await mailbox.wait_for(TOKEN, time.monotonic() + 2)
            assert found is not None
            assert await mailbox.delete(found) == ""
        assert script.folders["INBOX"] == {2: other}
        assert "DELE 1" in server.seen.commands
        assert not any(c.startswith(("RETR", "DELE 2")) for c in server.seen.commands)

    @pytest.mark.parametrize(
        ("at", "act", "reason"),
        [
            (GREETING, Act.HANG, Reason.TIMEOUT),
            (GREETING, Act.GARBAGE, Reason.PROTOCOL),
            (GREETING, Act.STREAM, Reason.PROTOCOL),
            (GREETING, Act.CLOSE, Reason.RESET),
            ("PASS", Act.CLOSE, Reason.RESET),
            ("STAT", Act.HANG, Reason.TIMEOUT),
            ("TOP", Act.LINE_FLOOD, Reason.PROTOCOL),
        ],
        ids=lambda v: getattr(v, "value", v),
    )
    @scenario
    async def test_misbehaving_server_is_classified_and_bounded(
        self, pki: Pki, tls: Any, at: str, act: Act, reason: Reason
    ) -> None:
        script = MailboxScript(folders={"INBOX": {1: header("a" * 32)}}, misbehave={at: act})
        async with FakePop3Server(tls, script) as server:
            mailbox = Pop3Mailbox(mailbox_config(pki, server.port, "pop3"), env(), DeliveryTimeouts(mailbox=STEP))

            async def open_and_look() -> None:
                await mailbox.open()
                await mailbox.wait_for(TOKEN, time.monotonic() + 1)

            failure, took = await failure_of(open_and_look)
        assert failure.reason is reason, failure.message
        assert took < 4 * STEP + 1.5  # one POP3 session is bounded by four steps

    @pytest.mark.parametrize(
        ("act", "reason"),
        [(Act.GARBAGE, Reason.PROTOCOL), (Act.CLOSE, Reason.RESET)],
        ids=lambda v: getattr(v, "value", v),
    )
    @scenario
    async def test_a_failed_greeting_leaves_no_connection_open(
        self, pki: Pki, tls: Any, act: Act, reason: Reason, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # poplib's __init__ keeps its socket when the greeting fails; left to the garbage collector, a
        # long-running agent would hold it until a full collection (the tests saw ResourceWarnings).
        opened: list[socket.socket] = []
        create = poplib.POP3_SSL._create_socket  # type: ignore[attr-defined]  # private in poplib, not in typeshed

        def recorded(pop: poplib.POP3_SSL, timeout: float) -> socket.socket:
            sock: socket.socket = create(pop, timeout)
            opened.append(sock)
            return sock

        monkeypatch.setattr(mailbox._Pop3Ssl, "_create_socket", recorded)
        script = MailboxScript(misbehave={GREETING: act})
        async with FakePop3Server(tls, script) as server:
            config = mailbox_config(pki, server.port, "pop3")
            failure, _ = await failure_of(Pop3Mailbox(config, env(), DeliveryTimeouts(mailbox=STEP)).open)
        assert failure.reason is reason, failure.message
        assert len(opened) == 1
        assert opened[0].fileno() == -1  # closed, though this list still holds it

    @scenario
    async def test_refused_password_is_auth_failed_and_not_echoed(self, pki: Pki, tls: Any) -> None:
        async with FakePop3Server(tls, MailboxScript()) as server:
            config = mailbox_config(pki, server.port, "pop3", password="Wrong-Pa55")
            failure, _ = await failure_of(Pop3Mailbox(config, env(), DeliveryTimeouts(mailbox=STEP)).open)
        assert failure.reason is Reason.AUTH_FAILED
        assert "Wrong-Pa55" not in failure.message


class TestImapSessionMemory:
    @scenario
    async def test_a_closed_session_is_freed_at_once_not_at_the_next_full_collection(self, pki: Pki, tls: Any) -> None:
        # 200 delivery probes wait in IDLE at once: a session kept for the cyclic collector holds asyncio's
        # 256 KiB TLS buffer until a full collection, which then pauses every probe.
        import gc
        import weakref

        script = MailboxScript(folders={"INBOX": {1: header()}, "Junk": {}})
        async with FakeImapServer(tls, script) as server:
            mailbox = ImapMailbox(mailbox_config(pki, server.port, "imap"), env(), DeliveryTimeouts(mailbox=STEP))
            await mailbox.open()
            assert await mailbox.wait_for(TOKEN, time.monotonic() + 2) is not None
            await mailbox.close()
            await asyncio.sleep(0.05)  # connection_lost runs in a later turn of the loop
            protocol = weakref.ref(mailbox.proto)
            gc.disable()
            try:
                del mailbox
                assert protocol() is None
            finally:
                gc.enable()
