"""Scripted and aiosmtpd-backed SMTP peers on 127.0.0.1 (port chosen by the OS), as async context managers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import os
import socket
import ssl
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiosmtpd.smtp import SMTP

HOST = "127.0.0.1"
GREETING = b"220 mail.test ESMTP fake\r\n"
_STOP_SPINS = 20  # loop iterations stop() grants transports to report connection_lost


class Then(enum.Enum):
    """What a scripted server does once it has written a step's `send` bytes."""

    NEXT = "next"  # go on with the next step
    START_TLS = "start_tls"  # become the TLS server on this connection (needs the server's tls context)
    NOT_TLS = "not_tls"  # wait for the client's TLS hello, answer it with plaintext, then hang
    CLOSE = "close"  # close gracefully (FIN)
    RESET = "reset"  # abort with a TCP RST (SO_LINGER 0)
    HANG = "hang"  # say nothing more, read and drop whatever comes, until the client goes away
    STREAM = "stream"  # send filler bytes without any line end, forever, until the client goes away
    RAW_GARBAGE = "raw_garbage"  # under TLS: bytes that are no TLS record, past the TLS layer; then hang


@dataclass(frozen=True, slots=True)
class Step:
    """One exchange: wait for a line starting with `expect` (None: send at once), send, then act.

    `pause`: seconds to wait before sending (a slow server, or a reply split across packets)."""

    expect: bytes | None
    send: bytes = b""
    then: Then = Then.NEXT
    pause: float = 0.0


@dataclass(slots=True)
class PeerConnection:
    """What one accepted connection saw and how it ended."""

    received: list[bytes] = field(default_factory=list)  # lines, without the line end
    unexpected: list[bytes] = field(default_factory=list)  # lines that did not match the script
    bytes_sent: int = 0
    tls_version: str | None = None  # set once TLS is up (implicit, or after a START_TLS step)
    tls_cipher: str | None = None
    peer_closed: bool = False  # the client closed or reset the connection
    error: str = ""  # an I/O or TLS error that ended the connection on our side
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class _PeerGone(Exception):
    """The client closed the connection (EOF) while the script was reading."""


class _BaseServer:
    """Start/stop plumbing shared by the fakes: bind 127.0.0.1:0, expose `.port`, stop cleanly."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    async def _listen(self) -> asyncio.Server:
        raise NotImplementedError

    async def start(self) -> Self:
        if self._server is None:
            self._server = await self._listen()
            self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class ScriptedSmtpServer(_BaseServer):
    """Plays the same script to every connection; keeps a PeerConnection record per connection.

    Once the script has run out the server answers QUIT with 221 and closes, and answers
    anything else with 502 (recording it as unexpected). A line that does not start with a
    step's `expect` (compared case-insensitively) is recorded as unexpected, answered with
    503 and the connection closed. Set `record=False` when running many connections (a
    benchmark): only the counters are kept then.
    """

    def __init__(
        self,
        script: Sequence[Step],
        *,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        not_tls_bytes: bytes = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n",
        filler: bytes = b"x" * 1024,
        record: bool = True,
        backlog: int = 128,
    ) -> None:
        super().__init__()
        if implicit_tls and tls is None:
            raise ValueError("implicit_tls needs a tls context")
        if tls is None and any(step.then is Then.START_TLS for step in script):
            raise ValueError("a START_TLS step needs a tls context")
        self.script = tuple(script)
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.not_tls_bytes = not_tls_bytes
        self.filler = filler
        self.record = record
        self.backlog = backlog
        self.connections: list[PeerConnection] = []
        self.accepted = 0
        self.peer_closed = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._handle,
            HOST,
            0,
            ssl=self.tls if self.implicit_tls else None,
            backlog=self.backlog,
        )

    @property
    def unexpected(self) -> list[bytes]:
        """Every line, over all recorded connections, that the script did not expect."""
        return [line for conn in self.connections for line in conn.unexpected]

    async def wait_finished(self, count: int = 1, timeout: float = 5.0) -> list[PeerConnection]:
        """The first `count` recorded connections, once each has ended; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.connections) < count:
                await asyncio.sleep(0.01)
            for conn in self.connections[:count]:
                await conn.finished.wait()
        return self.connections[:count]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await asyncio.sleep(0)  # let handler tasks of just-accepted connections register themselves
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _ in range(_STOP_SPINS):
            await asyncio.sleep(0)
        await server.wait_closed()

    # -- one connection -------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        conn = PeerConnection()
        if self.record:
            self.connections.append(conn)
        try:
            if self.implicit_tls:
                self._note_tls(conn, writer)
            await self._play(conn, reader, writer)
        except _PeerGone:
            conn.peer_closed = True
        except ConnectionError as exc:
            conn.peer_closed = True
            conn.error = f"{type(exc).__name__}: {exc}"
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            # ssl.SSLError is an OSError; ValueError is StreamReader's line-limit overrun
            conn.error = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            # Only stop() cancels handlers. Ending normally keeps Python 3.11's stream
            # done-callback from calling exception() on a cancelled task (and logging it).
            conn.error = "stopped"
        finally:
            if conn.peer_closed:
                self.peer_closed += 1
            writer.transport.abort()
            conn.finished.set()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _play(self, conn: PeerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for step in self.script:
            if step.expect is not None:
                line = await self._read_line(conn, reader)
                if not line.upper().startswith(step.expect.upper()):
                    conn.unexpected.append(line)
                    await self._send(conn, writer, b"503 5.5.1 unexpected command\r\n")
                    return
            if step.pause:
                await asyncio.sleep(step.pause)
            if step.send:
                await self._send(conn, writer, step.send)
            if not await self._then(step.then, conn, reader, writer):
                return
        await self._epilogue(conn, reader, writer)

    async def _then(
        self, then: Then, conn: PeerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Carry out a step's action; False when the connection is over."""
        if then is Then.NEXT:
            return True
        if then is Then.START_TLS:
            assert self.tls is not None
            await writer.start_tls(self.tls)
            self._note_tls(conn, writer)
            return True
        if then is Then.NOT_TLS:
            if not await reader.read(4096):  # the client's hello, or EOF
                raise _PeerGone
            await self._send(conn, writer, self.not_tls_bytes)
            await self._drop_until_eof(reader)
        elif then is Then.CLOSE:
            await self._close(writer)
        elif then is Then.RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif then is Then.HANG:
            await self._drop_until_eof(reader)
        elif then is Then.STREAM:
            while True:
                await self._send(conn, writer, self.filler)
        elif then is Then.RAW_GARBAGE:
            os.write(writer.get_extra_info("socket").fileno(), b"250 not a TLS record\r\n")  # past the TLS layer
            await self._drop_until_eof(reader)
        return False

    async def _epilogue(self, conn: PeerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await self._read_line(conn, reader)
            if line.upper().startswith(b"QUIT"):
                await self._send(conn, writer, b"221 2.0.0 bye\r\n")
                await self._close(writer)
                return
            conn.unexpected.append(line)
            await self._send(conn, writer, b"502 5.5.1 not in the script\r\n")

    async def _read_line(self, conn: PeerConnection, reader: asyncio.StreamReader) -> bytes:
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            raise _PeerGone  # EOF, possibly after a partial line
        line = raw.rstrip(b"\r\n")
        if self.record:
            conn.received.append(line)
        return line

    @staticmethod
    def _note_tls(conn: PeerConnection, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        conn.tls_version = ssl_object.version()
        conn.tls_cipher = ssl_object.cipher()[0]

    @staticmethod
    async def _send(conn: PeerConnection, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        conn.bytes_sent += len(data)
        await writer.drain()

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """Close gracefully: flush what is written, FIN (after close_notify under TLS)."""
        writer.close()
        with contextlib.suppress(TimeoutError):  # a TLS peer that never answers close_notify
            async with asyncio.timeout(2):
                await writer.wait_closed()

    @staticmethod
    async def _drop_until_eof(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass
        raise _PeerGone


# -- ready-made misbehaving peers ---------------------------------------------------
# Each returns a fresh, unstarted server; use it as `async with tarpit() as server:`.

EHLO_PLAIN = b"250-mail.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"
EHLO_STARTTLS = b"250-mail.test greets you\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
EHLO_AFTER_TLS = b"250-mail.test greets you\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
STARTTLS_GO = b"220 2.0.0 ready to start TLS\r\n"
QUIT = Step(b"QUIT", b"221 2.0.0 bye\r\n", Then.CLOSE)
INJECTED = b"250-INJECTED.example\r\n250 INJECTED\r\n"  # plaintext smuggled behind `220 ready`


def healthy(*, ehlo: bytes = EHLO_PLAIN) -> ScriptedSmtpServer:
    """Greets, answers EHLO with `ehlo`, says goodbye to QUIT."""
    return ScriptedSmtpServer([Step(None, GREETING), Step(b"EHLO ", ehlo), QUIT])


def healthy_starttls(tls: ssl.SSLContext, *, after_go: bytes = b"") -> ScriptedSmtpServer:
    """A good STARTTLS server; `after_go` is plaintext sent right behind `220 ready` (injection)."""
    return ScriptedSmtpServer(
        [
            Step(None, GREETING),
            Step(b"EHLO ", EHLO_STARTTLS),
            Step(b"STARTTLS", STARTTLS_GO + after_go, Then.START_TLS),
            Step(b"EHLO ", EHLO_AFTER_TLS),
            QUIT,
        ],
        tls=tls,
    )


def tarpit() -> ScriptedSmtpServer:
    """Accepts and never says anything."""
    return ScriptedSmtpServer([Step(None, b"", Then.HANG)])


def greeting_554() -> ScriptedSmtpServer:
    """Refuses service in the greeting (RFC 5321 3.1) and then waits for QUIT like a real MTA."""
    return ScriptedSmtpServer([Step(None, b"554 5.3.2 mail.test no SMTP service here\r\n", Then.HANG)])


def greeting_421() -> ScriptedSmtpServer:
    """Greets with 421 (service not available) and closes."""
    return ScriptedSmtpServer([Step(None, b"421 4.3.2 mail.test shutting down\r\n", Then.CLOSE)])


def endless_line() -> ScriptedSmtpServer:
    """Starts a greeting and never ends the line: keeps sending bytes until the client leaves."""
    return ScriptedSmtpServer([Step(None, b"220 ", Then.STREAM)])


def http_server() -> ScriptedSmtpServer:
    """An HTTP server on the SMTP port: answers the connection with `400 Bad Request` and closes."""
    return ScriptedSmtpServer(
        [
            Step(
                None,
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n",
                Then.CLOSE,
            )
        ]
    )


def reset_on_ehlo() -> ScriptedSmtpServer:
    """Greets, then answers EHLO with a TCP RST."""
    return ScriptedSmtpServer([Step(None, GREETING), Step(b"EHLO ", b"", Then.RESET)])


def ehlo_refused_helo_ok(ehlo_code: bytes = b"502") -> ScriptedSmtpServer:
    """An RFC 821 server: refuses EHLO (502 by default) and accepts HELO."""
    return ScriptedSmtpServer(
        [
            Step(None, GREETING),
            Step(b"EHLO ", ehlo_code + b" 5.5.1 command not recognized\r\n"),
            Step(b"HELO ", b"250 mail.test\r\n"),
            QUIT,
        ]
    )


def starttls_454() -> ScriptedSmtpServer:
    """Advertises STARTTLS and answers it with 454 (TLS not available)."""
    return ScriptedSmtpServer(
        [
            Step(None, GREETING),
            Step(b"EHLO ", EHLO_STARTTLS),
            Step(b"STARTTLS", b"454 4.7.0 TLS not available due to temporary reason\r\n"),
            QUIT,
        ]
    )


def no_starttls() -> ScriptedSmtpServer:
    """Does not advertise STARTTLS."""
    return healthy(ehlo=EHLO_PLAIN)


def starttls_then_plaintext() -> ScriptedSmtpServer:
    """Accepts STARTTLS, then answers the client's TLS hello with plaintext garbage."""
    return ScriptedSmtpServer(
        [Step(None, GREETING), Step(b"EHLO ", EHLO_STARTTLS), Step(b"STARTTLS", STARTTLS_GO, Then.NOT_TLS)]
    )


def starttls_then_silent() -> ScriptedSmtpServer:
    """Accepts STARTTLS, then never answers the TLS hello."""
    return ScriptedSmtpServer(
        [Step(None, GREETING), Step(b"EHLO ", EHLO_STARTTLS), Step(b"STARTTLS", STARTTLS_GO, Then.HANG)]
    )


def starttls_then_close() -> ScriptedSmtpServer:
    """Accepts STARTTLS, then closes the connection instead of a handshake."""
    return ScriptedSmtpServer(
        [Step(None, GREETING), Step(b"EHLO ", EHLO_STARTTLS), Step(b"STARTTLS", STARTTLS_GO, Then.CLOSE)]
    )


def _inside_tls(tls: ssl.SSLContext, then: Then) -> ScriptedSmtpServer:
    return ScriptedSmtpServer(
        [
            Step(None, GREETING),
            Step(b"EHLO ", EHLO_STARTTLS),
            Step(b"STARTTLS", STARTTLS_GO, Then.START_TLS),
            Step(b"EHLO ", b"", then),
        ],
        tls=tls,
    )


def starttls_then_close_notify(tls: ssl.SSLContext) -> ScriptedSmtpServer:
    """A good TLS handshake, then the EHLO inside TLS is answered with close_notify and a FIN."""
    return _inside_tls(tls, Then.CLOSE)


def starttls_then_raw_garbage(tls: ssl.SSLContext) -> ScriptedSmtpServer:
    """A good TLS handshake, then the EHLO inside TLS is answered with plaintext under the TLS layer."""
    return _inside_tls(tls, Then.RAW_GARBAGE)


def starttls_injection(tls: ssl.SSLContext) -> ScriptedSmtpServer:
    """Good TLS, but plaintext replies are smuggled right behind `220 ready` (must be discarded)."""
    return healthy_starttls(tls, after_go=INJECTED)


def slow_greeting(delay: float) -> ScriptedSmtpServer:
    """A healthy server that greets `delay` seconds after accepting the connection."""
    return ScriptedSmtpServer([Step(None, GREETING, pause=delay), Step(b"EHLO ", EHLO_PLAIN), QUIT])


def split_greeting(pause: float) -> ScriptedSmtpServer:
    """A healthy server whose two-line greeting comes in two packets, `pause` seconds apart."""
    return ScriptedSmtpServer(
        [
            Step(None, b"220-mail.test ESMTP\r\n"),
            Step(None, b"220 ready\r\n", pause=pause),
            Step(b"EHLO ", EHLO_PLAIN),
            QUIT,
        ]
    )


def close_before_greeting() -> ScriptedSmtpServer:
    """Accepts and closes at once (FIN) without a word."""
    return ScriptedSmtpServer([Step(None, b"", Then.CLOSE)])


def reset_before_greeting() -> ScriptedSmtpServer:
    """Accepts and resets the connection (RST) without a word."""
    return ScriptedSmtpServer([Step(None, b"", Then.RESET)])


def multiline() -> ScriptedSmtpServer:
    """Multi-line greeting and EHLO replies, with continuation lines and odd spacing."""
    return ScriptedSmtpServer(
        [
            Step(None, b"220-mail.test ESMTP\r\n220-no UCE\r\n220 ready\r\n"),
            Step(
                b"EHLO ",
                b"250-mail.test hello\r\n250-SIZE 35882577\r\n250-auth  PLAIN LOGIN \r\n"
                b"250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
            ),
            QUIT,
        ]
    )


def code_change_mid_reply() -> ScriptedSmtpServer:
    """Answers EHLO with a reply whose last line carries a different code."""
    return ScriptedSmtpServer([Step(None, GREETING), Step(b"EHLO ", b"250-mail.test\r\n251 SIZE 1000\r\n", Then.HANG)])


def quit_ignored() -> ScriptedSmtpServer:
    """A good server that never answers QUIT."""
    return ScriptedSmtpServer([Step(None, GREETING), Step(b"EHLO ", EHLO_PLAIN), Step(b"QUIT", b"", Then.HANG)])


def implicit_tls(tls: ssl.SSLContext) -> ScriptedSmtpServer:
    """A good SMTPS (port 465 style) server: TLS from the first byte."""
    return ScriptedSmtpServer([Step(None, GREETING), Step(b"EHLO ", EHLO_AFTER_TLS), QUIT], tls=tls, implicit_tls=True)


# -- aiosmtpd ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSeen:
    """TLS facts as the server saw them when an EHLO arrived."""

    version: str
    cipher: str


class RecordingHandler:
    """aiosmtpd handler that records each EHLO (and the TLS session it came over) and drops mail."""

    def __init__(self) -> None:
        self.ehlo_names: list[str] = []
        self.tls_seen: list[TlsSeen] = []

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the new-style hook must do what aiosmtpd would have done
        self.ehlo_names.append(hostname)
        transport = server.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            self.tls_seen.append(TlsSeen(version=ssl_object.version(), cipher=ssl_object.cipher()[0]))
        return responses

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        return "250 2.0.0 dropped"


class _TrackedSMTP(SMTP):
    """aiosmtpd's SMTP protocol, registered with its owner while connected."""

    def __init__(self, owner: AiosmtpdServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._owner._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._owner._live.discard(self)
            self._owner._lost.add(self)


class AiosmtpdServer(_BaseServer):
    """A real SMTP server (aiosmtpd's SMTP class) in the caller's event loop.

    `starttls` offers STARTTLS with that context; `implicit_tls` wraps the listening socket
    (SMTPS). The two exclude each other.
    """

    def __init__(
        self,
        *,
        hostname: str = "mail.test",
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        data_size_limit: int = 10_240_000,
        enable_smtputf8: bool = False,
        handler: RecordingHandler | None = None,
    ) -> None:
        super().__init__()
        if starttls is not None and implicit_tls is not None:
            raise ValueError("give starttls or implicit_tls, not both")
        self.hostname = hostname
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.data_size_limit = data_size_limit
        self.enable_smtputf8 = enable_smtputf8
        self.handler = handler or RecordingHandler()
        self._live: set[_TrackedSMTP] = set()
        self._lost: set[_TrackedSMTP] = set()

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self._protocol, HOST, 0, ssl=self.implicit_tls)

    def _protocol(self) -> _TrackedSMTP:
        return _TrackedSMTP(
            self,
            handler=self.handler,
            hostname=self.hostname,
            tls_context=self.starttls,
            require_starttls=False,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=self.enable_smtputf8,
            loop=asyncio.get_running_loop(),
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for proto in list(self._live):
            for transport in (proto.transport, getattr(proto, "_original_transport", None)):
                if isinstance(transport, asyncio.Transport):  # the TLS layer's and the socket's
                    transport.abort()
        # A session whose STARTTLS handshake failed may never get connection_lost() (asyncio's
        # SSL layer does not report it to the app protocol mid-handshake): cancel every
        # session's handler task ourselves rather than wait for aiosmtpd to do it.
        handlers = [getattr(p, "_handler_coroutine", None) for p in self._live | self._lost]
        tasks = [h for h in handlers if h is not None and not h.done()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        for _ in range(_STOP_SPINS):
            await asyncio.sleep(0)
        self._live.clear()
        self._lost.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


# -- a server that echoes credentials ------------------------------------------------

LOGIN_USER_PROMPT = b"334 VXNlcm5hbWU6\r\n"  # base64("Username:")


class EchoingAuthServer(_BaseServer):
    """STARTTLS, then AUTH PLAIN LOGIN offered, and every AUTH step's reply echoes what the client sent.

    `reply` is the template of the failing reply to the last AUTH line (the PLAIN token, or the
    LOGIN password): "{echo}" is that line as received, "{decoded}" its base64 decoding (NULs as
    spaces). AUTH LOGIN's second prompt echoes the username line as well. After the reply it
    answers RSET with 250, QUIT with 221 (and closes), anything else with 502. `received` holds
    every line of every connection, so a test can tell the credentials were really sent.
    """

    def __init__(
        self,
        tls: ssl.SSLContext,
        *,
        reply: str = "535 5.7.8 Authentication failed for token {echo}",
        mechanisms: str = "PLAIN LOGIN",
    ) -> None:
        super().__init__()
        self.tls = tls
        self.reply = reply
        self.mechanisms = mechanisms
        self.received: list[bytes] = []
        self.auth_attempts = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, HOST, 0)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _ in range(_STOP_SPINS):
            await asyncio.sleep(0)
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._dialogue(reader, writer)
        except (_PeerGone, OSError, ValueError, asyncio.IncompleteReadError):
            pass  # the client went away or broke TLS: the next connection gets a fresh dialogue
        except asyncio.CancelledError:
            pass  # stop(): end normally (see ScriptedSmtpServer._handle)
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, GREETING)
        while True:
            line = await self._line(reader)
            verb = line.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                tls_up = writer.get_extra_info("ssl_object") is not None
                offer = f"250-AUTH {self.mechanisms}" if tls_up else "250-STARTTLS"
                await self._send(writer, f"250-mail.test greets you\r\n{offer}\r\n250 8BITMIME\r\n".encode())
            elif verb == b"STARTTLS":
                await self._send(writer, STARTTLS_GO)
                await writer.start_tls(self.tls)
            elif verb == b"AUTH":
                self.auth_attempts += 1
                await self._auth(line, reader, writer)
            elif verb == b"RSET":
                await self._send(writer, b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                await self._send(writer, b"221 2.0.0 bye\r\n")
                writer.close()
                return
            else:
                await self._send(writer, b"502 5.5.1 not here\r\n")

    async def _auth(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        words = line.split(b" ")
        mechanism = words[1].upper() if len(words) > 1 else b""
        if mechanism == b"PLAIN":
            last = words[2] if len(words) > 2 else await self._prompt(reader, writer, b"334 \r\n")
        elif mechanism == b"LOGIN":
            user = await self._prompt(reader, writer, LOGIN_USER_PROMPT)
            last = await self._prompt(reader, writer, b"334 UGFzc3dvcmQ6 (after " + user + b")\r\n")
        else:
            await self._send(writer, b"504 5.5.4 unrecognized authentication type " + mechanism + b"\r\n")
            return
        await self._send(writer, self._render(last))

    def _render(self, echoed: bytes) -> bytes:
        try:
            decoded = base64.b64decode(echoed, validate=True).replace(b"\0", b" ").decode("utf-8", "replace")
        except ValueError:
            decoded = ""
        text = self.reply.format(echo=echoed.decode("ascii", "replace"), decoded=decoded)
        return text.encode() + b"\r\n"

    async def _prompt(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prompt: bytes) -> bytes:
        await self._send(writer, prompt)
        return await self._line(reader)

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            raise _PeerGone
        line = raw.rstrip(b"\r\n")
        self.received.append(line)
        return line

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()


class ServerThread:
    """Runs one of the fakes above in an event loop of its own, in a background thread, for tests
    whose client is another process (an agent under test)."""

    def __init__(self, server: _BaseServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-smtp", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        except BaseException:
            self._close_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
