"""Why a probe step failed: one exception type with a few kinds by step, and the one place that turns
what a step may raise (timeouts, sockets, TLS) into it.

A failure carries what the result reports: the phase (None: the phase the probe was in when it was
raised), the reason, the message (the result's `error`) and the server's reply when there is one.
"""

from __future__ import annotations

import errno
import ssl

from monitor.model.results import Phase, Reason, Reply

# Connect errors that say the address cannot be reached at all; any other OSError is a reset.
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN})


class ProbeFailure(Exception):
    """A probe step that failed, classified."""

    def __init__(self, reason: Reason, message: str, *, phase: Phase | None = None, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.reason = reason
        self.message = message
        self.reply = reply


class LookupFailure(ProbeFailure):
    """A DNS lookup that produced no usable answer."""

    def __init__(self, reason: Reason, message: str, authenticated: bool | None = None) -> None:
        super().__init__(reason, message)
        # NXDOMAIN and NODATA only: whether the denial carried the AD bit (a validated "no such record")
        self.authenticated = authenticated

    def as_dns(self) -> ProbeFailure:
        """A probe's view of the lookup of its own target: a timeout, or "dns" whatever the DNS said."""
        return self if self.reason in (Reason.TIMEOUT, Reason.DNS) else ProbeFailure(Reason.DNS, self.message)


class WireFailure(ProbeFailure):
    """The connection cannot go on: closed or reset (RESET), or not speaking SMTP (PROTOCOL).

    The message quotes the server text at fault; `bare` is the message without it, for where that
    text may echo credentials (AUTH)."""

    def __init__(self, reason: Reason, message: str, quoted: str = "") -> None:
        super().__init__(reason, f"{message}: {quoted!r}" if quoted else message)
        self.bare = message


class SessionFailure(ProbeFailure):
    """The server answered, but not as the probe requires; the session is still open (the probe ends it
    politely)."""


class ReplyFailure(SessionFailure):
    """The server answered a step with 4xx/5xx."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(Reason.REPLY, str(reply), reply=reply)


def classify(exc: ProbeFailure | OSError, timeout: float) -> ProbeFailure:
    """The failure an exception of a probe step stands for; `timeout` is the probe's, for the message.

    TimeoutError and ssl.SSLError are OSErrors too: they are told apart here, before the rest."""
    if isinstance(exc, ProbeFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return ProbeFailure(Reason.TIMEOUT, f"no answer within {timeout:g}s")
    if isinstance(exc, ssl.SSLError):
        # OpenSSL's errors carry a reason; one raised from Python code has none, and is told by its text
        return ProbeFailure(Reason.TLS, f"TLS error: {getattr(exc, 'reason', None) or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeFailure(Reason.REFUSED, "connection refused")
    if isinstance(exc, ConnectionResetError):
        return ProbeFailure(Reason.RESET, "connection reset by server")
    reason = Reason.UNREACHABLE if exc.errno in _UNREACHABLE else Reason.RESET
    return ProbeFailure(reason, exc.strerror or str(exc))
