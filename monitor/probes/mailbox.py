"""The mailbox side of a delivery probe: find the probe's message by its token, read its headers, delete it.

IMAP through aioimaplib (IDLE where offered, polling otherwise), POP3 through the stdlib's poplib in a
worker thread. Only the probe's own message is ever read or touched: IMAP searches by the token header
on the server and fetches that message's header block only; POP3 has no search, so it reads the header
blocks (TOP n 0) of the newest messages until it finds the token, never a body.

Everything is bounded: a timeout per step, and caps on what one session may send (one line, one
literal, the whole session); a server beyond them gets a classified failure (ProbeFailure), never a
hang or unbounded memory. Failures carry no phase: the delivery probe knows which of its phases ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import poplib
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, Protocol, TypeVar, cast

import aioimaplib

from monitor.config.schema import DeliveryMailboxConfig, DeliveryTimeouts
from monitor.model.failures import ProbeFailure, classify
from monitor.model.results import Reason
from monitor.model.transcript import TranscriptRecorder
from monitor.probes import ProbeEnv
from monitor.probes.tls import tls_facts, tls_summary

TOKEN_HEADER = "X-Smtp-Monitor-Token"  # noqa: S105 -- a header name, not a secret
PROBE_HEADER = "X-Smtp-Monitor-Probe"
INBOX, JUNK = "inbox", "junk"

# One response line: a LIST or SEARCH line of a real server stays far below.
MAX_LINE = 64 * 1024
# One literal: the probe's header block is a few KiB, with every relay's Received and verdict headers.
MAX_LITERAL = 256 * 1024
# Everything one session receives; a flood of small lines or literals ends here.
MAX_SESSION = 4 * 1024 * 1024
# POP3: lines of one multi-line answer (CAPA, TOP n 0: a header block, whose 50 Received hops folded
# over a few lines each are a few hundred), and how many of the newest messages are read. Lower than
# it was (10,000): a line flood is told from a slow server 5 times sooner, well inside the step timeout.
MAX_POP3_LINES = 2_000
MAX_POP3_SCAN = 200
_IDLE_SLICE = 25.0  # seconds: IDLE is renewed (and the folders searched) at least this often
_LOGOUT_GRACE = 1.0
_LITERAL = re.compile(rb"\{(\d+)\}\r\n")
_T = TypeVar("_T")

# aioimaplib logs every byte it receives at DEBUG, a server's echo of a password included: never below INFO.
logging.getLogger("aioimaplib.aioimaplib").setLevel(logging.INFO)


@dataclass(frozen=True, slots=True)
class Found:
    """The probe's message as the mailbox showed it."""

    folder: str  # INBOX or JUNK; POP3: INBOX
    folder_name: str  # the server's name of the folder ("" for POP3)
    key: str  # the IMAP UID (POP3: "")
    header: bytes  # the header block, as the server has it
    seen_at: float  # epoch seconds the probe saw it
    seen_monotonic: float  # the same instant on time.monotonic()


class Mailbox(Protocol):
    """One mailbox, opened once per delivery run."""

    idle: bool  # arrival is waited for with IMAP IDLE

    async def open(self) -> None:
        """Connect, TLS, log in, find the folders: ProbeFailure when the mailbox cannot be read."""

    async def wait_for(self, token: str, deadline: float) -> Found | None:
        """The message carrying `token`, waited for until `deadline` (time.monotonic()); None if not there by then."""

    async def delete(self, found: Found) -> str:
        """Remove the message; "" when done, else why it was left (e.g. another message's state forbids it)."""

    async def own_messages(self, probe: str, limit: int) -> list[Found]:
        """Up to `limit` messages of probe `probe` (its X-Smtp-Monitor-Probe header), any token: for the sweep."""

    async def close(self) -> None:
        """Log out (bounded) and drop the connection."""


def open_mailbox(
    config: DeliveryMailboxConfig,
    env: ProbeEnv,
    timeouts: DeliveryTimeouts,
    recorder: TranscriptRecorder | None = None,
) -> Mailbox:
    """The mailbox of `config`; `recorder` gets one line per command and its tagged answer."""
    if config.protocol == "imap":
        return ImapMailbox(config, env, timeouts, recorder)
    return Pop3Mailbox(config, env, timeouts, recorder)


def _tls_line(ssl_object: Any, verified: bool) -> str:
    return tls_summary(tls_facts(ssl_object, verified, "" if verified else "verification disabled"))


def carries_token(header: bytes, token: str) -> bool:
    """Whether a header block has `token` in its token header (POP3, and a check of what IMAP returned)."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
    return any(str(value).strip() == token for value in parsed.get_all(TOKEN_HEADER, []))


def of_probe(header: bytes, probe: str) -> bool:
    """Whether a header block is a message of probe `probe` (IMAP's HEADER search matches substrings)."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
    return any(str(value).strip() == probe for value in parsed.get_all(PROBE_HEADER, []))


def _scrubbed(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _printable(data: bytes | str, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else data
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


# -- IMAP -------------------------------------------------------------------------------------------------


class _BoundedProtocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib is untyped: Any to mypy
    """aioimaplib's protocol with the bounds it lacks, and one future that says why the session broke.

    aioimaplib keeps an unfinished line and a literal in memory whatever their size, and a greeting it
    cannot read only fails a background task; here they end the session with a classified failure."""

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: TranscriptRecorder | None = None) -> None:
        # No callback handed to aioimaplib: a bound method of our own would tie the protocol to itself in a
        # cycle, and the whole session (with asyncio's 256 KiB TLS buffer) would wait for a full collection.
        super().__init__(loop, None)
        self.broken: asyncio.Future[ProbeFailure] = loop.create_future()
        self.received = 0
        self.closing = False  # we are ending the session: a close is no failure
        self.recorder = recorder  # each command sent, the greeting, tagged answers and continuations

    def fail(self, failure: ProbeFailure) -> None:
        if not self.broken.done():
            self.broken.set_result(failure)
        if self.transport is not None:
            self.transport.abort()

    def send(self, line: str, scrub: str | None = None) -> None:
        # aioimaplib's own send() logs the line at DEBUG, its password scrubbing misses a quoted
        # password with escapes: nothing the probe sends is logged
        if self.transport is not None and not self.transport.is_closing():
            if self.recorder is not None:
                words = line.split(" ", 2)
                login = len(words) > 1 and words[1].upper() in ("LOGIN", "AUTHENTICATE")
                self.recorder.sent(line, secret=login)
            self.transport.write(f"{line}\r\n".encode())

    def data_received(self, d: bytes) -> None:
        if self.broken.done():
            return
        self.received += len(d)
        if self.received > MAX_SESSION:
            self.fail(ProbeFailure(Reason.PROTOCOL, f"the server sent more than {MAX_SESSION} bytes in one session"))
            return
        for match in _LITERAL.finditer(self.incomplete_line[-32:] + d):
            if len(match[1]) > 9 or int(match[1]) > MAX_LITERAL:
                size = _printable(match[1], 24)
                self.fail(ProbeFailure(Reason.PROTOCOL, f"literal of {size} bytes, more than {MAX_LITERAL}"))
                return
        try:
            super().data_received(d)
        except Exception as exc:  # the library's Abort/Error, or a RecursionError on a flood of tiny lines
            self.fail(ProbeFailure(Reason.PROTOCOL, f"unreadable response ({type(exc).__name__})"))
            return
        if len(self.incomplete_line) > MAX_LINE:
            self.fail(ProbeFailure(Reason.PROTOCOL, f"response line longer than {MAX_LINE} bytes"))

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        if self.recorder is not None and (
            self.state == aioimaplib.CONNECTED  # the greeting, or what came instead of one
            or line.startswith(b"+")
            or aioimaplib.tagged_status_response_re.match(line)
        ):
            self.recorder.received(line.decode("utf-8", "replace"))  # untagged data lines are left out
        if self.state == aioimaplib.CONNECTED and line and not line.startswith((b"* OK", b"* PREAUTH")):
            self.fail(ProbeFailure(Reason.PROTOCOL, f"not an IMAP greeting: {_printable(line)!r}"))
            return None
        return super()._handle_line(line, current_cmd)

    async def welcome(self, command: bytes) -> None:
        try:
            await super().welcome(command)
        except Exception as exc:  # a CAPABILITY answer the library cannot read
            self.fail(ProbeFailure(Reason.PROTOCOL, f"unreadable greeting or capabilities ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.closing:
            return
        if isinstance(exc, OSError):
            self.fail(classify(exc, 0))
        else:
            self.fail(ProbeFailure(Reason.RESET, "connection closed by server"))


class ImapMailbox:
    """The probe's mailbox over IMAP: INBOX and the junk folder (SPECIAL-USE \\Junk or configured)."""

    def __init__(
        self,
        config: DeliveryMailboxConfig,
        env: ProbeEnv,
        timeouts: DeliveryTimeouts,
        recorder: TranscriptRecorder | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.step = timeouts.mailbox
        self.cleanup_timeout = timeouts.cleanup
        self.recorder = recorder
        self.proto: _BoundedProtocol | None = None
        self.password = ""
        self.idle = False
        self.folders: dict[str, str] = {}  # INBOX/JUNK -> the server's name
        self.selected = ""

    # -- plumbing --------------------------------------------------------------------------------------

    @property
    def _proto(self) -> _BoundedProtocol:
        assert self.proto is not None
        return self.proto

    async def _bounded(self, what: str, action: Awaitable[_T], limit: float | None = None) -> _T:
        """`action`, raced against the session breaking, within the step timeout."""
        limit = self.step if limit is None else limit
        task = asyncio.ensure_future(action)
        # A command left behind (the session broke first, or the run was cancelled) may still end in an
        # error: read it then, so that asyncio does not log "Task exception was never retrieved".
        task.add_done_callback(_retrieved)
        broken = self._proto.broken
        both: set[asyncio.Future[Any]] = {task, broken}
        try:
            async with asyncio.timeout(limit):
                await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            task.cancel()
            self._proto.fail(ProbeFailure(Reason.TIMEOUT, f"{what}: no answer within {limit:g}s"))
        finally:
            if not task.done():
                task.cancel()
        if broken.done():
            failure = broken.result()
            raise ProbeFailure(failure.reason, _scrubbed(f"{what}: {failure.message}", self.password))
        try:
            return task.result()
        except (aioimaplib.AioImapException, ValueError) as exc:
            self._proto.fail(ProbeFailure(Reason.PROTOCOL, f"{what}: {exc}"))
            raise ProbeFailure(Reason.PROTOCOL, _scrubbed(f"{what}: {_printable(str(exc))}", self.password)) from None

    async def _command(self, what: str, action: Awaitable[Any], reason: Reason = Reason.REPLY) -> list[Any]:
        """A command that must answer OK; NO/BAD is a `reason` failure quoting the server's text."""
        response = await self._bounded(what, action)
        if response.result != "OK":
            text = response.lines[-1] if response.lines else b""
            message = f"{what}: {response.result} {_printable(bytes(text))}"
            raise ProbeFailure(reason, _scrubbed(message, self.password))
        lines: list[Any] = response.lines
        return lines

    # -- session ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self.proto = proto = _BoundedProtocol(loop, self.recorder)
        context = self.env.tls.get(config.ca_file, config.verify)
        servername = config.servername or config.host
        implicit = config.tls == "implicit"
        if self.recorder is not None:
            self.recorder.note(f"IMAP: trying {config.host} port {config.effective_port}")
        try:
            async with asyncio.timeout(self.step):
                transport, _ = await loop.create_connection(
                    lambda: proto,
                    config.host,
                    config.effective_port,
                    ssl=context if implicit else None,
                    server_hostname=servername if implicit else None,
                )
        except TimeoutError:
            raise ProbeFailure(Reason.TIMEOUT, f"connect: no answer within {self.step:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailure(Reason.TLS_VERIFY, f"certificate verification failed: {exc.verify_message}") from None
        except OSError as exc:
            raise classify(exc, self.step) from None
        if self.recorder is not None:
            self.recorder.note("connected")
            if implicit:
                self.recorder.tls(_tls_line(transport.get_extra_info("ssl_object"), config.verify))
        await self._bounded("greeting", proto.wait("AUTH|NONAUTH"))
        if not implicit:
            await self._starttls(context, servername)
        if proto.state == aioimaplib.NONAUTH:
            await self._login()
        await self._find_folders()
        self.idle = "IDLE" in proto.capabilities

    async def _starttls(self, context: ssl.SSLContext, servername: str) -> None:
        proto = self._proto
        if "STARTTLS" not in proto.capabilities:
            raise ProbeFailure(Reason.NO_STARTTLS, "server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop)
        await self._command("STARTTLS", proto.execute(command))
        proto.incomplete_line = b""  # anything sent before the handshake is not part of the session
        loop = asyncio.get_running_loop()
        try:
            transport = await self._bounded(
                "TLS handshake", loop.start_tls(proto.transport, proto, context, server_hostname=servername)
            )
        except ProbeFailure:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailure(Reason.TLS_VERIFY, f"certificate verification failed: {exc.verify_message}") from None
        except OSError as exc:
            raise classify(exc, self.step) from None
        proto.transport = transport
        if self.recorder is not None and transport is not None:
            self.recorder.tls(_tls_line(transport.get_extra_info("ssl_object"), self.config.verify))
        await self._bounded("CAPABILITY", proto.capability())  # what was offered before TLS no longer counts

    async def _login(self) -> None:
        proto = self._proto
        if "LOGINDISABLED" in proto.capabilities:
            raise ProbeFailure(Reason.AUTH_UNAVAILABLE, "server refuses LOGIN (LOGINDISABLED)")
        self.password = self.config.password.reveal()
        command = aioimaplib.Command(
            "LOGIN",
            proto.new_tag(),
            aioimaplib.quoted(self.config.username),
            aioimaplib.quoted(self.password),
            loop=proto.loop,
        )
        response = await self._bounded("LOGIN", proto.execute(command, scrub=self.password))
        if response.result != "OK":
            # the text may echo what was sent: keep its response code only ([AUTHENTICATIONFAILED] ...)
            text = bytes(response.lines[-1]) if response.lines else b""
            code = re.match(rb"\[[A-Z-]+\]", text)
            detail = f" {code[0].decode()}" if code else ""
            raise ProbeFailure(Reason.AUTH_FAILED, f"login refused: {response.result}{detail}")
        proto.state = aioimaplib.AUTH
        # a server may announce new capabilities (IDLE, UIDPLUS) only once logged in
        await self._bounded("CAPABILITY", proto.capability())

    async def _find_folders(self) -> None:
        proto = self._proto
        folders = self.config.folders
        self.folders = {INBOX: folders.inbox}
        if folders.junk is not None:
            self.folders[JUNK] = folders.junk
            return
        command = aioimaplib.Command("LIST", proto.new_tag(), '""', '"*"', loop=proto.loop)
        for flags, name in _list_entries(await self._command("LIST", proto.execute(command))):
            if "\\junk" in flags:
                self.folders[JUNK] = name
                break

    async def _select(self, name: str) -> None:
        if self.selected == name:
            return
        proto = self._proto
        self.selected = ""
        await self._command(f"SELECT {name}", proto.select(aioimaplib.quoted(name)))
        self.selected = name

    async def _search(self, token: str) -> list[str]:
        proto = self._proto
        lines = await self._command(
            "UID SEARCH", proto.search("HEADER", TOKEN_HEADER, token, charset=None, by_uid=True)
        )
        return _search_numbers(lines)

    async def _fetch_header(self, uid: str) -> bytes:
        proto = self._proto
        lines = await self._command("UID FETCH", proto.fetch(uid, "(BODY.PEEK[HEADER])", by_uid=True))
        for line in lines:
            if isinstance(line, bytearray):
                return bytes(line)
        raise ProbeFailure(Reason.PROTOCOL, f"UID FETCH {uid}: no header block in the answer")

    async def _look(self, token: str) -> Found | None:
        """Search every folder once (the selected one first); the first with the token wins."""
        order = sorted(self.folders.items(), key=lambda item: item[1] != self.selected)
        for role, name in order:
            if name == self.selected:
                # the server may report mail delivered since the last command only at a command that
                # syncs the folder; SEARCH need not (Dovecot: found 0.5 s later without it)
                await self._command("NOOP", self._proto.simple_command("NOOP"))
            else:
                await self._select(name)
            for uid in await self._search(token):
                header = await self._fetch_header(uid)
                if carries_token(header, token):
                    return Found(role, name, uid, header, time.time(), time.monotonic())
        return None

    async def wait_for(self, token: str, deadline: float) -> Found | None:
        # the junk folder is not watched by IDLE on INBOX: searched every poll_interval instead
        slice_ = self.config.poll_interval if (JUNK in self.folders or not self.idle) else _IDLE_SLICE
        while True:
            found = await self._look(token)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, slice_)
            if self.idle:
                await self._select(self.folders[INBOX])
                await self._idle(wait)
            else:
                await asyncio.sleep(wait)

    async def _idle(self, seconds: float) -> None:
        """IDLE until the server reports a change or `seconds` pass."""
        proto = self._proto
        while not proto.idle_queue.empty():  # pushes of an earlier IDLE: already searched since
            proto.idle_queue.get_nowait()
        idle = asyncio.ensure_future(proto.idle())
        try:
            await self._bounded("IDLE", _first_of(idle, proto.wait_for_idle_response()))
            if idle.done():  # answered without a continuation: NO/BAD
                response = idle.result()
                raise ProbeFailure(Reason.REPLY, f"IDLE: {response.result}")
            with contextlib.suppress(TimeoutError):
                await self._bounded("IDLE", asyncio.wait_for(proto.idle_queue.get(), seconds), seconds + self.step)
            proto.idle_done()
            response = await self._bounded("IDLE DONE", idle)
            if response.result != "OK":
                raise ProbeFailure(Reason.REPLY, f"IDLE: {response.result}")
        finally:
            if not idle.done():
                idle.cancel()

    async def own_messages(self, probe: str, limit: int) -> list[Found]:
        proto = self._proto
        found: list[Found] = []
        for role, name in self.folders.items():
            await self._select(name)
            search = proto.search("HEADER", PROBE_HEADER, aioimaplib.quoted(probe), charset=None, by_uid=True)
            for uid in _search_numbers(await self._command("UID SEARCH", search))[: limit - len(found)]:
                header = await self._fetch_header(uid)
                if of_probe(header, probe):
                    found.append(Found(role, name, uid, header, time.time(), time.monotonic()))
        return found

    async def delete(self, found: Found) -> str:
        proto = self._proto
        await self._select(found.folder_name)
        store = proto.store(found.key, "+FLAGS.SILENT", r"(\Deleted)", by_uid=True)
        await self._bounded("UID STORE", _checked("UID STORE", store), self.cleanup_timeout)
        if "UIDPLUS" in proto.capabilities:
            await self._bounded(
                "UID EXPUNGE", _checked("UID EXPUNGE", proto.expunge(found.key, by_uid=True)), self.cleanup_timeout
            )
            return ""
        # Without UIDPLUS only a plain EXPUNGE exists, and it removes every \Deleted message of the folder:
        # run it only when ours is the only one, else leave ours flagged for a later run.
        search = proto.search("DELETED", charset=None, by_uid=True)
        flagged = _search_numbers(await self._bounded("UID SEARCH DELETED", _checked("UID SEARCH", search)))
        if flagged != [found.key]:
            return "left flagged \\Deleted: other messages in the folder are flagged \\Deleted too (no UIDPLUS)"
        await self._bounded("EXPUNGE", _checked("EXPUNGE", proto.expunge()), self.cleanup_timeout)
        return ""

    async def close(self) -> None:
        proto = self.proto
        if proto is None or proto.transport is None:
            return
        proto.closing = True
        if not proto.broken.done() and proto.state in (aioimaplib.AUTH, aioimaplib.SELECTED, aioimaplib.NONAUTH):
            with contextlib.suppress(ProbeFailure):
                await self._bounded("LOGOUT", proto.logout(), _LOGOUT_GRACE)
        proto.transport.abort()


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _first_of(command: asyncio.Future[Any], event: Awaitable[Any]) -> None:
    """Until `command` ends or `event` happens (IDLE: its continuation), whichever is first."""
    waiter = asyncio.ensure_future(event)
    try:
        await asyncio.wait({command, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _checked(what: str, action: Awaitable[Any]) -> list[Any]:
    response = await action
    if response.result != "OK":
        text = response.lines[-1] if response.lines else b""
        raise ProbeFailure(Reason.REPLY, f"{what}: {response.result} {_printable(bytes(text))}")
    lines: list[Any] = response.lines
    return lines


def _search_numbers(lines: list[Any]) -> list[str]:
    """The numbers of a SEARCH answer: aioimaplib hands over its untagged line without "SEARCH", and the
    tagged line's text last."""
    out: list[str] = []
    for line in lines[:-1]:
        if isinstance(line, bytes):
            words = line.split()
            if words[:1] == [b"SEARCH"]:
                words = words[1:]
            out += [word.decode() for word in words if word.isdigit()]
    return out


_LIST_LINE = re.compile(rb'^(?:LIST )?\((?P<flags>[^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?P<name>.*)$', re.IGNORECASE)


def _list_entries(lines: list[Any]) -> list[tuple[str, str]]:
    """(flags in lower case, name) of LIST answers; a name sent as a literal follows its line."""
    entries: list[tuple[str, str]] = []
    pending_flags: str | None = None
    for line in lines:
        if isinstance(line, bytearray):
            if pending_flags is not None:
                entries.append((pending_flags, bytes(line).decode("utf-8", "replace")))
            pending_flags = None
            continue
        match = _LIST_LINE.match(line)
        if match is None:
            continue
        flags = match["flags"].decode("ascii", "replace").lower()
        name = match["name"]
        if re.fullmatch(rb"\{\d+\}", name):
            pending_flags = flags
        elif name.startswith(b'"') and name.endswith(b'"') and len(name) >= 2:
            entries.append((flags, re.sub(rb"\\(.)", rb"\1", name[1:-1]).decode("utf-8", "replace")))
        else:
            entries.append((flags, name.decode("utf-8", "replace")))
    return entries


# -- POP3 -------------------------------------------------------------------------------------------------


def _bounded_long_answer(pop: Any) -> tuple[bytes, list[bytes], int]:
    """poplib's _getlongresp, ending at MAX_POP3_LINES: poplib bounds a line's length, not their number."""
    resp: bytes = pop._getresp()
    lines: list[bytes] = []
    octets = 0
    line, size = pop._getline()
    while line != b".":
        if len(lines) >= MAX_POP3_LINES:
            raise poplib.error_proto(f"-ERR answer longer than {MAX_POP3_LINES} lines")
        if line.startswith(b".."):
            size -= 1
            line = line[1:]
        octets += size
        lines.append(line)
        line, size = pop._getline()
    return resp, lines, octets


_POP3_SECRET_COMMANDS = ("USER", "PASS", "APOP", "AUTH")


def _record_command(recorder: TranscriptRecorder | None, line: str) -> None:
    if recorder is not None:
        recorder.sent(line, secret=line.split(" ", 1)[0].upper() in _POP3_SECRET_COMMANDS)


def _recorded_answer(recorder: TranscriptRecorder | None, read: Callable[[], bytes]) -> bytes:
    """The status line `read` gives (+OK, or poplib's error_proto for -ERR), recorded either way."""
    try:
        answer = read()
    except poplib.error_proto as exc:
        if recorder is not None and exc.args and isinstance(exc.args[0], bytes):
            recorder.received(exc.args[0].decode("utf-8", "replace"))
        raise
    if recorder is not None:
        recorder.received(answer.decode("utf-8", "replace"))
    return answer


class _Pop3(poplib.POP3):
    """poplib's POP3 with a bounded long answer; each command and status line goes to `recorder`."""

    def __init__(self, recorder: TranscriptRecorder | None, host: str, port: int, timeout: float, **tls: Any) -> None:
        self.recorder = recorder  # before connecting: the greeting is read in poplib's __init__
        try:
            super().__init__(host, port, timeout=timeout, **tls)
        except BaseException:
            # poplib's __init__ leaves the connection open when the greeting fails (garbage, a reset, a
            # timeout): closed here, not whenever the garbage collector finds it.
            for part in (getattr(self, "file", None), getattr(self, "sock", None)):
                if part is not None:
                    with contextlib.suppress(OSError):
                        part.close()
            raise

    def _putcmd(self, line: str) -> None:
        _record_command(self.recorder, line)
        super()._putcmd(line)  # type: ignore[misc]  # private in poplib, not in typeshed

    def _getresp(self) -> bytes:
        return _recorded_answer(self.recorder, super()._getresp)  # type: ignore[misc]  # as _putcmd

    def _getlongresp(self) -> tuple[bytes, list[bytes], int]:
        return _bounded_long_answer(self)


class _Pop3Ssl(_Pop3, poplib.POP3_SSL):
    """The same over implicit TLS (`context` reaches POP3_SSL through _Pop3's keywords)."""

    def __init__(
        self, recorder: TranscriptRecorder | None, host: str, port: int, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(recorder, host, port, timeout, context=context)


class _Pop3Session:
    """One POP3 session in a worker thread; abort() from the event loop ends its blocking reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pop: poplib.POP3 | None = None
        self._aborted = False

    def attach(self, pop: poplib.POP3) -> None:
        with self._lock:
            self._pop = pop
            if self._aborted:
                self._shutdown()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            self._shutdown()

    def _shutdown(self) -> None:
        # The worker may be closing the session right now: poplib's close() sets sock to None.
        sock = self._pop.sock if self._pop is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Pop3Mailbox:
    """The probe's mailbox over POP3: a session per look (POP3 shows the maildrop as it was at login)."""

    idle = False

    def __init__(
        self,
        config: DeliveryMailboxConfig,
        env: ProbeEnv,
        timeouts: DeliveryTimeouts,
        recorder: TranscriptRecorder | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.step = timeouts.mailbox
        self.cleanup_timeout = timeouts.cleanup
        self.recorder = recorder
        self.password = ""

    async def _in_worker(self, what: str, job: Callable[[poplib.POP3], _T], limit: float) -> _T:
        """Connect, log in and run `job` in a worker thread; QUIT after it (which commits DELE)."""
        session = _Pop3Session()
        try:
            async with asyncio.timeout(limit):
                return await asyncio.to_thread(self._session, session, job)
        except TimeoutError:
            session.abort()
            raise ProbeFailure(Reason.TIMEOUT, f"POP3 {what}: not done within {limit:g}s") from None
        except ProbeFailure as failure:
            raise ProbeFailure(failure.reason, _scrubbed(f"POP3 {what}: {failure.message}", self.password)) from None

    def _session(self, session: _Pop3Session, job: Callable[[poplib.POP3], _T]) -> _T:
        config = self.config
        context = self.env.tls.get(config.ca_file, config.verify)
        servername = config.servername or config.host
        step = self.step
        pop: poplib.POP3 | None = None
        recorder = self.recorder
        if recorder is not None:
            recorder.note(f"POP3: trying {config.host} port {config.effective_port}")
        try:
            if config.tls == "implicit":
                # POP3_SSL takes no server name: wrap_socket gets it through a context that knows it
                named = cast(ssl.SSLContext, _NamedContext(context, servername))
                pop = _Pop3Ssl(recorder, config.host, config.effective_port, timeout=step, context=named)
                if recorder is not None:
                    recorder.tls(_tls_line(pop.sock, config.verify))
            else:
                pop = _Pop3(recorder, config.host, config.effective_port, timeout=step)
            session.attach(pop)
            if config.tls == "starttls":
                if "STLS" not in pop.capa():
                    raise ProbeFailure(Reason.NO_STARTTLS, "server does not offer STLS")
                pop.stls(context=cast(ssl.SSLContext, _NamedContext(context, servername)))
                if recorder is not None:
                    recorder.tls(_tls_line(pop.sock, config.verify))
            try:
                pop.user(config.username)
                pop.pass_(self.password)
            except poplib.error_proto as exc:
                text = _pop3_reply(exc, self.password)
                if not text.startswith("-ERR") or text == "-ERR EOF":
                    raise  # the connection broke, or the answer is not POP3: classified below
                # the text may echo what was sent: keep its response code only (RFC 2449: [AUTH], [IN-USE])
                code = re.match(r"-ERR (\[[A-Z/-]+\])", text)
                refused = f"login refused: -ERR {code[1] if code else ''}".rstrip()
                raise ProbeFailure(Reason.AUTH_FAILED, refused) from None
            result = job(pop)
            pop.quit()
            pop = None
            return result
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailure(Reason.TLS_VERIFY, f"certificate verification failed: {exc.verify_message}") from None
        except poplib.error_proto as exc:
            text = _pop3_reply(exc, self.password)
            reason = Reason.RESET if text == "-ERR EOF" else Reason.PROTOCOL
            raise ProbeFailure(reason, text) from None
        except (OSError, EOFError) as exc:
            if isinstance(exc, EOFError):
                raise ProbeFailure(Reason.RESET, "connection closed by server") from None
            raise classify(exc, step) from None
        finally:
            if pop is not None:
                with contextlib.suppress(OSError):
                    pop.close()

    async def open(self) -> None:
        self.password = self.config.password.reveal()
        await self._in_worker("login", lambda pop: None, self.step * 4)

    def _scan(self, pop: poplib.POP3, token: str, delete: bool) -> Found | None:
        count, _size = pop.stat()
        for number in range(count, max(count - MAX_POP3_SCAN, 0), -1):
            _, lines, _ = pop.top(number, 0)
            header = b"\r\n".join(lines) + b"\r\n"
            if carries_token(header, token):
                if delete:
                    pop.dele(number)
                return Found(INBOX, "", "", header, time.time(), time.monotonic())
        return None

    def _scan_probe(self, pop: poplib.POP3, probe: str, limit: int) -> list[Found]:
        count, _size = pop.stat()
        found: list[Found] = []
        for number in range(count, max(count - MAX_POP3_SCAN, 0), -1):
            _, lines, _ = pop.top(number, 0)
            header = b"\r\n".join(lines) + b"\r\n"
            if of_probe(header, probe):
                found.append(Found(INBOX, "", "", header, time.time(), time.monotonic()))
                if len(found) >= limit:
                    break
        return found

    async def own_messages(self, probe: str, limit: int) -> list[Found]:
        return await self._in_worker("sweep", lambda pop: self._scan_probe(pop, probe, limit), self.step * 4)

    async def wait_for(self, token: str, deadline: float) -> Found | None:
        while True:
            found = await self._in_worker("search", lambda pop: self._scan(pop, token, False), self.step * 4)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(remaining, self.config.poll_interval))

    async def delete(self, found: Found) -> str:
        token = _token_of(found.header)
        if token is None:
            return "no token in the header block"
        gone = await self._in_worker("delete", lambda pop: self._scan(pop, token, True), self.cleanup_timeout)
        return "" if gone is not None else "no longer in the maildrop"

    async def close(self) -> None:
        pass  # each look had its own session


def _token_of(header: bytes) -> str | None:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
    value = parsed.get(TOKEN_HEADER)
    return str(value).strip() if value is not None else None


def _pop3_reply(exc: poplib.error_proto, password: str) -> str:
    raw = exc.args[0] if exc.args else b""
    return _scrubbed(_printable(raw if isinstance(raw, bytes | str) else str(raw)), password)


class _NamedContext:
    """An SSLContext whose wrap_socket always names `servername` (poplib passes the host it connected to)."""

    def __init__(self, context: ssl.SSLContext, servername: str) -> None:
        self._context = context
        self._servername = servername

    def wrap_socket(self, sock: socket.socket, server_hostname: str | None = None) -> ssl.SSLSocket:
        return self._context.wrap_socket(sock, server_hostname=self._servername)
