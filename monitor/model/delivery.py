"""Delivery probe results: a message submitted, carried by the relays, found in a mailbox, removed again."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydantic import SerializerFunctionWrapHandler, model_serializer, model_validator

from monitor.model.results import Reason, Reply
from monitor.model.wire import IsoDatetime, as_object, ordered, status_and_total_in, status_and_total_out, to_wire


class DeliveryPhase(enum.Enum):
    """The step of a delivery run that failed."""

    SUBMIT = "submit"  # the SMTP dialogue that hands the message over (MSA or MX)
    DELIVER = "deliver"  # the relays and the delivery agent: arrival in time, folder, verdicts
    FETCH = "fetch"  # the mailbox session: connect, TLS, login, search, read the headers
    CLEANUP = "cleanup"  # deleting the probe's own message


class DeliveryReason(enum.Enum):
    """Reasons only a delivery run has; the others are the SMTP probe's (monitor.model.results.Reason)."""

    LATE = "late"  # not in the mailbox within deliver_within: still pending, may arrive later
    LOST = "lost"  # pending for longer than lost_after
    WRONG_FOLDER = "wrong_folder"  # arrived, but not in the folder of expect_folder
    AUTH_VERDICT = "auth_verdict"  # arrived, but an Authentication-Results verdict is not the expected one


@dataclass(frozen=True, slots=True)
class Hop:
    """One Received: header, in the order the message travelled (the first hop first)."""

    from_host: str  # the `from` clause's name as the sender announced it ("" when absent)
    by_host: str  # the host that added the header
    protocol: str  # the `with` clause: ESMTPSA, ESMTPS, LMTP...
    queue_id: str  # the `id` clause
    time: IsoDatetime | None  # the header's date; None when missing or unreadable
    delay: float | None  # seconds since the previous hop (the first: since submission); None if a time is missing


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """One method's result from the receiving side's Authentication-Results (RFC 8601)."""

    method: str  # spf, dkim, dmarc, ...
    result: str  # pass, fail, none, ...
    authserv_id: str


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of one delivery run."""

    name: str
    started_at: float  # epoch seconds the run started
    ok: bool
    phase: DeliveryPhase | None = None  # the failed phase; None when ok
    reason: Reason | DeliveryReason | None = None
    error: str = ""
    reply: Reply | None = None  # the SMTP reply that failed the submission, when one did
    token: str = ""  # the random token in X-Smtp-Monitor-Token ("" when nothing was submitted)
    message_id: str = ""
    submitted_to: str = ""  # "host:port" (the exchange, with via: mx) that accepted the message
    queue_id: str = ""  # from the 250 reply to the end of DATA, when the server names it
    submitted_at: float | None = None  # epoch seconds of that 250 reply
    arrived_at: float | None = None  # epoch seconds the mailbox showed the message
    latency: float | None = None  # seconds from the 250 reply to the mailbox showing it
    pending: bool = False  # submitted and not (yet) seen: a later run keeps looking for `token`
    late: bool = False  # arrived after deliver_within
    hops: tuple[Hop, ...] = ()
    verdicts: tuple[AuthVerdict, ...] = ()
    folder: str = ""  # "inbox", "junk" or "" (not found, or POP3 where the server chose)
    folder_name: str = ""  # the IMAP name of that folder
    deleted: bool = False  # the probe's message was removed from the mailbox
    cleanup_note: str = ""  # why a found message was left in place (not a failure: a later sweep removes it)
    idle: bool = False  # arrival was waited for with IMAP IDLE (else by polling)
    timings: dict[str, float] = field(default_factory=dict)  # phase value -> seconds
    total: float = 0.0

    def verdict(self, method: str) -> str | None:
        """The receiving side's result for `method` (spf, dkim, dmarc), None when it gave none."""
        return next((v.result for v in self.verdicts if v.method == method), None)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of `--json` (and, later, of the state database)."""
        return to_wire(self)

    # As the other results: "kind" and "status" first, the total inside "timings".
    @model_serializer(mode="wrap")
    def _wire(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        wire: dict[str, Any] = fields_of(self)
        status_and_total_out(wire)
        return {"kind": "delivery", **ordered(wire, ("status", "name", "started_at", "phase", "reason", "error"))}

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        status_and_total_in(wire)
        return wire
