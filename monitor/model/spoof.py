"""Typed facts of an MX check's spoof test: one forged message per exchange address, and what became of it.

Self-contained (only monitor.model.wire): monitor.model.results imports it for MxRecord.spoof.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from monitor.model.wire import to_wire


class SpoofOutcome(enum.Enum):
    """What one exchange address did with a message forged in the protected domain."""

    REFUSED = "refused"  # a 5xx at MAIL, RCPT or after DATA: what a protected domain's MX must do
    SPOOFABLE = "spoofable"  # the 250 after DATA: the forgery was accepted
    # no verdict: the domain's SPF authorises the agent's own address (the forgery would be legitimate),
    # its SPF could not be evaluated, or the MX answered 4xx (greylisting, a busy server)
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"  # no SMTP session to test: connection, TLS or protocol failure


class SpoofStep(enum.Enum):
    """Where the attempt ended: the refusing (or accepting) step, or the session before MAIL."""

    SESSION = "session"  # connect, greeting, EHLO, STARTTLS
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the reply to DATA or to the message's end: DMARC is decided there


@dataclass(frozen=True, slots=True)
class SpoofVerdict:
    """One Authentication-Results method's result on the accepted forgery (RFC 8601)."""

    method: str
    result: str
    authserv_id: str


@dataclass(frozen=True, slots=True)
class SpoofMailbox:
    """The accepted forgery as the named delivery probe's mailbox showed it."""

    found: bool
    folder: str = ""  # inbox or junk
    folder_name: str = ""  # the server's name of the folder
    verdicts: tuple[SpoofVerdict, ...] = ()
    deleted: bool = False
    error: str = ""  # why the mailbox could not be read, or why the message was left

    def verdict(self, method: str) -> str | None:
        return next((v.result for v in self.verdicts if v.method == method), None)


@dataclass(frozen=True, slots=True)
class SpoofAttempt:
    """One exchange address's answer to a forged message (MAIL FROM and From: in the protected domain)."""

    exchange: str
    address: str
    outcome: SpoofOutcome
    step: SpoofStep
    mail_from: str
    reply_code: int = 0  # the deciding reply (0: none)
    reply: str = ""
    error: str = ""
    source_address: str = ""  # the agent's address as the exchange saw it
    # check_host() of the protected domain for source_address (RFC 7208 2.6): pass makes the test inconclusive
    source_spf: str = ""
    message_id: str = ""  # the forgery's Message-ID, once it was sent
    mailbox: SpoofMailbox | None = None  # None: accepted but no mailbox named, or never accepted

    @property
    def spoofable(self) -> bool:
        return self.outcome is SpoofOutcome.SPOOFABLE

    def as_dict(self) -> dict[str, Any]:
        return to_wire(self)
