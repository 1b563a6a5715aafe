"""A probe's dialogue as it happened: each line sent and received with its time, bounded and redacted.

What an operator reads first when a probe goes red ("what did the server say?"), printed the way swaks
shows a session. The recorder lives in the probe; what leaves the probe is the frozen Transcript, with
every secret already replaced, so no reader (store, state database, pages, metrics) ever holds one.
"""

from __future__ import annotations

import base64
import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINES = 64  # an SMTP handshake with STARTTLS is about 12; a delivery run about 30
MAX_BYTES = 16 * 1024  # all the text kept, after cutting long lines
MAX_LINE = 512  # characters of one line (RFC 5321 allows 512 octets per command line)
CUT_MARK = " [...]"  # ends a line that was cut
REDACTED = "<redacted>"


class Direction(enum.Enum):
    """Who spoke: the probe, the server, the TLS layer, or the probe's own note (connect, resolve)."""

    SENT = "C"
    RECEIVED = "S"
    TLS = "TLS"
    NOTE = "--"


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    at: float  # seconds since the dialogue started
    direction: Direction
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """The recorded lines, oldest first; `cut` when lines beyond MAX_LINES or MAX_BYTES were dropped."""

    lines: tuple[TranscriptLine, ...] = ()
    cut: bool = False

    def as_text(self) -> str:
        """One line per entry, swaks style: time offset, who, text."""
        out = [f"{line.at:8.3f} {line.direction.value:>3} {line.text}" for line in self.lines]
        if self.cut:
            out.append(f"{'':8} {'--':>3} transcript cut at {MAX_LINES} lines / {MAX_BYTES} bytes")
        return "\n".join(out)


def _secret_forms(secret: str) -> set[str]:
    """The secret as text and in the encodings a dialogue carries it (AUTH PLAIN/LOGIN are base64)."""
    forms = {secret}
    raw = secret.encode()
    forms.add(base64.b64encode(raw).decode())
    return {form for form in forms if len(form) >= 3}  # a one-letter "secret" would blank out every line


class TranscriptRecorder:
    """Collects lines while a probe runs; `transcript()` gives the bounded, redacted result.

    Secrets are given up front (passwords, communities) and replaced in every line, in plain text and in
    base64; a line the caller marks `secret` (an AUTH exchange) keeps only its command word."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._t0 = time.perf_counter()
        self._lines: list[TranscriptLine] = []
        self._bytes = 0
        self._cut = False
        self._secrets = sorted({form for secret in secrets if secret for form in _secret_forms(secret)}, key=len)
        self._secrets.reverse()  # longest first: a secret containing another is replaced whole

    def add_secret(self, secret: str) -> None:
        """A secret learned after the recorder started (a password read from a file)."""
        if secret:
            self._secrets = sorted({*self._secrets, *_secret_forms(secret)}, key=len, reverse=True)

    def sent(self, text: str, secret: bool = False) -> None:
        self._add(Direction.SENT, _command_only(text) if secret else text)

    def received(self, text: str, secret: bool = False) -> None:
        self._add(Direction.RECEIVED, _command_only(text) if secret else text)

    def tls(self, text: str) -> None:
        self._add(Direction.TLS, text)

    def note(self, text: str) -> None:
        self._add(Direction.NOTE, text)

    def _add(self, direction: Direction, text: str) -> None:
        if self._cut:
            return
        if len(self._lines) >= MAX_LINES:
            self._cut = True
            return
        text = self._redact(_printable(text))
        if len(text) > MAX_LINE:
            text = text[: MAX_LINE - len(CUT_MARK)] + CUT_MARK
        size = len(text.encode())
        if self._bytes + size > MAX_BYTES:
            self._cut = True
            return
        self._bytes += size
        self._lines.append(TranscriptLine(round(time.perf_counter() - self._t0, 6), direction, text))

    def _redact(self, text: str) -> str:
        for form in self._secrets:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def transcript(self) -> Transcript:
        return Transcript(tuple(self._lines), self._cut)


def _command_only(text: str) -> str:
    """An AUTH line without its credentials: "AUTH PLAIN <redacted>", "334 <redacted>"."""
    words = text.split(" ", 2)
    if words and words[0].upper() == "AUTH" and len(words) > 1:
        return f"{words[0]} {words[1]} {REDACTED}" if len(words) > 2 else f"{words[0]} {words[1]}"
    if words and words[0].isdigit():
        return f"{words[0]} {REDACTED}"
    return REDACTED


def _printable(text: str) -> str:
    """Control characters (a server's garbage, a terminal escape) shown as \\xNN, never passed on."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
