"""A probe's dialogue as it happened: each line sent and received with its time, bounded and redacted.

What an operator reads first when a probe goes red ("what did the server say?"), printed the way swaks
shows a session. The recorder lives in the probe; what leaves the probe is the frozen Transcript, with
every secret already replaced, so no reader (store, state database, pages, metrics) ever holds one.
"""

from __future__ import annotations

import base64
import enum
import struct
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

MAX_LINES = 64  # an SMTP handshake with STARTTLS against Postfix is about 32 lines
# A delivery run: the mailbox's login and search (IMAP ~25 lines, POP3 a session per look), the submission's
# handshake with AUTH and DATA (~40 against Postfix), then the find and delete (~10).
MAX_LINES_LONG = 160
MAX_BYTES = 16 * 1024  # all the text kept, after cutting long lines
MAX_LINE = 512  # characters of one line (RFC 5321 allows 512 octets per command line)
CUT_MARK = " [...]"  # ends a line that was cut
REDACTED = "<redacted>"
_MIN_RUN = 4  # base64 characters of a password run: shorter ones match ordinary text by chance


class Direction(enum.Enum):
    """Who spoke: the probe, the server, the TLS layer, or the probe's own note (connect, resolve)."""

    SENT = "C"
    RECEIVED = "S"
    TLS = "TLS"
    NOTE = "--"


_DIRECTIONS = tuple(Direction)
_DIRECTION_CODE = {direction: index for index, direction in enumerate(_DIRECTIONS)}
_VALUES = tuple(direction.value for direction in _DIRECTIONS)
_CODE_BY_VALUE = {value: code for code, value in enumerate(_VALUES)}
_ENTRY_TYPES = frozenset((list, tuple))  # a saved line, and one built in Python
_NUMBER_TYPES = frozenset((float, int))  # not bool: JSON true is no time
_DIRECTION_VALUES = frozenset(_VALUES)
_SENT, _RECEIVED, _TLS, _NOTE = (_DIRECTION_CODE[d] for d in _DIRECTIONS)


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    at: float  # seconds since the dialogue started
    direction: Direction
    text: str


class Transcript:
    """The recorded lines, oldest first; `cut` when lines beyond the recorder's bounds were dropped.

    Held compactly: the agent keeps two per probe (the last and the last failed run's), 10,000 probes
    of 20-30 lines each. As TranscriptLine objects a 20-line one takes 3.2 KB (30 MiB at 10,000 probes);
    as the texts (interned: run after run a server says the same lines, so they are held once) and
    the offsets and directions packed in bytes it takes 0.56 KB (bench/README.md). `lines` builds the line objects
    on each read (pages, the CLI), which is rare."""

    __slots__ = ("_at", "_directions", "_texts", "cut")

    def __init__(self, lines: Iterable[TranscriptLine] = (), cut: bool = False) -> None:
        lines = tuple(lines)
        self._texts: tuple[str, ...] = tuple(sys.intern(line.text) for line in lines)
        self._at = struct.pack(f"<{len(lines)}d", *(round(line.at, 6) for line in lines))
        self._directions = bytes(_DIRECTION_CODE[line.direction] for line in lines)
        self.cut = cut

    @classmethod
    def _packed(cls, texts: tuple[str, ...], at: bytes, directions: bytes, cut: bool) -> Transcript:
        transcript = cls.__new__(cls)
        transcript._texts, transcript._at, transcript._directions, transcript.cut = texts, at, directions, cut
        return transcript

    @property
    def lines(self) -> tuple[TranscriptLine, ...]:
        return tuple(self._iter())

    def _iter(self) -> Iterator[TranscriptLine]:
        offsets = struct.unpack(f"<{len(self._texts)}d", self._at)
        for at, code, text in zip(offsets, self._directions, self._texts, strict=True):
            yield TranscriptLine(at, _DIRECTIONS[code], text)

    def __len__(self) -> int:
        return len(self._texts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Transcript):
            return NotImplemented
        return (self._texts, self._at, self._directions, self.cut) == (
            other._texts,
            other._at,
            other._directions,
            other.cut,
        )

    def __hash__(self) -> int:
        return hash((self._texts, self._at, self._directions, self.cut))

    def __repr__(self) -> str:
        return f"Transcript(lines={self.lines!r}, cut={self.cut!r})"

    def shared(self, one: Callable[[Hashable, Any], Any]) -> Transcript:
        """This transcript with its texts and directions from `one`, a pool of equal values (SharedFacts): the
        probes of one server record the same lines run after run; the times stay this transcript's own."""
        texts = one(("transcript texts", self._texts), self._texts)
        directions = one(("transcript directions", self._directions), self._directions)
        if texts is self._texts and directions is self._directions:
            return self
        return Transcript._packed(texts, self._at, directions, self.cut)

    def __reduce__(self) -> tuple[Any, ...]:
        # From the probe process to the agent: three objects instead of one per line, interned on arrival.
        return (_unpickled, (self._texts, self._at, self._directions, self.cut))

    def as_text(self) -> str:
        """One line per entry, swaks style: time offset, who, text."""
        out = [f"{line.at:8.3f} {line.direction.value:>3} {line.text}" for line in self._iter()]
        if self.cut:
            out.append(f"{'':8} {'--':>3} transcript cut: what came after these {len(self)} lines was dropped")
        return "\n".join(out)

    # -- JSON (--json, the state database): {"lines": [[at, "S", text], ...], "cut": false} --------------
    def as_wire(self) -> dict[str, Any]:
        offsets = struct.unpack(f"<{len(self._texts)}d", self._at)
        lines = [
            [at, _VALUES[code], text] for at, code, text in zip(offsets, self._directions, self._texts, strict=True)
        ]
        return {"lines": lines, "cut": self.cut}

    @classmethod
    def from_wire(cls, data: Any) -> Transcript:
        """A saved transcript, checked column by column and packed as it is read: a restart reads 10,000
        of them before the agent is ready. Each column is checked by one call that runs in C (the set of
        offset types, the set of directions, interning each text): 10,000 of 17 lines take 0.106 s, against
        0.139 s with a test per value (2026-12-07) and 0.36 s with a TranscriptLine per line first."""
        if isinstance(data, Transcript):
            return data
        lines = data.get("lines", []) if isinstance(data, dict) else None
        if not isinstance(lines, list):
            raise ValueError("a transcript is {'lines': [[at, direction, text], ...], 'cut': bool}")
        lines = lines[:MAX_LINES_LONG]
        try:
            if not set(map(type, lines)) <= _ENTRY_TYPES:
                raise ValueError
            # lines of unequal lengths stop the strict zip, lines of another length than 3 the unpacking
            offsets, directions, texts = zip(*lines, strict=True) if lines else ((), (), ())
        except ValueError:
            raise ValueError("a transcript line is [at, direction, text]") from None
        try:
            # not bool (JSON true is no time); a list among the directions is unhashable: TypeError
            valid = set(map(type, offsets)) <= _NUMBER_TYPES and set(directions) <= _DIRECTION_VALUES
            kept = tuple(map(sys.intern, texts))  # TypeError for anything but a str
        except TypeError:
            valid = False
        if not valid:
            raise ValueError("a transcript line is [seconds, one of C S TLS --, text]")
        try:
            at_octets = struct.pack(f"<{len(offsets)}d", *offsets)
        except (struct.error, OverflowError):  # an integer beyond any float: a hand-made row
            raise ValueError("a transcript line's seconds are out of range") from None
        # a saved text is shown as the recorder would have kept it: a hand-made row cannot smuggle an escape
        if max(map(len, kept), default=0) > MAX_LINE or not all(map(str.isprintable, kept)):
            kept = tuple(
                text
                if len(text) <= MAX_LINE and text.isprintable()
                else sys.intern(_printable(text[:MAX_LINE])[:MAX_LINE])
                for text in kept
            )
        codes = bytes(map(_CODE_BY_VALUE.__getitem__, directions))
        return cls._packed(kept, at_octets, codes, bool(data.get("cut", False)))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.from_wire, serialization=core_schema.plain_serializer_function_ser_schema(cls.as_wire)
        )


def _unpickled(texts: tuple[str, ...], at: bytes, directions: bytes, cut: bool) -> Transcript:
    return Transcript._packed(tuple(sys.intern(text) for text in texts), at, directions, cut)


def _password_only_runs(raw: bytes) -> Iterator[str]:
    """The base64 characters that encode bytes of `raw` only, at each of the three alignments `raw` can
    have inside a longer base64 text (the AUTH PLAIN token puts the password behind "\\0user\\0")."""
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw + bytes(3)).decode()
        first = -(-8 * offset // 6)  # ceil: the first character after the secret's first bit
        end = 8 * (offset + len(raw)) // 6
        yield encoded[first:end]


def secret_forms(secret: str) -> set[str]:
    """The secret as text and in the encodings a dialogue carries it: base64 (AUTH PLAIN and LOGIN), with
    and without padding, its base64 characters inside a longer token (AUTH PLAIN), and each of these in
    hex (a server that dumps what it got)."""
    raw = secret.encode("utf-8", "surrogateescape")
    encoded = base64.b64encode(raw).decode()
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')  # as an IMAP quoted string carries it
    forms = {secret, quoted, encoded, encoded.rstrip("=")}
    forms.update(run for run in _password_only_runs(raw) if len(run) >= _MIN_RUN)
    hexed = [form.encode("utf-8", "surrogateescape").hex() for form in forms]
    forms.update(hexed)
    forms.update(form.upper() for form in hexed)
    return {form for form in forms if len(form) >= 3}  # a one-letter "secret" would blank out every line


class TranscriptRecorder:
    """Collects lines while a probe runs; `transcript()` gives the bounded, redacted result.

    Secrets are given up front (passwords) or as soon as they are read (add_secret), and replaced in
    every line, recorded before or after, in plain text, base64 and hex; a line the caller marks
    `secret` (an AUTH exchange) keeps only its command word or reply code.

    Lines are kept as three flat lists (offsets, direction codes, texts), packed once at the end: a line
    object per line cost more than the rest of the recording (2.5 against 1 us a line)."""

    __slots__ = ("_at", "_bytes", "_codes", "_cut", "_max_lines", "_secrets", "_t0", "_texts")

    def __init__(self, secrets: Iterable[str] = (), max_lines: int = MAX_LINES) -> None:
        self._t0 = time.perf_counter()
        self._max_lines = min(max_lines, MAX_LINES_LONG)
        self._at: list[float] = []
        self._codes = bytearray()
        self._texts: list[str] = []
        self._bytes = 0
        self._cut = False
        self._secrets: list[str] = []
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str) -> None:
        """A secret learned after the recorder started (a password read from a file): lines recorded
        before are redacted too."""
        if not secret:
            return
        new = secret_forms(secret) - set(self._secrets)
        if not new:
            return
        # longest first: a secret containing another is replaced whole
        self._secrets = sorted({*self._secrets, *new}, key=len, reverse=True)
        self._texts = [self._redact(text) for text in self._texts]
        self._bytes = sum(_size(text) for text in self._texts)

    def sent(self, text: str, secret: bool = False) -> None:
        self._add(_SENT, _command_only(text) if secret else text)

    def received(self, text: str, secret: bool = False) -> None:
        self._add(_RECEIVED, _command_only(text) if secret else text)

    def tls(self, text: str) -> None:
        self._add(_TLS, text)

    def note(self, text: str) -> None:
        self._add(_NOTE, text)

    def conclude(self, text: str) -> None:
        """The run's last word (why it failed): a note kept even past the bounds, in place of the last
        lines, so that a long dialogue cut short still ends with its outcome."""
        text = self._clean(text)
        size = _size(text)
        while self._texts and (len(self._texts) >= self._max_lines or self._bytes + size > MAX_BYTES):
            self._bytes -= _size(self._texts.pop())
            self._at.pop()
            self._codes.pop()
            self._cut = True
        self._append(_NOTE, text, size)

    def _add(self, code: int, text: str) -> None:
        if self._cut:
            return
        if len(self._texts) >= self._max_lines:
            self._cut = True
            return
        if self._secrets or not text.isprintable() or len(text) > MAX_LINE:
            text = self._clean(text)
        size = _size(text)
        if self._bytes + size > MAX_BYTES:
            self._cut = True
            return
        self._append(code, text, size)

    def _append(self, code: int, text: str, size: int) -> None:
        self._bytes += size
        self._at.append(time.perf_counter() - self._t0)
        self._codes.append(code)
        self._texts.append(text)

    def _clean(self, text: str) -> str:
        """Redacted, printable, at most MAX_LINE characters."""
        if self._secrets:
            text = self._redact(text)  # before escaping: a secret with control characters matches as sent
        text = _printable(text)
        if self._secrets:
            text = self._redact(text)
        if len(text) > MAX_LINE:
            text = text[: MAX_LINE - len(CUT_MARK)] + CUT_MARK
        return text

    def _redact(self, text: str) -> str:
        for form in self._secrets:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def transcript(self) -> Transcript:
        at = struct.pack(f"<{len(self._at)}d", *(round(at, 6) for at in self._at))
        return Transcript._packed(tuple(self._texts), at, bytes(self._codes), self._cut)


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _command_only(text: str) -> str:
    """An AUTH line without its credentials: "AUTH PLAIN <redacted>", "334 <redacted>"; a mailbox login
    keeps its tag and command ("a1 LOGIN <redacted>", "PASS <redacted>")."""
    words = text.split(" ", 2)
    verb = words[0].upper()
    if verb == "AUTH" and len(words) > 1:
        return f"{words[0]} {words[1]} {REDACTED}" if len(words) > 2 else f"{words[0]} {words[1]}"
    if verb in ("PASS", "USER", "LOGIN"):
        return f"{words[0]} {REDACTED}"
    if len(words) > 1 and words[1].upper() in ("LOGIN", "AUTHENTICATE"):  # an IMAP tag first
        return f"{words[0]} {words[1]} {REDACTED}"
    if words[0][:3].isdigit():
        return f"{words[0]} {REDACTED}"
    return REDACTED


def _printable(text: str) -> str:
    """Control characters (a server's garbage, a terminal escape) shown as \\xNN, never passed on."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
