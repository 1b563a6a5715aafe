"""The results store: per-probe state, status transitions and the events they publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

from monitor.config.schema import Config, DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import DeliveryLedger, DeliveryResult, EarlierMessage, PendingMessage
from monitor.model.probe_result import ProbeKind, ProbeResult
from monitor.model.results import SmtpResult, Status, TlsInfo
from monitor.state.shared_facts import SharedFacts

log = logging.getLogger("smtp_monitor.store")

ProbeConfig = SmtpProbeConfig | MxCheckConfig | DeliveryProbeConfig
# failed/recovered: status changes; cert_expiring: once per certificate; delivery_late/delivery_lost: a
# delivery probe's earlier message arrived after its deadline or was given up; pending_changed: a
# delivery probe's pending messages changed (saved at once, announced to nobody).
EventKind = Literal["failed", "recovered", "cert_expiring", "delivery_late", "delivery_lost", "pending_changed"]


def kind_of(config: ProbeConfig) -> ProbeKind:
    if isinstance(config, SmtpProbeConfig):
        return "smtp"
    return "delivery" if isinstance(config, DeliveryProbeConfig) else "mx"


def probe_entries(config: Config) -> list[tuple[ProbeConfig, int, int]]:
    """(probe config, alert_after, cert_warn_days) for every configured probe: what configure() takes."""
    d = config.defaults
    out: list[tuple[ProbeConfig, int, int]] = []
    for s in config.smtp:
        warn_days = d.cert_warn_days if s.cert_warn_days is None else s.cert_warn_days
        out.append((s, s.alert_after or d.alert_after, warn_days))
    for m in config.mx:
        out.append((m, m.alert_after or d.alert_after, d.cert_warn_days))
    for delivery in config.delivery:
        out.append((delivery, delivery.alert_after or d.alert_after, d.cert_warn_days))
    return out


@dataclass(frozen=True, slots=True, weakref_slot=True)  # readers may cache by state without pinning it
class ProbeState:
    """Everything known about one probe; replaced, never mutated, on every write."""

    name: str
    kind: ProbeKind
    config: ProbeConfig
    alert_after: int
    cert_warn_days: int
    status: Status = Status.UNKNOWN
    last_result: ProbeResult | None = None
    last_failure: ProbeResult | None = None  # the latest failed result (with its transcript), kept past recoveries
    consecutive_failures: int = 0
    runs: int = 0
    failures: int = 0
    # (phase, reason) -> count, for failures_total{phase,reason}
    failures_by_cause: Mapping[tuple[str, str], int] = field(default_factory=dict)
    last_success: float | None = None  # epoch seconds
    last_change: float | None = None
    cert_warned_for: str = ""  # fingerprint of the certificate already warned about
    # The latest completed TLS handshake: certificate facts stay known while the server is down.
    last_tls: TlsInfo | None = None
    last_tls_at: float | None = None
    # Delivery probes only: pending messages, late and lost counts, latency histogram.
    delivery: DeliveryLedger | None = None


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A status change (failed/recovered), a certificate coming close to expiry, or what became of a
    delivery probe's earlier message (`earlier` names it)."""

    kind: EventKind
    name: str
    probe_kind: ProbeKind
    old: Status
    new: Status
    state: ProbeState
    at: float
    earlier: EarlierMessage | None = None  # delivery_late, delivery_lost


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent, read-only view of the store at one version."""

    version: int
    taken_at: float
    states: Mapping[str, ProbeState]

    def of_kind(self, kind: ProbeKind) -> list[ProbeState]:
        return [s for s in self.states.values() if s.kind == kind]


Subscriber = Callable[[StoreEvent], None]
ResultHook = Callable[[str, ProbeResult], None]  # (probe name, result) of every recorded result


class ResultsStore:
    """Written only by the scheduler; read by exporters through snapshots."""

    def __init__(self, announce: bool = True) -> None:
        self._announce = announce  # log and publish status changes
        self._states: dict[str, ProbeState] = {}
        self._version = 0
        self._snapshot: Snapshot | None = None
        self._subscribers: list[Subscriber] = []
        self._result_hooks: list[ResultHook] = []
        self._facts = SharedFacts()  # equal facts of many results held once

    # -- configuration ---------------------------------------------------------
    def configure(self, entries: Iterable[tuple[ProbeConfig, int, int]]) -> tuple[list[str], list[str]]:
        """Set the probes (config, alert_after, cert_warn_days): new ones start unknown,
        changed ones start afresh, unchanged ones keep state and history.
        Returns the names added (or changed) and removed."""
        wanted = {cfg.name: (cfg, alert_after, warn) for cfg, alert_after, warn in entries}
        added = []
        states: dict[str, ProbeState] = {}
        for name, (cfg, alert_after, warn) in wanted.items():
            old = self._states.get(name)
            if old is not None and old.config == cfg:
                states[name] = replace(old, alert_after=alert_after, cert_warn_days=warn)
            else:
                kind = kind_of(cfg)
                ledger = DeliveryLedger() if kind == "delivery" else None
                states[name] = ProbeState(name, kind, cfg, alert_after, warn, delivery=ledger)
                added.append(name)
        removed = [name for name in self._states if name not in wanted]
        self._states = states
        self._bump()
        return added, removed

    def restore(self, states: Iterable[ProbeState]) -> int:
        """Put back states saved before a restart; returns how many were taken.

        A state is taken only when built on its probe's very config object, as restore_into builds
        them: checking identity instead of comparing 10,000 configs, and copying a state only when
        its thresholds are not the current ones, keeps a restart with saved states 0.35 s shorter."""
        taken = 0
        for state in states:
            current = self._states.get(state.name)
            if current is None or current.config is not state.config:
                continue
            if (state.alert_after, state.cert_warn_days) != (current.alert_after, current.cert_warn_days):
                state = replace(state, alert_after=current.alert_after, cert_warn_days=current.cert_warn_days)
            self._states[state.name] = state
            taken += 1
        if taken:
            self._bump()
        return taken

    # -- writes ----------------------------------------------------------------
    def record(self, name: str, result: ProbeResult) -> list[StoreEvent]:
        """Take one probe result; return (and publish) the events it caused."""
        old = self._states.get(name)
        if old is None:
            return []  # removed by a reload while it ran
        result = self._facts.result(result)
        now = time.time()
        if result.ok:
            consecutive = 0
            status = Status.OK
            failures, causes = old.failures, old.failures_by_cause
            last_success: float | None = now
        else:
            consecutive = old.consecutive_failures + 1
            status = Status.FAILED if consecutive >= old.alert_after else old.status
            failures = old.failures + 1
            cause = (
                result.phase.value if result.phase else "internal",
                result.reason.value if result.reason else "internal",
            )
            causes = {**old.failures_by_cause, cause: old.failures_by_cause.get(cause, 0) + 1}
            last_success = old.last_success
        changed = status is not old.status
        tls_seen = isinstance(result, SmtpResult) and result.tls is not None
        ledger = old.delivery
        if isinstance(result, DeliveryResult):
            ledger = (ledger or DeliveryLedger()).after(result)
        new = replace(
            old,
            last_tls=result.tls if isinstance(result, SmtpResult) and tls_seen else old.last_tls,
            last_tls_at=result.started_at if tls_seen else old.last_tls_at,
            status=status,
            last_result=result,
            last_failure=old.last_failure if result.ok else result,
            consecutive_failures=consecutive,
            runs=old.runs + 1,
            failures=failures,
            failures_by_cause=causes,
            last_success=last_success,
            last_change=now if changed else old.last_change,
            delivery=ledger,
        )
        events: list[StoreEvent] = []
        if changed and status is Status.FAILED:
            events.append(StoreEvent("failed", name, old.kind, old.status, status, new, now))
        elif changed and status is Status.OK and old.status is Status.FAILED:
            events.append(StoreEvent("recovered", name, old.kind, old.status, status, new, now))
        if isinstance(result, DeliveryResult):
            events += self._delivery_events(old, new, result, now, saved=bool(events))
        new, cert_event = self._cert_check(new, now)
        if cert_event:
            events.append(cert_event)
        self._states[name] = new
        self._bump()
        for hook in self._result_hooks:
            try:
                hook(name, result)
            except Exception:
                log.exception("result hook failed for %s", name)
        if self._announce:
            for event in events:
                self._publish(event)
        return events

    @staticmethod
    def _delivery_events(
        old: ProbeState, new: ProbeState, result: DeliveryResult, now: float, saved: bool
    ) -> list[StoreEvent]:
        """Late and lost earlier messages; else, unless a status change saves the state anyway, a change of
        the pending messages."""
        events = [
            StoreEvent(
                "delivery_late" if e.outcome == "late" else "delivery_lost",
                new.name,
                new.kind,
                old.status,
                new.status,
                new,
                now,
                earlier=e,
            )
            for e in result.earlier
        ]
        old_pending = old.delivery.pending if old.delivery is not None else ()
        if not events and not saved and new.delivery is not None and new.delivery.pending != old_pending:
            # Nothing to announce, but a pending message must survive a kill -9 of the agent.
            events.append(StoreEvent("pending_changed", new.name, new.kind, old.status, new.status, new, now))
        return events

    def _cert_check(self, state: ProbeState, now: float) -> tuple[ProbeState, StoreEvent | None]:
        result = state.last_result
        if not isinstance(result, SmtpResult) or result.tls is None or result.tls.cert is None:
            return state, None
        cert = result.tls.cert
        expiry = result.tls.chain_not_after or cert.not_after
        left = (expiry - datetime.fromtimestamp(now, UTC)).total_seconds() / 86400
        if left >= state.cert_warn_days:
            return replace(state, cert_warned_for=""), None
        if state.cert_warned_for == cert.sha256:
            return state, None  # one warning per certificate, not per probe run
        state = replace(state, cert_warned_for=cert.sha256)
        return state, StoreEvent("cert_expiring", state.name, state.kind, state.status, state.status, state, now)

    def _bump(self) -> None:
        self._version += 1
        self._snapshot = None

    def _publish(self, event: StoreEvent) -> None:
        if event.kind.startswith("delivery_") or event.kind == "pending_changed":
            self._publish_delivery(event)
        else:
            self._publish_status(event)

    def _publish_delivery(self, event: StoreEvent) -> None:
        earlier = event.earlier
        if earlier is not None and earlier.outcome == "late":
            log.warning(
                "delivery %s: message %s arrived late, %.1fs after submission",
                event.name,
                earlier.token,
                earlier.latency or 0.0,
            )
        elif earlier is not None:
            log.warning("delivery %s: message %s is lost (not arrived after lost_after)", event.name, earlier.token)
        self._tell(event)

    def _publish_status(self, event: StoreEvent) -> None:
        result = event.state.last_result
        detail = ""
        if result is not None and not result.ok:
            phase = result.phase.value if result.phase else "?"
            reason = result.reason.value if result.reason else "?"
            detail = f" phase={phase} reason={reason} error={result.error!r}"
        level = logging.INFO if event.kind == "recovered" else logging.WARNING
        what = "certificate expiring" if event.kind == "cert_expiring" else "status"
        log.log(
            level,
            "%s %s %s: %s -> %s%s",
            event.probe_kind,
            event.name,
            what,
            event.old.value,
            event.new.value,
            detail,
        )
        self._tell(event)

    def _tell(self, event: StoreEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed for %s", event.name)

    # -- reads -----------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def on_result(self, callback: ResultHook) -> None:
        """Call `callback` with every recorded result (history); it must be quick: it runs in record()."""
        self._result_hooks.append(callback)

    def snapshot(self) -> Snapshot:
        """The states at this moment; cheap when nothing changed since the last call."""
        snap = self._snapshot
        # Also check the version: /metrics renders in a worker thread, whose snapshot can be
        # cached just after a write in the loop cleared the cache, and would then stay stale.
        if snap is None or snap.version != self._version:
            version = self._version  # read before the states: a newer state is never labelled older
            snap = self._snapshot = Snapshot(version, time.time(), MappingProxyType(dict(self._states)))
        return snap

    def pending(self) -> dict[str, tuple[PendingMessage, ...]]:
        """Each delivery probe's messages not yet seen (what its next run looks for)."""
        return {
            name: state.delivery.pending
            for name, state in self._states.items()
            if state.delivery is not None and state.delivery.pending
        }

    @property
    def version(self) -> int:
        return self._version
