"""SMTP client wire protocol: bounded reply parsing over an asyncio transport."""

from __future__ import annotations

import asyncio
import ssl

from monitor.results import Reply

# RFC 5321 limits a reply line to 512 octets; real servers stay far below 1 KiB.
# Anything longer is not SMTP (or a tarpit feeding an endless line): stop reading.
MAX_LINE = 2048
MAX_REPLY_LINES = 100
MAX_BUFFER = 64 * 1024


class WireError(Exception):
    """A dialogue step that cannot go on; `kind` names the failure class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "protocol", "reset"


class SmtpClientProtocol(asyncio.Protocol):
    """Buffers what the server sends, bounded, and hands out one reply at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self.transport: asyncio.Transport | None = None

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER and self.transport is not None:
            # Never hold more than one bounded reply in memory: stop reading and let
            # read_reply() report the oversize.
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._closed = self._closed or ConnectionResetError("connection closed by server")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._closed or exc or ConnectionResetError("connection closed by server")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- dialogue ----------------------------------------------------------
    def discard_buffer(self) -> None:
        """Drop unread bytes. After STARTTLS, anything sent before the handshake
        is plaintext that an attacker may have injected (CVE-2011-0411 class)."""
        self._buffer.clear()

    def reset_after_tls(self) -> None:
        """start_tls() moves the transport; the old one reports a close we must forget."""
        self._closed = None
        self._buffer.clear()

    def write(self, line: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise WireError("reset", "connection closed before the command could be sent")
        self.transport.write(line)

    async def read_reply(self) -> Reply:
        """One complete (possibly multi-line) reply, or WireError."""
        lines: list[str] = []
        code: int | None = None
        while True:
            line = await self._read_line()
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in "- "):
                raise WireError("protocol", f"not an SMTP reply: {_printable(line)!r}")
            line_code = int(line[:3])
            if code is not None and line_code != code:
                raise WireError("protocol", f"reply code changed mid-reply: {code} then {line_code}")
            code = line_code
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(code, tuple(lines))
            if len(lines) >= MAX_REPLY_LINES:
                raise WireError("protocol", f"reply longer than {MAX_REPLY_LINES} lines")

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
                raise WireError("protocol", f"reply line longer than {MAX_LINE} bytes")
            if self._closed is not None:
                if isinstance(self._closed, ssl.SSLError):
                    raise self._closed
                raise WireError("reset", _closed_text(self._closed, bool(self._buffer)))
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


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
