"""Per-probe history: compact results, status changes and availability over 24 h / 7 d / 30 d.

First version of the agreed interface; the state database backing follows."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One probe run, compacted: what a history row keeps of a result."""

    at: float  # epoch seconds the run started
    ok: bool
    phase: str  # the failed phase; "" when ok
    reason: str  # "" when ok
    reply_code: int  # the failing reply's code; 0 when none
    total: float  # seconds (delivery probes: the delivery latency, 0.0 when none)
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    tls_version: str = ""  # "" when no TLS session
    cert_not_after: float | None = None  # epoch seconds the certificate (or its chain) expires


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A probe went from ok to failed or back, with why."""

    at: float
    old: str
    new: str
    phase: str
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class Availability:
    """Fractions (0..1) of ok runs over 24 h / 7 d / 30 d; None when no run in the window."""

    day: float | None
    week: float | None
    month: float | None


_NONE = Availability(None, None, None)


class History:
    """Synchronous, fast reads, safe from the event loop thread and from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: dict[str, deque[HistoryEntry]] = {}
        self._changes: dict[str, deque[StatusChange]] = {}

    def recent(self, name: str, limit: int = 60) -> list[HistoryEntry]:
        """The newest `limit` runs of `name`, newest first."""
        with self._lock:
            rows = list(self._recent.get(name, ()))
        return rows[::-1][:limit]

    def changes(self, name: str, limit: int = 50) -> list[StatusChange]:
        """The newest `limit` status changes of `name`, newest first."""
        with self._lock:
            rows = list(self._changes.get(name, ()))
        return rows[::-1][:limit]

    def availability(self, name: str) -> Availability:
        return self.availability_all().get(name, _NONE)

    def availability_all(self) -> Mapping[str, Availability]:
        """Every probe's availability, from memory."""
        return MappingProxyType({})
