"""Delivery probe results: a message submitted, carried by the relays, found in a mailbox, removed again."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer, model_validator

from monitor.model.facts import DnsblFacts
from monitor.model.results import Reason, Reply
from monitor.model.transcript import Transcript
from monitor.model.wire import IsoDatetime, as_object, ordered, status_and_total_in, status_and_total_out, to_wire


class DeliveryPhase(enum.Enum):
    """The step of a delivery run that failed."""

    SUBMIT = "submit"  # the SMTP dialogue that hands the message over (MSA or MX)
    DELIVER = "deliver"  # the relays and the delivery agent: arrival in time, folder, verdicts
    FETCH = "fetch"  # the mailbox session: connect, TLS, login, search, read the headers
    CLEANUP = "cleanup"  # deleting the probe's own message
    INTERNAL = "internal"  # a bug: the probe raised instead of returning a result


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
    from_address: str = ""  # the sender's IP address in the from clause's comment ("[192.0.2.1]"); "" if none


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """One method's result from the receiving side's Authentication-Results (RFC 8601)."""

    method: str  # spf, dkim, dmarc, ...
    result: str  # pass, fail, none, ...
    authserv_id: str


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message submitted by an earlier run and not yet seen in the mailbox."""

    token: str
    submitted_at: float  # epoch seconds of the 250 that accepted it


@dataclass(frozen=True, slots=True)
class EarlierMessage:
    """What a run learned of a message an earlier run left pending: it arrived (late) or it is lost."""

    token: str
    submitted_at: float
    outcome: Literal["late", "lost"]
    arrived_at: float | None = None  # late only: epoch seconds the mailbox showed it
    latency: float | None = None  # late only: seconds from the 250 to the mailbox, across runs and restarts
    hops: tuple[Hop, ...] = ()  # late only: where it waited
    deleted: bool = False


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
    earlier: tuple[EarlierMessage, ...] = ()  # earlier runs' pending messages this run found or gave up
    # the hops' sending addresses in the configured DNSBL zones; None when none are configured (or no hops)
    dnsbl: DnsblFacts | None = None
    transcript: Transcript | None = None  # the submission's SMTP dialogue and the mailbox commands, redacted
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
        if wire["dnsbl"] is None:  # no DNSBL zones configured: the JSON as before they existed
            del wire["dnsbl"]
        return {"kind": "delivery", **ordered(wire, ("status", "name", "started_at", "phase", "reason", "error"))}

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        status_and_total_in(wire)
        return wire


# Delivery latency histogram bounds, seconds: from IDLE-fast local delivery to a queue retried for an hour.
LATENCY_BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)
MAX_PENDING = 50  # pending messages kept per probe: beyond, the oldest is counted lost (a mail loop's bound)


@dataclass(frozen=True, slots=True)
class DeliveryLedger:
    """What a delivery probe carries from run to run: its pending messages, late and lost counts and the
    latency histogram. The store keeps it (and saves it across restarts); the scheduler keeps the
    pending part to hand to the next run. Both advance it with `after`."""

    pending: tuple[PendingMessage, ...] = ()
    late: int = 0  # messages that arrived after their run's deadline (found by a later run)
    lost: int = 0  # messages given up after lost_after
    # Cumulative per bucket of LATENCY_BUCKETS, then +Inf (the Prometheus histogram's shape).
    latency_buckets: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    latency_sum: float = 0.0
    latency_count: int = 0
    last_latency: float | None = None  # seconds, of the latest message that arrived (in time or late)

    def after(self, result: DeliveryResult) -> DeliveryLedger:
        """The ledger once `result` is taken: its own message pending or arrived, earlier ones resolved."""
        resolved = {earlier.token for earlier in result.earlier}
        pending = [p for p in self.pending if p.token not in resolved]
        if result.pending and result.token and result.submitted_at is not None:
            pending.append(PendingMessage(result.token, result.submitted_at))
        overflow = max(len(pending) - MAX_PENDING, 0)
        latencies = [result.latency] if result.latency is not None and not result.pending else []
        latencies += [e.latency for e in result.earlier if e.outcome == "late" and e.latency is not None]
        return replace(
            self._observed(latencies),
            pending=tuple(pending[overflow:]),
            late=self.late + sum(1 for e in result.earlier if e.outcome == "late"),
            lost=self.lost + overflow + sum(1 for e in result.earlier if e.outcome == "lost"),
        )

    def _observed(self, latencies: Iterable[float]) -> DeliveryLedger:
        buckets, total, count, last = list(self.latency_buckets), self.latency_sum, self.latency_count, None
        for latency in latencies:
            for i, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
                if latency <= bound:
                    buckets[i] += 1
            total += latency
            count += 1
            last = latency
        if last is None:
            return self
        return replace(self, latency_buckets=tuple(buckets), latency_sum=total, latency_count=count, last_latency=last)

    def as_dict(self) -> dict[str, Any]:
        """The saved form (the state database)."""
        return to_wire(self)
