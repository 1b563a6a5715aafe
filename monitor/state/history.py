"""Per-probe history in the state database: every result compacted, status changes, hourly and daily rollups.

Results reach History.on_result on the event loop, which only compacts them and queues them; a writer thread
writes the queue in one transaction every `flush_interval` seconds (or `batch_rows` rows) on its own SQLite
connection, so the event loop never waits on the disk. Retention (count and age per probe) runs in bulk from
that thread. Availability over 24 h / 7 d / 30 d is kept in memory (per probe, 24 hourly and 30 daily counts),
rebuilt from the rollup tables at start, so availability_all() for 10,000 probes is one dictionary.

Windows: "24 h" is the current hour and the 23 before it; "7 d" and "30 d" are the current UTC day and the 6 or
29 before it. A run counts as available when its result was ok (not the alerting status, which waits for
alert_after failures). Latency percentiles count ok runs only (a failed run's time is often a timeout), on a
fixed histogram of 2^(1/8) steps: a percentile is the upper bound of its bucket, at most 9 % above the truth.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from monitor.config.schema import HistoryConfig
from monitor.model.delivery import DeliveryResult
from monitor.model.probe_result import ProbeResult
from monitor.model.results import SmtpResult
from monitor.state.health import AgentHealth
from monitor.state.store import StoreEvent

log = logging.getLogger("smtp_monitor.history")

SCHEMA_VERSION = 1
SCHEMA_KEY = "history_schema"  # in the state database's meta table, apart from the probe states' version
HOUR = 3600
DAY = 86400
ERROR_CHARS = 300  # a status change keeps this much of the error text
MAX_QUEUED = 200_000  # rows waiting for the writer; beyond, the oldest are dropped (a stuck disk costs no memory)
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history_probe (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS history_timing_name (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS history_result (
    probe INTEGER NOT NULL,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    reply_code INTEGER NOT NULL,
    total INTEGER NOT NULL,
    timings BLOB NOT NULL,
    tls_version TEXT NOT NULL,
    cert_not_after INTEGER,
    PRIMARY KEY (probe, at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_hourly (
    probe INTEGER NOT NULL,
    start INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    latency BLOB NOT NULL,
    PRIMARY KEY (probe, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_daily (
    probe INTEGER NOT NULL,
    start INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    latency BLOB NOT NULL,
    PRIMARY KEY (probe, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_change (
    id INTEGER PRIMARY KEY,
    probe INTEGER NOT NULL,
    at INTEGER NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_change_probe ON history_change (probe, at, id);
"""
_UPSERT = (
    " VALUES (?,?,?,?,?) ON CONFLICT (probe, start) DO UPDATE SET runs = runs + excluded.runs, "
    "failures = failures + excluded.failures, latency = merge_histograms(latency, excluded.latency)"
)
_UPSERT_HOURLY = "INSERT INTO history_hourly" + _UPSERT
_UPSERT_DAILY = "INSERT INTO history_daily" + _UPSERT
_SELECT_HOURLY = "SELECT start, runs, failures, latency FROM history_hourly WHERE probe = ? ORDER BY start DESC LIMIT ?"
_SELECT_DAILY = "SELECT start, runs, failures, latency FROM history_daily WHERE probe = ? ORDER BY start DESC LIMIT ?"
# Units of the stored integers (compact in SQLite's variable-length integers): `at` of results and changes in
# milliseconds, `total` and the timings in microseconds, cert_not_after in seconds, rollup starts in seconds.


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One probe run, compacted: what a history row keeps of a result."""

    at: float  # epoch seconds the run started
    ok: bool
    phase: str  # the failed phase; "" when ok
    reason: str  # "" when ok
    reply_code: int  # the failing reply's code; 0 when none
    total: float  # seconds (delivery probes: the delivery latency, 0.0 when the message did not arrive)
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    tls_version: str = ""  # "" when no TLS session
    cert_not_after: float | None = None  # epoch seconds the certificate (or its chain) expires


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A probe went from ok (or unknown) to failed or back, with why."""

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


@dataclass(frozen=True, slots=True)
class Rollup:
    """An hour's or a UTC day's runs of one probe."""

    start: float  # epoch seconds the hour or day began
    runs: int
    failures: int
    p50: float | None  # seconds, ok runs only; None when none was ok
    p95: float | None


NO_AVAILABILITY = Availability(None, None, None)
Period = Literal["hour", "day"]


# -- latency histogram ---------------------------------------------------------------------------------------
BUCKET_BASE = 0.001  # bucket 0 holds everything up to 1 ms
BUCKETS_PER_DOUBLING = 8
BUCKET_COUNT = 160  # the last bucket's bound is 0.001 * 2^(159/8) s, about 16 minutes: above, all in it
_PAIR = struct.Struct("<BI")


def bucket_of(seconds: float) -> int:
    if seconds <= BUCKET_BASE:
        return 0
    # the epsilon keeps an exact bound (0.128 s) in its own bucket despite the division's rounding
    index = math.ceil(BUCKETS_PER_DOUBLING * math.log2(seconds / BUCKET_BASE) - 1e-9)
    return min(index, BUCKET_COUNT - 1)


def bucket_bound(index: int) -> float:
    return BUCKET_BASE * 2 ** (index / BUCKETS_PER_DOUBLING)


def encode_histogram(counts: Mapping[int, int]) -> bytes:
    """Sparse: (bucket, count) pairs, 5 bytes each; a steady probe fills a handful of buckets."""
    return b"".join(_PAIR.pack(i, c) for i, c in sorted(counts.items()) if c > 0)


def decode_histogram(blob: bytes) -> dict[int, int]:
    usable = len(blob) - len(blob) % _PAIR.size  # a torn blob loses its tail, not the row
    return {i: c for i, c in _PAIR.iter_unpack(blob[:usable]) if i < BUCKET_COUNT}


def percentile(counts: Mapping[int, int], q: float) -> float | None:
    """Nearest-rank percentile: the bound of the bucket holding the ceil(q * n)-th value."""
    n = sum(counts.values())
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return bucket_bound(index)
    return bucket_bound(max(counts))


def _merge_histograms(old: bytes | None, new: bytes | None) -> bytes:
    merged = decode_histogram(old or b"")
    for i, c in decode_histogram(new or b"").items():
        merged[i] = merged.get(i, 0) + c
    return encode_histogram(merged)


# -- compacting ------------------------------------------------------------------------------------------------
def compact(result: ProbeResult) -> HistoryEntry:
    """What history keeps of a result (on the event loop: cheap, no I/O)."""
    phase = result.phase.value if result.phase is not None else ""
    reason = result.reason.value if result.reason is not None else ""
    if isinstance(result, SmtpResult):
        tls = result.tls
        expiry = None
        if tls is not None:
            when = tls.chain_not_after or (tls.cert.not_after if tls.cert is not None else None)
            expiry = when.timestamp() if when is not None else None
        return HistoryEntry(
            result.started_at,
            result.ok,
            phase,
            reason,
            result.reply_code,
            result.total,
            result.timings,
            tls.version if tls is not None else "",
            expiry,
        )
    if isinstance(result, DeliveryResult):
        reply = result.reply.code if result.reply is not None else 0
        latency = result.latency if result.latency is not None else 0.0
        return HistoryEntry(result.started_at, result.ok, phase, reason, reply, latency, result.timings)
    return HistoryEntry(result.started_at, result.ok, phase, reason, 0, result.total, result.timings)


# -- in-memory availability ------------------------------------------------------------------------------------
HOURS_KEPT = 24
DAYS_KEPT = 30
_H_RUNS, _H_FAILS = 0, HOURS_KEPT
_D_RUNS, _D_FAILS = 2 * HOURS_KEPT, 2 * HOURS_KEPT + DAYS_KEPT
_COUNTS_LEN = 2 * (HOURS_KEPT + DAYS_KEPT)


class _Windows:
    """Per probe, runs and failures of the last 24 hours and 30 days in rings of one flat uint32 array each
    (432 bytes a probe: 4.3 MB for 10,000). Written by the writer thread only."""

    def __init__(self) -> None:
        self.counts: dict[str, array[int]] = {}
        self.hour = 0  # the newest hour (epoch // 3600) the rings hold
        self.day = 0

    def advance(self, now: float) -> bool:
        """Move the newest hour and day to `now`'s, emptying the slots that fall out; True if they moved."""
        hour, day = int(now // HOUR), int(now // DAY)
        moved = False
        if hour > self.hour:
            cleared = range(max(self.hour + 1, hour - HOURS_KEPT + 1), hour + 1)
            for counts in self.counts.values():
                for h in cleared:
                    counts[_H_RUNS + h % HOURS_KEPT] = counts[_H_FAILS + h % HOURS_KEPT] = 0
            self.hour, moved = hour, True
        if day > self.day:
            cleared = range(max(self.day + 1, day - DAYS_KEPT + 1), day + 1)
            for counts in self.counts.values():
                for d in cleared:
                    counts[_D_RUNS + d % DAYS_KEPT] = counts[_D_FAILS + d % DAYS_KEPT] = 0
            self.day, moved = day, True
        return moved

    def add(self, name: str, hour: int, day: int, runs: int, failures: int, hourly: bool = True) -> None:
        counts = self.counts.get(name)
        if counts is None:
            counts = self.counts[name] = array("I", bytes(4 * _COUNTS_LEN))
        if hourly and self.hour - HOURS_KEPT < hour <= self.hour:
            counts[_H_RUNS + hour % HOURS_KEPT] += runs
            counts[_H_FAILS + hour % HOURS_KEPT] += failures
        if not hourly and self.day - DAYS_KEPT < day <= self.day:
            counts[_D_RUNS + day % DAYS_KEPT] += runs
            counts[_D_FAILS + day % DAYS_KEPT] += failures

    def availability(self, name: str) -> Availability:
        counts = self.counts.get(name)
        if counts is None:
            return NO_AVAILABILITY
        day_runs = sum(counts[_H_RUNS:_H_FAILS])
        day_fails = sum(counts[_H_FAILS:_D_RUNS])
        week = [(self.day - i) % DAYS_KEPT for i in range(7)]
        week_runs = sum(counts[_D_RUNS + i] for i in week)
        week_fails = sum(counts[_D_FAILS + i] for i in week)
        month_runs = sum(counts[_D_RUNS:_D_FAILS])
        month_fails = sum(counts[_D_FAILS:])
        return Availability(_ratio(day_runs, day_fails), _ratio(week_runs, week_fails), _ratio(month_runs, month_fails))


def _ratio(runs: int, failures: int) -> float | None:
    return (runs - failures) / runs if runs else None


# -- the history ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Rollup:
    runs: int = 0
    failures: int = 0
    latency: dict[int, int] = field(default_factory=dict)


class History:
    """Synchronous, fast reads (memory, or one indexed query), safe from the event loop thread and from worker
    threads. Writes queue on the event loop and reach the database from the writer thread."""

    def __init__(
        self,
        path: Path,
        config: HistoryConfig | None = None,
        health: AgentHealth | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.config = config or HistoryConfig()
        self.health = health or AgentHealth()
        self.clock = clock
        self.write_errors = 0  # failed batches (also counted in health.state_write_errors)
        self.dropped = 0  # rows dropped: queue overflow or a failed batch
        self.rows_written = 0
        self._queue: list[tuple[str, HistoryEntry]] = []
        self._queued_changes: list[tuple[str, StatusChange]] = []
        self._inflight: list[tuple[str, HistoryEntry]] = []  # taken by the writer, not yet committed
        self._inflight_changes: list[tuple[str, StatusChange]] = []
        self._queue_lock = threading.Lock()
        self._db_lock = threading.Lock()  # the writer connection: one batch (or retention pass) at a time
        self._read_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._ids: dict[str, int] = {}
        self._timing_ids: dict[str, int] = {}
        self._timing_names: dict[int, str] = {}
        self._since_trim: dict[str, int] = {}  # rows written per probe since its last count trim
        self._windows = _Windows()
        self._availability: Mapping[str, Availability] = MappingProxyType({})
        self._next_retention = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Create or migrate the history tables and rebuild the in-memory windows (sqlite3.Error, OSError)."""
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.create_function("merge_histograms", 2, _merge_histograms, deterministic=True)
            self._migrate(conn)
            self._load(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._reader = reader
        self._refresh_all()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (SCHEMA_KEY,)).fetchone()
            found = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            if found > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"history schema {found} is newer than this agent's {SCHEMA_VERSION}")
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (SCHEMA_KEY, str(SCHEMA_VERSION)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _reload_names(self, conn: sqlite3.Connection) -> None:
        try:
            ids = {name: pid for pid, name in conn.execute("SELECT id, name FROM history_probe")}
            timing_ids = {name: tid for tid, name in conn.execute("SELECT id, name FROM history_timing_name")}
        except sqlite3.Error as exc:
            log.error("history: reading the names of %s failed: %s", self.path, exc)
            ids, timing_ids = {}, {}
        self._ids = ids
        self._timing_ids = timing_ids
        self._timing_names = {tid: name for name, tid in timing_ids.items()}

    def _load(self, conn: sqlite3.Connection) -> None:
        now = self.clock()
        self._reload_names(conn)
        windows = self._windows
        windows.advance(now)
        names = {pid: name for name, pid in self._ids.items()}
        hour_from = (windows.hour - HOURS_KEPT + 1) * HOUR
        day_from = (windows.day - DAYS_KEPT + 1) * DAY
        # One range seek per probe on the primary key, not a scan of every hour ever kept.
        for pid, start, runs, failures in conn.execute(
            "SELECT p.id, h.start, h.runs, h.failures FROM history_probe p "
            "JOIN history_hourly h ON h.probe = p.id AND h.start >= ?",
            (hour_from,),
        ):
            windows.add(names[pid], start // HOUR, 0, runs, failures)
        for pid, start, runs, failures in conn.execute(
            "SELECT p.id, d.start, d.runs, d.failures FROM history_probe p "
            "JOIN history_daily d ON d.probe = p.id AND d.start >= ?",
            (day_from,),
        ):
            windows.add(names[pid], 0, start // DAY, runs, failures, hourly=False)
        # Counts before the restart are unknown: assume each probe at its limit, so its next trim comes after
        # the usual slack; the table stays within raw_max_per_probe plus twice the slack.
        self._since_trim = {}
        self._next_retention = now + 60.0

    def start(self) -> None:
        """Start the writer thread (after open())."""
        if self._conn is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer; blocking (call it from a worker thread in the agent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        self.close()

    def close(self) -> None:
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- writes (event loop) -----------------------------------------------------------------------------------
    def on_result(self, name: str, result: ProbeResult) -> None:
        """The store's per-result hook: compact and queue; never raises."""
        try:
            entry = compact(result)
        except Exception:
            log.exception("history: cannot compact a result of %s", name)
            return
        with self._queue_lock:
            self._queue.append((name, entry))
            if len(self._queue) > MAX_QUEUED:
                del self._queue[: len(self._queue) - MAX_QUEUED]
                self.dropped += 1
            full = len(self._queue) >= self.config.batch_rows
        if full:
            self._wake.set()

    def on_event(self, event: StoreEvent) -> None:
        """The store's events: status changes (failed, recovered) are kept; the others are not history's."""
        if event.kind not in ("failed", "recovered"):
            return
        result = event.state.last_result
        failed = result is not None and not result.ok
        self.on_status_change(
            event.name,
            event.at,
            event.old.value,
            event.new.value,
            result.phase.value if failed and result is not None and result.phase is not None else "",
            result.reason.value if failed and result is not None and result.reason is not None else "",
            result.error if failed and result is not None else "",
        )

    def on_status_change(self, name: str, at: float, old: str, new: str, phase: str, reason: str, error: str) -> None:
        """A status change (failed, recovered) to keep as an event."""
        change = StatusChange(at, old, new, phase, reason, error[:ERROR_CHARS])
        with self._queue_lock:
            self._queued_changes.append((name, change))
            del self._queued_changes[:-MAX_QUEUED]
        self._wake.set()

    # -- the writer --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()

    def flush(self) -> None:
        """Write what is queued in one transaction, then apply retention when due and refresh availability.
        Called by the writer thread; tests and stop() call it directly. Never raises."""
        with self._db_lock:
            conn = self._conn
            if conn is None:
                return
            with self._queue_lock:
                self._inflight, self._queue = self._queue, []
                self._inflight_changes, self._queued_changes = self._queued_changes, []
            rows, changes = self._inflight, self._inflight_changes
            now = self.clock()
            touched: set[str] = set()
            try:
                if rows or changes:
                    touched = self._write(conn, rows, changes)
                if now >= self._next_retention:
                    self._next_retention = now + self.config.retention_interval
                    self._retention(conn, now)
            except sqlite3.Error as exc:
                self.write_errors += 1
                self.health.state_write_errors += 1
                self.dropped += len(rows)
                log.error("history: writing %d results to %s failed: %s", len(rows), self.path, exc)
                self._reload_names(conn)  # ids given in the rolled back transaction are void
            finally:
                with self._queue_lock:
                    self._inflight, self._inflight_changes = [], []
            self._refresh(touched, now)

    def _write(
        self, conn: sqlite3.Connection, rows: list[tuple[str, HistoryEntry]], changes: list[tuple[str, StatusChange]]
    ) -> set[str]:
        hourly: dict[tuple[str, int], _Rollup] = {}
        daily: dict[tuple[str, int], _Rollup] = {}
        with _transaction(conn):
            for name, _ in rows:
                if name not in self._ids:
                    self._ids[name] = self._probe_id(conn, name)
            for name, _ in changes:
                if name not in self._ids:
                    self._ids[name] = self._probe_id(conn, name)
            ids = self._ids
            raw = []
            for name, e in rows:
                raw.append(
                    (
                        ids[name],
                        round(e.at * 1000),
                        int(e.ok),
                        e.phase,
                        e.reason,
                        e.reply_code,
                        round(e.total * 1e6),
                        self._encode_timings(conn, e.timings),
                        e.tls_version,
                        None if e.cert_not_after is None else round(e.cert_not_after),
                    )
                )
                at = int(e.at)
                for period, table in ((HOUR, hourly), (DAY, daily)):
                    key = (name, at - at % period)
                    agg = table.get(key)
                    if agg is None:
                        agg = table[key] = _Rollup()
                    agg.runs += 1
                    if e.ok:
                        b = bucket_of(e.total)
                        agg.latency[b] = agg.latency.get(b, 0) + 1
                    else:
                        agg.failures += 1
            conn.executemany("INSERT OR REPLACE INTO history_result VALUES (?,?,?,?,?,?,?,?,?,?)", raw)
            for upsert, table in ((_UPSERT_HOURLY, hourly), (_UPSERT_DAILY, daily)):
                conn.executemany(
                    upsert,
                    [
                        (ids[name], start, a.runs, a.failures, encode_histogram(a.latency))
                        for (name, start), a in table.items()
                    ],
                )
            conn.executemany(
                "INSERT INTO history_change (probe, at, old, new, phase, reason, error) VALUES (?,?,?,?,?,?,?)",
                [(ids[n], round(c.at * 1000), c.old, c.new, c.phase, c.reason, c.error) for n, c in changes],
            )
            self._trim_counts(conn, rows, changes)
        self.rows_written += len(rows)
        # Only after the commit: the windows count what the database holds.
        self._windows.advance(self.clock())
        for (name, start), a in hourly.items():
            self._windows.add(name, start // HOUR, 0, a.runs, a.failures)
        for (name, start), a in daily.items():
            self._windows.add(name, 0, start // DAY, a.runs, a.failures, hourly=False)
        return {name for name, _ in rows}

    @staticmethod
    def _probe_id(conn: sqlite3.Connection, name: str) -> int:
        conn.execute("INSERT OR IGNORE INTO history_probe (name) VALUES (?)", (name,))
        row = conn.execute("SELECT id FROM history_probe WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _encode_timings(self, conn: sqlite3.Connection, timings: Mapping[str, float]) -> bytes:
        out = []
        for name, seconds in timings.items():
            tid = self._timing_ids.get(name)
            if tid is None:
                if len(self._timing_ids) >= 255:
                    continue  # names are the probes' own phase keys: a few dozen; never unbounded
                conn.execute("INSERT OR IGNORE INTO history_timing_name (name) VALUES (?)", (name,))
                row = conn.execute("SELECT id FROM history_timing_name WHERE name = ?", (name,)).fetchone()
                tid = int(row[0])
                if tid > 255:
                    continue
                self._timing_ids[name], self._timing_names[tid] = tid, name
            out.append(_PAIR.pack(tid, min(max(round(seconds * 1e6), 0), 0xFFFFFFFF)))
        return b"".join(out)

    def _decode_timings(self, blob: bytes) -> dict[str, float]:
        usable = len(blob) - len(blob) % _PAIR.size
        names = self._timing_names
        return {names[t]: us / 1e6 for t, us in _PAIR.iter_unpack(blob[:usable]) if t in names}

    def _trim_counts(
        self, conn: sqlite3.Connection, rows: list[tuple[str, HistoryEntry]], changes: list[tuple[str, StatusChange]]
    ) -> None:
        """Keep raw_max_per_probe rows per probe: a probe is trimmed once it has `slack` rows more, so one
        delete removes many rows, not one a result."""
        keep = self.config.raw_max_per_probe
        slack = max(10, keep // 10)
        due = set()
        for name, _ in rows:
            written = self._since_trim.get(name, 0) + 1
            if written >= slack:
                due.add(self._ids[name])
                written = 0
            self._since_trim[name] = written
        if due:
            conn.executemany(
                "DELETE FROM history_result WHERE probe = ?1 AND at <= "
                "(SELECT at FROM history_result WHERE probe = ?1 ORDER BY at DESC LIMIT 1 OFFSET ?2)",
                [(pid, keep) for pid in due],
            )
        if changes:
            conn.executemany(
                "DELETE FROM history_change WHERE probe = ?1 AND id IN "
                "(SELECT id FROM history_change WHERE probe = ?1 ORDER BY at DESC, id DESC LIMIT -1 OFFSET ?2)",
                [(pid, self.config.changes_max_per_probe) for pid in {self._ids[n] for n, _ in changes}],
            )

    def _retention(self, conn: sqlite3.Connection, now: float) -> None:
        """Age limits, in bulk: one range delete per probe and table on its primary key."""
        ids = list(self._ids.values())
        c = self.config
        cuts = (
            ("DELETE FROM history_result WHERE probe = ? AND at < ?", round((now - c.raw_max_age) * 1000)),
            ("DELETE FROM history_change WHERE probe = ? AND at < ?", round((now - c.changes_max_age) * 1000)),
            ("DELETE FROM history_hourly WHERE probe = ? AND start < ?", int(now - c.hourly_max_age)),
            ("DELETE FROM history_daily WHERE probe = ? AND start < ?", int(now - c.daily_max_age)),
        )
        with _transaction(conn):
            for delete, cutoff in cuts:
                conn.executemany(delete, [(pid, cutoff) for pid in ids])

    def _refresh(self, touched: Iterable[str], now: float) -> None:
        if self._windows.advance(now):
            self._refresh_all()
            return
        windows = self._windows
        fresh = {name: windows.availability(name) for name in touched}
        if fresh:
            self._availability = MappingProxyType({**self._availability, **fresh})

    def _refresh_all(self) -> None:
        windows = self._windows
        self._availability = MappingProxyType({name: windows.availability(name) for name in windows.counts})

    # -- reads -------------------------------------------------------------------------------------------------
    def recent(self, name: str, limit: int = 60) -> list[HistoryEntry]:
        """The newest `limit` runs of `name`, newest first (queued ones included)."""
        limit = max(0, min(limit, 100_000))
        with self._queue_lock:
            rows = [e for n, e in (*self._inflight, *self._queue) if n == name]
        pid = self._ids.get(name)
        if pid is not None:
            found = self._query(
                "SELECT at, ok, phase, reason, reply_code, total, timings, tls_version, cert_not_after "
                "FROM history_result WHERE probe = ? ORDER BY at DESC LIMIT ?",
                (pid, limit),
            )
            rows += [
                HistoryEntry(
                    at / 1000,
                    bool(ok),
                    phase,
                    reason,
                    code,
                    total / 1e6,
                    self._decode_timings(timings),
                    tls,
                    None if expiry is None else float(expiry),
                )
                for at, ok, phase, reason, code, total, timings, tls, expiry in found
            ]
        rows.sort(key=lambda e: e.at, reverse=True)
        return rows[:limit]

    def changes(self, name: str, limit: int = 50) -> list[StatusChange]:
        """The newest `limit` status changes of `name`, newest first (queued ones included)."""
        limit = max(0, min(limit, 100_000))
        with self._queue_lock:
            rows = [c for n, c in (*self._inflight_changes, *self._queued_changes) if n == name]
        pid = self._ids.get(name)
        if pid is not None:
            found = self._query(
                "SELECT at, old, new, phase, reason, error FROM history_change "
                "WHERE probe = ? ORDER BY at DESC, id DESC LIMIT ?",
                (pid, limit),
            )
            rows += [
                StatusChange(at / 1000, old, new, phase, reason, error) for at, old, new, phase, reason, error in found
            ]
        rows.sort(key=lambda c: c.at, reverse=True)
        return rows[:limit]

    def rollups(self, name: str, period: Period = "hour", limit: int = 24) -> list[Rollup]:
        """The newest `limit` hours or UTC days of `name` that had runs, newest first (written rows only)."""
        pid = self._ids.get(name)
        if pid is None:
            return []
        found = self._query(_SELECT_HOURLY if period == "hour" else _SELECT_DAILY, (pid, max(0, min(limit, 100_000))))
        out = []
        for start, runs, failures, blob in found:
            counts = decode_histogram(blob)
            out.append(Rollup(float(start), runs, failures, percentile(counts, 0.5), percentile(counts, 0.95)))
        return out

    def availability(self, name: str) -> Availability:
        return self._availability.get(name, NO_AVAILABILITY)

    def availability_all(self) -> Mapping[str, Availability]:
        """Every probe's availability, from memory (refreshed after each batch): a read-only mapping."""
        return self._availability

    def _query(self, sql: str, args: tuple[int, ...]) -> list[tuple[Any, ...]]:
        """One query on the read connection; [] when closed or failing (logged: a read never raises)."""
        with self._read_lock:
            if self._reader is None:
                return []
            try:
                return self._reader.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                log.warning("history: reading %s failed: %s", self.path, exc)
                return []


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def buckets_for(values: Iterable[float]) -> dict[int, int]:
    """The histogram of `values` (tests and bench)."""
    counts: dict[int, int] = {}
    for v in values:
        b = bucket_of(v)
        counts[b] = counts.get(b, 0) + 1
    return counts
