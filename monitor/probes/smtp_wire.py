"""SMTP client wire protocol: bounded reply parsing and in-place TLS over an asyncio transport."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from monitor.model.failures import WireFailure
from monitor.model.results import Reason, Reply
from monitor.model.transcript import TranscriptRecorder

# RFC 5321 limits a reply line to 512 octets; real servers stay far below 1 KiB.
# Anything longer is not SMTP (or a tarpit feeding an endless line): stop reading.
MAX_LINE = 2048
MAX_REPLY_LINES = 100
MAX_BUFFER = 64 * 1024
_TLS_READ = 16 * 1024  # one TLS record's plaintext at most
_SOCKET_READ = 64 * 1024  # one pull off the socket: the buffer stays within MAX_LINE plus this


class WireTransport(Protocol):
    """What SmtpClientProtocol needs of its transport: an asyncio transport or a PulledSocket."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def abort(self) -> None: ...


class SmtpClientProtocol(asyncio.Protocol):
    """Buffers what the server sends, bounded, and hands out one reply at a time.

    TLS runs inside this protocol (an SSLObject over memory BIOs) instead of through loop.start_tls():
    asyncio's SSL transport costs more CPU per probe than the whole dialogue's own Python code.
    Probes attach it to their socket (attach_socket) and it reads when it needs bytes; as an
    asyncio protocol it is fed by data_received() instead."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self.transport: WireTransport | None = None
        self._pull: Callable[[], Awaitable[None]] | None = None  # set when the protocol reads on demand
        self.tls: ssl.SSLObject | None = None
        self._incoming = self._outgoing = ssl.MemoryBIO()
        self._handshake: asyncio.Future[None] | None = None  # set while the TLS handshake runs
        self.recorder: TranscriptRecorder | None = None  # every line received goes to it

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def attach_socket(self, sock: socket.socket) -> PulledSocket:
        """Read `sock` (connected, non-blocking) only when a reply or the handshake needs more bytes,
        instead of through an asyncio transport: see PulledSocket."""
        pulled = PulledSocket(sock, self)
        self.transport, self._pull = pulled, pulled.pull
        return pulled

    def data_received(self, data: bytes) -> None:
        if self.tls is not None:
            self._incoming.write(data)
            if self._handshake is not None:
                self._continue_handshake()
                return
            data = self._decrypt()
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER and self.transport is not None:
            # Never hold more than one bounded reply in memory: stop reading and let
            # read_reply() report the oversize.
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._lost(ConnectionResetError("connection closed by server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc or ConnectionResetError("connection closed by server"))

    def _lost(self, exc: BaseException) -> None:
        self._closed = self._closed or exc
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(WireFailure(Reason.RESET, "connection closed during the TLS handshake"))
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- dialogue ----------------------------------------------------------
    def discard_buffer(self) -> None:
        """Drop unread bytes. After STARTTLS, anything sent before the handshake
        is plaintext that an attacker may have injected (CVE-2011-0411 class)."""
        self._buffer.clear()

    def _record_unfinished(self) -> None:
        """The start of a line that never ended (an endless line, a close mid-reply): the recorder cuts it."""
        if self.recorder is not None and self._buffer:
            self.recorder.received(bytes(self._buffer[:MAX_LINE]).decode("utf-8", "replace"))

    # -- TLS ---------------------------------------------------------------
    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLObject:
        """Handshake as the client on this connection; the caller bounds the wait.

        Raises ssl.SSLError (SSLCertVerificationError when verification fails) or WireFailure(RESET)."""
        if self.transport is None or self.transport.is_closing() or self._closed is not None:
            raise WireFailure(Reason.RESET, "connection closed before the TLS handshake")
        self.discard_buffer()
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._handshake = handshake = asyncio.get_running_loop().create_future()
        try:
            self._continue_handshake()
            while self._pull is not None and not handshake.done():
                await self._pull()
            await handshake
        finally:
            self._handshake = None
        return self.tls

    def _continue_handshake(self) -> None:
        assert self.tls is not None
        assert self._handshake is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert tells the server why
            if not self._handshake.done():
                self._handshake.set_exception(exc)
            return
        self._flush()
        if not self._handshake.done():
            self._handshake.set_result(None)
        # Records after the server's Finished (session tickets, an early reply) came in the same read.
        self._buffer += self._decrypt()

    def _decrypt(self) -> bytes:
        """Every whole record's plaintext received so far; a TLS failure or close_notify ends the stream."""
        assert self.tls is not None
        out = b""
        while True:
            try:
                chunk = self.tls.read(_TLS_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._closed = self._closed or ConnectionResetError("connection closed by server")
                break
            except ssl.SSLError as exc:
                self._closed = self._closed or exc
                break
            if not chunk:
                self._closed = self._closed or ConnectionResetError("connection closed by server")
                break
            out += chunk
        self._flush()  # reading can answer the server (a key update)
        return out

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pending)

    def write(self, line: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise WireFailure(Reason.RESET, "connection closed before the command could be sent")
        if self.tls is None:
            self.transport.write(line)
            return
        if isinstance(self._closed, ssl.SSLError):
            raise self._closed  # the session is broken: report the TLS error, as a read would
        self.tls.write(line)
        self._flush()

    async def read_reply(self, secret: bool = False) -> Reply:
        """One complete (possibly multi-line) reply, or WireFailure; each line is recorded as it comes,
        garbage too (`secret`: an answer to AUTH, recorded without its text)."""
        lines: list[str] = []
        code: int | None = None
        recorder = self.recorder
        while True:
            line = await self._read_line()
            if recorder is not None:
                recorder.received(line, secret)
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in "- "):
                raise WireFailure(Reason.PROTOCOL, "not an SMTP reply", _printable(line))
            line_code = int(line[:3])
            if code is not None and line_code != code:
                raise WireFailure(Reason.PROTOCOL, f"reply code changed mid-reply: {code} then {line_code}")
            code = line_code
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(code, tuple(lines))
            if len(lines) >= MAX_REPLY_LINES:
                raise WireFailure(Reason.PROTOCOL, f"reply longer than {MAX_REPLY_LINES} lines")

    async def _read_line(self) -> str:
        while True:
            end = self._buffer.find(b"\n", 0, MAX_LINE + 1)
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if self.transport is not None and len(self._buffer) < MAX_BUFFER:
                    self.transport.resume_reading()
                return raw.rstrip(b"\r").decode("utf-8", "replace")
            if len(self._buffer) > MAX_LINE:
                self._record_unfinished()
                raise WireFailure(Reason.PROTOCOL, f"reply line longer than {MAX_LINE} bytes")
            if self._closed is not None:
                self._record_unfinished()
                if isinstance(self._closed, ssl.SSLError):
                    raise self._closed
                raise WireFailure(Reason.RESET, _closed_text(self._closed, bool(self._buffer)))
            if self._pull is not None:
                await self._pull()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class PulledSocket:
    """A connected socket read on demand: SmtpClientProtocol pulls bytes when it needs a reply.

    A dialogue only ever waits for the server's next reply, so nothing is lost by not reading
    ahead, and it is cheaper than an asyncio transport: no set-up and teardown callbacks, and no
    event-loop wake-up at all when the reply is already there when it is asked for. A STARTTLS
    probe takes 14 event-loop iterations instead of 19. Reads stay bounded: the protocol pulls
    only while it holds no complete line and at most MAX_LINE bytes."""

    def __init__(self, sock: socket.socket, protocol: SmtpClientProtocol) -> None:
        self._sock = sock
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._unsent = b""  # what the kernel did not take at once: sent before the next read
        self._closing = False

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._unsent:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            data = data[sent:]
        self._unsent += data

    async def pull(self) -> None:
        """Send what is left of the writes, then hand the next bytes (or the end) to the protocol."""
        try:
            if self._unsent:
                unsent, self._unsent = self._unsent, b""
                await self._loop.sock_sendall(self._sock, unsent)
            data = await self._loop.sock_recv(self._sock, _SOCKET_READ)
        except OSError as exc:
            self._lost(exc)
            return
        if data:
            self._protocol.data_received(data)
        else:
            self._closing = True  # as an asyncio transport closes once eof_received() returns False
            self._protocol.eof_received()

    def _lost(self, exc: OSError) -> None:
        self._closing = True
        self._protocol.connection_lost(exc)

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        pass  # reads happen only when the protocol asks

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        self._closing = True
        self._sock.close()


def _closed_text(exc: BaseException, partial: bool) -> str:
    what = "connection closed by server" if isinstance(exc, ConnectionResetError) else str(exc)
    return f"{what} in the middle of a reply" if partial else what


def _printable(line: str) -> str:
    return line[:80]


def parse_extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) to their parameters; the first line is the greeting."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions
