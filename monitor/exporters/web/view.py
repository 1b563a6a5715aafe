"""What the status page shows, as typed values built from a store snapshot and the history.

The overview sorts and filters every probe (10,000 at the scale target) but builds rows, charts and
history reads for one page of them only: that is what keeps it under 300 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol
from urllib.parse import urlencode

from markupsafe import Markup

from monitor.config.schema import DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import DeliveryLedger, DeliveryResult
from monitor.model.dialogues import dialogues
from monitor.model.probe_result import ProbeKind, ProbeResult
from monitor.model.results import MxRecord, MxResult, ReverseDns, SmtpResult, Status, TlsInfo
from monitor.model.transcript import Transcript
from monitor.state.history import Availability, HistoryEntry, StatusChange
from monitor.state.store import ProbeState

KINDS: tuple[ProbeKind, ...] = ("smtp", "mx", "delivery")
STATUSES: tuple[str, ...] = ("failed", "unknown", "ok")
KIND_NAMES: Mapping[str, str] = {"smtp": "SMTP", "mx": "MX check", "delivery": "delivery"}
_STATUS_RANK = {Status.FAILED: 0, Status.UNKNOWN: 1, Status.OK: 2}
MAX_QUERY = 100  # characters of the name filter: a probe name has at most 100
MAX_TEXT = 2000  # characters of a reply or error in a row: 100 rows stay a bounded page whatever a server sent
CHART_RUNS = 60  # the recent window of an overview row's chart
DETAIL_RUNS = 200  # runs listed on a probe's page
DETAIL_CHANGES = 50


class History(Protocol):
    """What the page reads of monitor.state.history.History (the agreed interface), so tests can fake it."""

    def recent(self, name: str, limit: int = 60) -> list[HistoryEntry]: ...
    def changes(self, name: str, limit: int = 50) -> list[StatusChange]: ...
    def availability(self, name: str) -> Availability: ...
    def availability_all(self) -> Mapping[str, Availability]: ...


class BadQuery(ValueError):
    """A query parameter out of its range (400)."""


@dataclass(frozen=True, slots=True)
class Filters:
    """The overview's query: kind, status, a name substring and the page; each validated and bounded."""

    kind: ProbeKind | None = None
    status: str | None = None
    name: str = ""
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        kind = query.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise BadQuery(f"kind must be one of {', '.join(KINDS)}")
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise BadQuery(f"status must be one of {', '.join(STATUSES)}")
        name = query.get("q", "").strip()
        if len(name) > MAX_QUERY:
            raise BadQuery(f"q is at most {MAX_QUERY} characters")
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            raise BadQuery("page must be a number") from None
        if not 1 <= page <= 1_000_000:
            raise BadQuery("page must be between 1 and 1000000")
        return cls(kind, status, name, page)

    def link(self, **change: str | int | None) -> str:
        """The query string of these filters with some changed (None drops one); values are plain tokens."""
        values: dict[str, str | int | None] = {"kind": self.kind, "status": self.status, "q": self.name, "page": None}
        values.update(change)
        kept = {key: value for key, value in values.items() if value not in (None, "") and (key, value) != ("page", 1)}
        return "?" + urlencode(kept) if kept else "?"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the last run failed: phase, reason, the server's reply and the error text."""

    phase: str
    reason: str
    reply: str
    error: str


@dataclass(frozen=True, slots=True)
class Chart:
    """An inline SVG of the recent runs, oldest left: green where runs were ok, a red bar per failed run,
    latency as a line over them. Numbers only: nothing in it came from a server.

    Built here as one string, the failed runs as one path, rather than an element per run in the
    template: at 100 rows of 60 runs that took the first overview page of 10,000 probes from 242 to 133 ms
    (median render, `python bench/status_page.py`, 2-core machine at load 7) and its HTML from 508 to 252 KB."""

    width: int
    height: int
    failed_path: str  # "M x 0h w v h h -w z" per failed run
    line: str  # polyline points
    max_latency: float
    runs: int
    failed: int

    @property
    def svg(self) -> Markup:
        w, h = self.width, self.height
        label = f"{self.runs} runs, {self.failed} failed, latency up to {self.max_latency * 1000:.0f} ms"
        failed = f'<path d="{self.failed_path}" fill="#ffc1bd"/>' if self.failed_path else ""
        return Markup(  # noqa: S704  # every value in it is a number formatted here
            f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{label}">'
            f'<title>{label}</title><rect width="{w}" height="{h}" fill="#d1f0d9"/>{failed}'
            f'<polyline points="{self.line}" fill="none" stroke="#0969da" stroke-width="1.2"/></svg>'
        )


@dataclass(frozen=True, slots=True)
class Row:
    """One probe in the overview (and the head of its page)."""

    name: str
    kind: ProbeKind
    status: str
    since: float | None  # epoch of the last status change
    runs: int
    consecutive_failures: int
    target: str
    last_run: float | None
    latency: float | None  # seconds, the last run's total
    failure: Failure | None
    availability: Availability | None  # None: history off
    cert_days: float | None
    chart: Chart | None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "since": _iso(self.since),
            "runs": self.runs,
            "consecutive_failures": self.consecutive_failures,
            "target": self.target,
            "last_run": _iso(self.last_run),
            "latency_seconds": self.latency,
            "failure": None
            if self.failure is None
            else {
                "phase": self.failure.phase,
                "reason": self.failure.reason,
                "reply": self.failure.reply,
                "error": self.failure.error,
            },
            "availability": None
            if self.availability is None
            else {"24h": self.availability.day, "7d": self.availability.week, "30d": self.availability.month},
            "cert_days_left": None if self.cert_days is None else round(self.cert_days, 2),
        }


@dataclass(frozen=True, slots=True)
class Overview:
    rows: tuple[Row, ...]
    filters: Filters
    matched: int  # probes passing the filters
    total: int  # every configured probe
    pages: int
    per_page: int
    counts: Mapping[str, int]  # by status, over every probe
    kind_counts: Mapping[str, int]
    history_on: bool
    generated_at: float

    @property
    def all_failed(self) -> bool:
        return self.total > 0 and self.counts.get("failed", 0) == self.total

    @property
    def none_ran(self) -> bool:
        return self.total > 0 and self.counts.get("unknown", 0) == self.total

    def as_json(self) -> dict[str, Any]:
        return {
            "generated_at": _iso(self.generated_at),
            "total": self.total,
            "matched": self.matched,
            "page": self.filters.page,
            "pages": self.pages,
            "per_page": self.per_page,
            "counts": dict(self.counts),
            "history": self.history_on,
            "probes": [row.as_json() for row in self.rows],
        }


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    """One address of one exchange of an MX check, with its SMTP probe and PTR verdict (first: the
    exchange's first address, which carries the exchange's own columns)."""

    record: MxRecord
    first: bool
    address: str
    probe: SmtpResult | None
    reverse: ReverseDns | None


def exchange_rows(result: MxResult) -> tuple[ExchangeRow, ...]:
    out: list[ExchangeRow] = []
    for record in result.records:
        probes = record.address_probes or ((record.probe,) if record.probe is not None else ())
        by_address = {p.address: p for p in probes}
        reverse = {r.address: r for r in record.reverse}
        addresses = record.addresses or ("",)
        for i, address in enumerate(addresses):
            probe = by_address.get(address) or (record.probe if i == 0 and not record.address_probes else None)
            out.append(ExchangeRow(record, i == 0, address, probe, reverse.get(address)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Dialogue:
    """One recorded dialogue of a run: `label` names the address or exchange when a run had several."""

    label: str
    transcript: Transcript


def transcripts(result: ProbeResult) -> tuple[Dialogue, ...]:
    """Every dialogue a result recorded, as the CLI prints them (monitor.model.dialogues): an SMTP probe's (one
    per address with address_family: both), the exchanges an MX check probed, a delivery run's. A label names
    the connection when a run had several, and always the exchange of an MX check."""
    recorded = [(heading, transcript) for heading, transcript in dialogues(result) if transcript is not None]
    labelled = len(recorded) > 1 or isinstance(result, MxResult)
    return tuple(Dialogue(heading if labelled else "", transcript) for heading, transcript in recorded)


@dataclass(frozen=True, slots=True)
class Detail:
    """One probe's page: its row, the typed last results and what the history holds."""

    row: Row
    state: ProbeState
    history_on: bool
    recent: tuple[HistoryEntry, ...]
    changes: tuple[StatusChange, ...]
    chart: Chart | None
    last_transcripts: tuple[Dialogue, ...]
    failure_transcripts: tuple[Dialogue, ...]
    failure_at: float | None
    tls: TlsInfo | None
    tls_at: float | None
    smtp: SmtpResult | None
    mx: MxResult | None
    exchanges: tuple[ExchangeRow, ...]
    delivery: DeliveryResult | None
    ledger: DeliveryLedger | None
    generated_at: float

    def as_json(self) -> dict[str, Any]:
        state = self.state
        return {
            **self.row.as_json(),
            "generated_at": _iso(self.generated_at),
            "last_result": state.last_result.as_dict() if state.last_result is not None else None,
            "last_failure": state.last_failure.as_dict() if state.last_failure is not None else None,
            "ledger": _ledger_json(self.ledger),
            "history": None
            if not self.history_on
            else {
                "recent": [_entry_json(e) for e in self.recent],
                "changes": [_change_json(c) for c in self.changes],
            },
        }


def overview(
    states: Mapping[str, ProbeState],
    history: History | None,
    filters: Filters,
    per_page: int,
    now: float,
    charts: bool = True,
) -> Overview:
    """One page of the overview; `charts` False (the JSON) reads no recent runs from the history."""
    # One pass over every probe: counts, and the chosen ones by status, each group then sorted by name
    # alone (a C-level key) instead of one sort by a (rank, name) key built in Python per probe.
    by_status: dict[Status, list[ProbeState]] = {status: [] for status in _STATUS_RANK}
    kind_counts: dict[str, int] = dict.fromkeys(KINDS, 0)
    everything = not (filters.kind or filters.status or filters.name)
    for state in states.values():
        kind_counts[state.kind] += 1
        if everything or _passes(state, filters):
            by_status[state.status].append(state)
    counts = dict.fromkeys(STATUSES, 0)
    for status, group in by_status.items():
        group.sort(key=_by_name)
        if everything:
            counts[status.value] = len(group)
    if not everything:
        for state in states.values():
            counts[state.status.value] += 1
    chosen = [state for status in _STATUS_RANK for state in by_status[status]]
    pages = max(1, math.ceil(len(chosen) / per_page))
    start = (min(filters.page, pages) - 1) * per_page
    availability = history.availability_all() if history is not None else None
    rows = tuple(
        row(state, history, availability.get(state.name) if availability is not None else None, now, charts)
        for state in chosen[start : start + per_page]
    )
    return Overview(
        rows, filters, len(chosen), len(states), pages, per_page, counts, kind_counts, history is not None, now
    )


_by_name = attrgetter("name")


def _passes(state: ProbeState, filters: Filters) -> bool:
    if filters.kind is not None and state.kind != filters.kind:
        return False
    if filters.status is not None and state.status.value != filters.status:
        return False
    return not filters.name or filters.name.lower() in state.name.lower()


def row(
    state: ProbeState,
    history: History | None,
    availability: Availability | None,
    now: float,
    with_chart: bool = True,
) -> Row:
    result = state.last_result
    recent = history.recent(state.name, CHART_RUNS) if history is not None and with_chart else []
    if history is not None and availability is None:
        availability = Availability(None, None, None)
    return Row(
        name=state.name,
        kind=state.kind,
        status=state.status.value,
        since=state.last_change,
        runs=state.runs,
        consecutive_failures=state.consecutive_failures,
        target=target_of(state),
        last_run=result.started_at if result is not None else None,
        latency=result.total if result is not None else None,
        failure=failure_of(result) if result is not None and not result.ok else None,
        availability=availability,
        cert_days=cert_days(state, now),
        chart=chart(recent) if recent else None,
    )


def detail(state: ProbeState, history: History | None, now: float) -> Detail:
    recent = tuple(history.recent(state.name, DETAIL_RUNS)) if history is not None else ()
    changes = tuple(history.changes(state.name, DETAIL_CHANGES)) if history is not None else ()
    availability = history.availability(state.name) if history is not None else None
    head = row(state, None, availability, now)
    result, failed = state.last_result, state.last_failure
    return Detail(
        row=head,
        state=state,
        history_on=history is not None,
        recent=recent,
        changes=changes,
        chart=chart(recent[:CHART_RUNS], width=480, height=80) if recent else None,
        last_transcripts=transcripts(result) if result is not None else (),
        failure_transcripts=transcripts(failed) if failed is not None else (),
        failure_at=failed.started_at if failed is not None else None,
        tls=state.last_tls,
        tls_at=state.last_tls_at,
        smtp=result if isinstance(result, SmtpResult) else None,
        mx=result if isinstance(result, MxResult) else None,
        exchanges=exchange_rows(result) if isinstance(result, MxResult) else (),
        delivery=result if isinstance(result, DeliveryResult) else None,
        ledger=state.delivery,
        generated_at=now,
    )


def target_of(state: ProbeState) -> str:
    config = state.config
    if isinstance(config, SmtpProbeConfig):
        return f"{config.host}:{config.effective_port} ({config.tls})"
    if isinstance(config, MxCheckConfig):
        return config.domain
    assert isinstance(config, DeliveryProbeConfig)
    submit = config.submit
    via = f"{submit.host}:{submit.effective_port}" if submit.host else f"MX of {config.recipient_domain}"
    mailbox = config.mailbox
    return f"{via} \u2192 {mailbox.protocol} {mailbox.host}:{mailbox.effective_port}"


def failure_of(result: ProbeResult) -> Failure:
    reply = result.reply if isinstance(result, SmtpResult | DeliveryResult) else None
    return Failure(
        phase=result.phase.value if result.phase is not None else "",
        reason=result.reason.value if result.reason is not None else "",
        reply=str(reply)[:MAX_TEXT] if reply is not None else "",
        error=result.error[:MAX_TEXT],
    )


def cert_days(state: ProbeState, now: float) -> float | None:
    """Days until the earliest expiry of the certificates last seen (an MX check: over its exchanges)."""
    expiries: list[datetime] = []
    if state.last_tls is not None:
        expiries += _expiry(state.last_tls)
    result = state.last_result
    if isinstance(result, MxResult):
        for record in result.records:
            for probe in record.address_probes or ((record.probe,) if record.probe else ()):
                if probe.tls is not None:
                    expiries += _expiry(probe.tls)
    if not expiries:
        return None
    return (min(expiries).timestamp() - now) / 86400


def _expiry(tls: TlsInfo) -> list[datetime]:
    if tls.chain_not_after is not None:
        return [tls.chain_not_after]
    return [tls.cert.not_after] if tls.cert is not None else []


def chart(entries: Iterable[HistoryEntry], width: int = 120, height: int = 24) -> Chart:
    """`entries` newest first (as History.recent gives them); drawn oldest left."""
    runs = list(entries)[::-1]
    count = len(runs)
    step = width / max(count, 1)
    top = max((e.total for e in runs), default=0.0) or 1.0
    bar = max(step - 0.5, 0.5)
    failed = [i for i, e in enumerate(runs) if not e.ok]
    spans: list[list[int]] = []  # consecutive failed runs as one bar: a probe down for the window is one
    for i in failed:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    path = "".join(
        f"M{first * step:.1f} 0h{(last - first) * step + bar:.1f}v{height}h-{(last - first) * step + bar:.1f}z"
        for first, last in spans
    )
    scale = (height - 2) / top
    line = " ".join(
        f"{i * step + step / 2:.1f},{height - 1 - scale * min(e.total, top):.1f}" for i, e in enumerate(runs)
    )
    return Chart(width, height, path, line, top, count, len(failed))


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": _iso(entry.at),
        "ok": entry.ok,
        "phase": entry.phase,
        "reason": entry.reason,
        "reply_code": entry.reply_code,
        "total": entry.total,
        "timings": dict(entry.timings),
        "tls_version": entry.tls_version,
        "cert_not_after": _iso(entry.cert_not_after),
    }


def _change_json(change: StatusChange) -> dict[str, Any]:
    return {
        "at": _iso(change.at),
        "old": change.old,
        "new": change.new,
        "phase": change.phase,
        "reason": change.reason,
        "error": change.error,
    }


def _ledger_json(ledger: DeliveryLedger | None) -> dict[str, Any] | None:
    if ledger is None:
        return None
    return {
        "pending": len(ledger.pending),
        "late": ledger.late,
        "lost": ledger.lost,
        "last_latency": ledger.last_latency,
        "latency_count": ledger.latency_count,
    }
