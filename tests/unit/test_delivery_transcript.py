"""A delivery run records the submission's SMTP dialogue and the mailbox commands (one line per command and
its tagged answer), logins redacted, bounded by the recorder, ending with the failure."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import dns.asyncresolver
import pytest
import yaml

from monitor.cli.main import main
from monitor.config.schema import DeliveryProbeConfig
from monitor.model.delivery import DeliveryResult
from monitor.model.probe_result import result_from_json, result_to_json
from monitor.model.results import Reason
from monitor.model.transcript import MAX_LINES_LONG, REDACTED, Direction
from monitor.probes import ProbeEnv, delivery
from tests.fakes.auth_secrets import leaks, secret_forms
from tests.fakes.imap_servers import FakeImapServer, FakePop3Server, MailboxScript
from tests.fakes.smtp_servers import AiosmtpdServer, RecordingHandler
from tests.support.certs import SERVER_NAME, Pki

MAILBOX_PASSWORD = "Mailbox-Wombat-Secret-4711"


class IntoMailbox(RecordingHandler):
    """Takes the message and drops its header block into the fake mailbox's INBOX, as a local delivery would."""

    def __init__(self, script: MailboxScript) -> None:
        super().__init__()
        self.script = script

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content
        head = content.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert BytesHeaderParser().parsebytes(head)["X-Smtp-Monitor-Token"]
        self.script.folders["INBOX"][7] = b"Received: from a by b with LMTP; Sun, 6 Dec 2026 20:00:01 +0000\r\n" + head
        return "250 2.0.0 Ok: queued as 4XyZ12AbC"


def config(
    pki: Pki, smtp_port: int, mailbox_port: int, protocol: str, password: str, deliver_within: str = "15s"
) -> DeliveryProbeConfig:
    return DeliveryProbeConfig.model_validate(
        {
            "name": "loop",
            "submit": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "helo": "probe.test"},
            "from": "probe@src.test",
            "to": "probe@dest.test",
            "mailbox": {
                "protocol": protocol,
                "host": "127.0.0.1",
                "port": mailbox_port,
                "tls": "implicit",
                "username": "probe@dest.test",
                "password": password,
                "ca_file": str(pki.ca_file),
                "servername": SERVER_NAME,
                "poll_interval": 0.1,
            },
            "deliver_within": deliver_within,
            "timeouts": {"submit": 5, "mailbox": 2},
        }
    )


def run_delivery(pki: Pki, protocol: str, password: str = MAILBOX_PASSWORD) -> DeliveryResult:
    async def scenario() -> DeliveryResult:
        script = MailboxScript(password=MAILBOX_PASSWORD)
        if protocol == "pop3":
            script.folders = {"INBOX": {}}
        fake = FakeImapServer if protocol == "imap" else FakePop3Server
        async with (
            fake(pki.issue().server_context(), script) as mailbox,
            AiosmtpdServer(handler=IntoMailbox(script)) as smtp,
        ):
            env = ProbeEnv(resolver=dns.asyncresolver.Resolver(configure=False))
            return await delivery.run(config(pki, smtp.port, mailbox.port, protocol, password), env)

    async def guarded() -> DeliveryResult:
        async with asyncio.timeout(30):
            return await scenario()

    return asyncio.run(guarded())


def lines(result: DeliveryResult) -> list[tuple[str, str]]:
    assert result.transcript is not None
    return [(line.direction.value, line.text) for line in result.transcript.lines]


def assert_no_password(result: DeliveryResult, password: str) -> None:
    assert result.transcript is not None
    forms = secret_forms("probe@dest.test", password)
    for text in (result.transcript.as_text(), result_to_json(result)):
        assert leaks(text, forms) == [], text


def test_imap_run_records_submission_and_mailbox_commands(pki: Pki) -> None:
    result = run_delivery(pki, "imap")
    assert result.ok, result.error
    recorded = lines(result)
    sent = [text for who, text in recorded if who == "C"]
    assert recorded[0] == ("--", f"IMAP: trying 127.0.0.1 port {result_port(recorded)}")
    assert any(who == "TLS" and "subject CN=mail.test" in text and text.endswith("verified") for who, text in recorded)
    assert any(who == "S" and text.startswith("* OK") for who, text in recorded)  # the greeting
    login = next(text for text in sent if " LOGIN" in text)
    assert login.endswith(f"LOGIN {REDACTED}")
    for command in ("SELECT", "UID SEARCH HEADER X-Smtp-Monitor-Token", "UID FETCH 7", "UID STORE 7", "UID EXPUNGE 7"):
        assert any(command in text for text in sent), (command, sent)
    for command in ("EHLO probe.test", "MAIL FROM:<probe@src.test>", "RCPT TO:<probe@dest.test>", "DATA", "QUIT"):
        assert command in sent, (command, sent)
    data = recorded.index(("C", "DATA"))
    assert recorded[data + 1][1].startswith("354")
    assert recorded[data + 2][0] == "--"
    assert recorded[data + 2][1].startswith("(the message: ")
    assert recorded[data + 3] == ("S", "250 2.0.0 Ok: queued as 4XyZ12AbC")
    tagged = [text for who, text in recorded if who == "S" and text.split(" ", 2)[1:2] == ["OK"]]
    assert len(tagged) >= 5  # each command's tagged answer
    assert not any(text.startswith("* SEARCH") for _, text in recorded)  # untagged data lines are left out
    assert_no_password(result, MAILBOX_PASSWORD)
    back = result_from_json(result_to_json(result))
    assert isinstance(back, DeliveryResult)
    assert back.transcript == result.transcript


def result_port(recorded: list[tuple[str, str]]) -> str:
    return recorded[0][1].rsplit(" ", 1)[1]


def test_pop3_run_records_user_and_pass_redacted_and_the_commands(pki: Pki) -> None:
    result = run_delivery(pki, "pop3")
    assert result.ok, result.error
    sent = [text for who, text in lines(result) if who == "C"]
    assert f"USER {REDACTED}" in sent
    assert f"PASS {REDACTED}" in sent
    assert "STAT" in sent
    assert any(text.startswith("TOP ") for text in sent)
    assert any(text.startswith("DELE ") for text in sent)
    assert any(who == "S" and text.startswith("+OK") for who, text in lines(result))
    assert_no_password(result, MAILBOX_PASSWORD)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_refused_login_ends_the_transcript_with_the_failure_and_no_password(pki: Pki, protocol: str) -> None:
    wrong = 'Wrong"Koala\\Passphrase-99'  # IMAP sends it quoted: \" and \\
    result = run_delivery(pki, protocol, password=wrong)
    assert result.reason is Reason.AUTH_FAILED
    recorded = lines(result)
    assert recorded[-1] == ("--", f"failed in fetch: auth_failed: {result.error}")
    assert_no_password(result, wrong)
    assert result.transcript is not None
    escaped = wrong.replace("\\", "\\\\").replace('"', '\\"')
    for form in (wrong, escaped):  # the fake IMAP server echoes the password in its NO, as it got it
        assert form not in result.transcript.as_text()


def test_a_late_message_ends_with_the_late_note_and_stays_bounded(pki: Pki) -> None:
    async def scenario() -> DeliveryResult:
        script = MailboxScript(password=MAILBOX_PASSWORD)
        async with (
            FakeImapServer(pki.issue().server_context(), script) as mailbox,
            AiosmtpdServer(handler=RecordingHandler()) as smtp,  # takes it, never delivers it
        ):
            env = ProbeEnv(resolver=dns.asyncresolver.Resolver(configure=False))
            return await delivery.run(config(pki, smtp.port, mailbox.port, "imap", MAILBOX_PASSWORD, "2s"), env)

    result = asyncio.run(scenario())
    assert result.reason is not None
    assert result.reason.value == "late"
    assert result.transcript is not None
    assert len(result.transcript.lines) <= MAX_LINES_LONG
    last = result.transcript.lines[-1]
    assert (last.direction, last.text) == (Direction.NOTE, f"failed in deliver: late: {result.error}")


def test_the_deliver_command_prints_the_transcript_after_its_plugin_line(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`smtp-monitor deliver probe.yaml --transcript`, its peers in an event loop of their own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    script = MailboxScript(password=MAILBOX_PASSWORD)
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[int, int]:
        mailbox = await stack.enter_async_context(FakeImapServer(pki.issue().server_context(), script))
        smtp = await stack.enter_async_context(AiosmtpdServer(handler=IntoMailbox(script)))
        return smtp.port, mailbox.port

    try:
        smtp_port, mailbox_port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        document = config(pki, smtp_port, mailbox_port, "imap", MAILBOX_PASSWORD).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        document["mailbox"]["password"] = {"value": MAILBOX_PASSWORD}
        probe_file = tmp_path / "probe.yaml"
        probe_file.write_text(yaml.safe_dump(document))
        code = main(["deliver", str(probe_file), "--transcript"])
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    out = capsys.readouterr().out
    first, *rest = out.splitlines()
    assert code == 0, out
    assert first.startswith("DELIVERY OK - loop: delivered in inbox")
    assert rest[0].endswith(f"-- IMAP: trying 127.0.0.1 port {mailbox_port}")
    assert any(line.endswith("C DATA") for line in rest)
    assert any(line.endswith(f"LOGIN {REDACTED}") for line in rest)
    assert leaks(out, secret_forms("probe@dest.test", MAILBOX_PASSWORD)) == []


def test_garbage_instead_of_an_imap_greeting_is_recorded_before_the_failure(pki: Pki) -> None:
    from monitor.config.schema import DeliveryTimeouts
    from monitor.model.failures import ProbeFailure
    from monitor.model.transcript import TranscriptRecorder
    from monitor.probes.mailbox import ImapMailbox
    from tests.fakes.imap_servers import GREETING, Act

    async def scenario() -> tuple[TranscriptRecorder, ProbeFailure]:
        script = MailboxScript(misbehave={GREETING: Act.GARBAGE})
        async with FakeImapServer(pki.issue().server_context(), script) as server:
            recorder = TranscriptRecorder()
            settings = config(pki, 1, server.port, "imap", MAILBOX_PASSWORD).mailbox
            mailbox = ImapMailbox(
                settings,
                ProbeEnv(resolver=dns.asyncresolver.Resolver(configure=False)),
                DeliveryTimeouts(mailbox=2),
                recorder,
            )
            with pytest.raises(ProbeFailure) as failed:
                await mailbox.open()
            await mailbox.close()
            return recorder, failed.value

    recorder, failure = asyncio.run(scenario())
    assert failure.reason is Reason.PROTOCOL
    assert ("S", "HTTP/1.1 400 Bad Request") in [
        (line.direction.value, line.text) for line in recorder.transcript().lines
    ]
