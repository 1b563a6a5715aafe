"""Per-probe history in the state database: every result compacted, status changes, hourly and daily rollups.

Results reach History.on_result on the event loop, which only compacts them and queues them; a writer thread
writes the queue in one transaction every `flush_interval` seconds (or `batch_rows` rows) on its own SQLite
connection, so the event loop never waits on the disk (a batch that fails is counted, logged and tried once
more with the next). Batches go to a journal table, moved into the results and rollups every 10 minutes (below).
Retention (count and age per probe) runs in bulk from that thread. Availability over 24 h / 7 d / 30 d is kept
in memory (per probe, 24 hourly and 30 daily counts), rebuilt from the rollup tables at start, so
availability_all() for 10,000 probes is one dictionary.

Windows: "24 h" is the current hour and the 23 before it; "7 d" and "30 d" are the current UTC day and the 6 or
29 before it. A run counts as available when its result was ok (not the alerting status, which waits for
alert_after failures). Latency percentiles count ok runs only (a failed run's time is often a timeout), on a
fixed histogram of 2^(1/8) steps: a percentile is the upper bound of its bucket, at most 9 % above the truth.
"""

from __future__ import annotations

import logging
import math
import sqlite3
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
from monitor.state.shared_facts import SharedFacts
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
CREATE TABLE IF NOT EXISTS history_layout (
    id INTEGER PRIMARY KEY,
    tls_version TEXT NOT NULL,
    timing_names TEXT NOT NULL,
    UNIQUE (tls_version, timing_names)
);
CREATE TABLE IF NOT EXISTS history_result (
    probe INTEGER NOT NULL,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    reply_code INTEGER NOT NULL,
    total INTEGER NOT NULL,
    layout INTEGER NOT NULL,
    timings BLOB NOT NULL,
    cert_not_after INTEGER,
    PRIMARY KEY (probe, at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_journal (
    id INTEGER PRIMARY KEY,
    probe INTEGER NOT NULL,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    reply_code INTEGER NOT NULL,
    total INTEGER NOT NULL,
    layout INTEGER NOT NULL,
    timings BLOB NOT NULL,
    cert_not_after INTEGER
);
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
# Batches append to history_journal (rowid order: a batch fills a few pages at the end) and the journal moves
# into history_result, the hourly and daily rollups every COMPACT_INTERVAL, sorted by probe: each probe's pages
# are written once per ten results or so instead of three pages per result (history_result, hourly, daily).
# Writing results and rollups in place, the first simulated hour of 10,000 probes (bench/history.py) wrote 3.0 KiB
# to disk per result and took 40 µs of writer CPU; through the journal 0.6 KiB and 19 µs.
# A result row is small because what repeats is kept once: the probe's name (history_probe) and its TLS version
# with the names of its timings (history_layout: a probe's runs share one or two layouts), so the row holds the
# timings as bare varints. Units of the stored integers (SQLite keeps small integers in 1-4 bytes): `at` of
# results and changes in milliseconds, `total` and the timings in microseconds, cert_not_after and rollup
# starts in seconds. 10,000 probes every 60 s: see bench/history.py for the size of a day.
_SET_ROLLUP = (
    " VALUES (?,?,?,?,?) ON CONFLICT (probe, start) DO UPDATE SET runs = excluded.runs, "
    "failures = excluded.failures, latency = excluded.latency"
)  # an update in place: cheaper than REPLACE's delete and insert
_REPLACE_ROLLUP = {HOUR: "INSERT INTO history_hourly" + _SET_ROLLUP, DAY: "INSERT INTO history_daily" + _SET_ROLLUP}
_READ_ROLLUP = {
    HOUR: "SELECT runs, failures, latency FROM history_hourly WHERE probe = ? AND start = ?",
    DAY: "SELECT runs, failures, latency FROM history_daily WHERE probe = ? AND start = ?",
}
_SELECT_ROLLUPS = {
    HOUR: "SELECT start, runs, failures, latency FROM history_hourly WHERE probe = ? ORDER BY start DESC LIMIT ?",
    DAY: "SELECT start, runs, failures, latency FROM history_daily WHERE probe = ? ORDER BY start DESC LIMIT ?",
}
# The writer's page cache, SQLite's default size. A move of the journal and each retention pass touch pages of every
# probe in each table, and SQLite keeps up to this much of what it touched. At 16 MiB, with 10,000 probes, the agent
# grew 16 MiB at each of its first two moves, side by side with 2 MiB (bench/steady_rss.py); SQLite's heap after 15
# moves was 16.7 against 2.2 MiB. Pages it no longer holds come from the OS's file cache: bench/history.py (24 h
# simulated) writes a result in 34-39 µs against 32-36 µs, within the runs' noise.
WRITER_CACHE_KIB = 2048
COMPACT_INTERVAL = 600.0  # seconds between moves of the journal (and at stop); a kill -9 loses none of it
JOURNAL_MAX_ROWS = 200_000  # a move comes sooner when the journal holds this many results
# Journal rows summed into rollups at a time in a move. Summed at once, 10,000 probes' ten results each took 10.8 MiB
# of dicts at the move's peak, 0.8 MiB in chunks of 2,000 rows (tracemalloc). The agent at 10,000 probes grew 1.2
# against 5.3 MiB at its second move, in one side-by-side pair (bench/steady_rss.py); writing a result costs the same
# (bench/history.py, bench/README.md).
MOVE_CHUNK_ROWS = 2_000
_JOURNAL_INSERT = (
    "INSERT INTO history_journal (probe, at, ok, phase, reason, reply_code, total, layout, timings, cert_not_after) "
    "VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_JOURNAL_MOVE = (
    "INSERT OR REPLACE INTO history_result "
    "SELECT probe, at, ok, phase, reason, reply_code, total, layout, timings, cert_not_after "
    "FROM history_journal ORDER BY probe, at"
)
_SELECT_RECENT = (
    "SELECT at, ok, phase, reason, reply_code, total, layout, timings, cert_not_after "
    "FROM history_result WHERE probe = ? ORDER BY at DESC LIMIT ?"
)
_SELECT_JOURNAL = (
    "SELECT at, ok, phase, reason, reply_code, total, layout, timings, cert_not_after "
    "FROM history_journal WHERE probe = ? AND id IN ({marks}) ORDER BY id"
)
_SUM_JOURNAL = "SELECT probe, at, ok, total FROM history_journal WHERE probe = ? AND id IN ({marks})"
_IDS_PER_QUERY = 500
MAX_LAYOUTS = 4096  # distinct (TLS version, timing names): a few per kind of probe; never unbounded


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


def bucket_of(seconds: float) -> int:
    if not seconds > BUCKET_BASE:  # NaN too
        return 0
    if seconds >= _LAST_BOUND:  # infinity too
        return BUCKET_COUNT - 1
    # the epsilon keeps an exact bound (0.128 s) in its own bucket despite the division's rounding
    index = math.ceil(BUCKETS_PER_DOUBLING * math.log2(seconds / BUCKET_BASE) - 1e-9)
    return min(index, BUCKET_COUNT - 1)


def bucket_bound(index: int) -> float:
    return BUCKET_BASE * 2 ** (index / BUCKETS_PER_DOUBLING)


_LAST_BOUND = bucket_bound(BUCKET_COUNT - 1)


def encode_histogram(counts: Mapping[int, int]) -> bytes:
    """Sparse, as varints: (bucket minus the previous bucket, count) pairs; a steady probe fills a handful of
    buckets, 2-3 bytes each."""
    values: list[int] = []
    previous = 0
    for index in sorted(counts):
        if counts[index] > 0:
            values += (index - previous, counts[index])
            previous = index
    return encode_varints(values)


def decode_histogram(blob: bytes) -> dict[int, int]:
    values = decode_varints(blob)
    counts: dict[int, int] = {}
    index = 0
    for i in range(0, len(values) - 1, 2):  # a torn blob loses its tail, not the row
        index += values[i]
        if index < BUCKET_COUNT:
            counts[index] = values[i + 1]
    return counts


def encode_varints(values: Iterable[int]) -> bytes:
    """Unsigned LEB128: a timing of 5 ms in microseconds takes 2 bytes, not 4 or 8. Negative values as 0."""
    out = bytearray()
    for value in values:
        if value < 0x80:
            out.append(max(value, 0))
        elif value < 0x4000:  # the usual sizes spelled out: a third of the writer's CPU went to the loop below
            out += bytes(((value & 0x7F) | 0x80, value >> 7))
        elif value < 0x200000:
            out += bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
        else:
            while value >= 0x80:
                out.append((value & 0x7F) | 0x80)
                value >>= 7
            out.append(value)
    return bytes(out)


def decode_varints(blob: bytes) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for byte in blob:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:  # not ours: stop rather than build huge numbers
                break
        else:
            values.append(value)
            value = shift = 0
    return values


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
WEEK_DAYS = 7
_HOUR_MAX = 0xFFFF  # an hourly slot's count: 18 runs a second; past it (intervals under 55 ms) it saturates


class _Windows:
    """Per probe, runs and failures of the last 24 hours and 30 days in rings. Every probe's rings sit in two flat
    arrays, hourly counts in 16 bits: 336 bytes a probe, where an array of 114 uint32 per probe (the rings and
    their sums) took 597. 10,000 probes' windows, names included: 4.3 instead of 6.2 MiB (tracemalloc,
    2026-12-07), for the RSS target (< 286 MiB). A window's sum is taken from its slots when asked, and moving
    the clock empties one slot of every probe with a strided slice: an hour's move and the availability of
    10,000 probes take 0.04 s of the writer thread, as the kept sums did (0.05 s). Written by the writer
    thread only."""

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}  # probe name -> its index in the arrays
        self._hours = array("H")  # a probe's 24 hourly runs, then its 24 hourly failures
        self._days = array("I")  # its 30 daily runs, then its 30 daily failures
        self._equal = SharedFacts()  # equal availabilities, held once
        self.hour = 0  # the newest hour (epoch // 3600) the rings hold
        self.day = 0
        self._week: tuple[tuple[int, int], ...] = ()  # the last 7 days' slots: one or two (first, stop) ranges

    def advance(self, now: float) -> bool:
        """Move the newest hour and day to `now`'s, emptying the slots that fall out; True if they moved."""
        hour, day = int(now // HOUR), int(now // DAY)
        if hour <= self.hour and day <= self.day:
            return False
        hours = range(max(self.hour + 1, hour - HOURS_KEPT + 1), hour + 1) if hour > self.hour else range(0)
        days = range(max(self.day + 1, day - DAYS_KEPT + 1), day + 1) if day > self.day else range(0)
        self.hour, self.day = max(hour, self.hour), max(day, self.day)
        probes = len(self.slots)
        for h in hours:  # every probe's slot of that hour at once: a strided slice per column
            for column in (h % HOURS_KEPT, HOURS_KEPT + h % HOURS_KEPT):
                self._hours[column :: 2 * HOURS_KEPT] = array("H", bytes(2 * probes))
        for d in days:
            for column in (d % DAYS_KEPT, DAYS_KEPT + d % DAYS_KEPT):
                self._days[column :: 2 * DAYS_KEPT] = array("I", bytes(4 * probes))
        first, last = (self.day - WEEK_DAYS + 1) % DAYS_KEPT, self.day % DAYS_KEPT
        self._week = ((first, last + 1),) if first <= last else ((first, DAYS_KEPT), (0, last + 1))
        return True

    def _of(self, name: str) -> int:
        index = self.slots.get(name)
        if index is None:
            index = self.slots[name] = len(self.slots)
            self._hours.frombytes(bytes(2 * 2 * HOURS_KEPT))
            self._days.frombytes(bytes(4 * 2 * DAYS_KEPT))
        return index

    def add_hour(self, name: str, hour: int, runs: int, failures: int) -> None:
        if self.hour - HOURS_KEPT < hour <= self.hour:
            at = self._of(name) * 2 * HOURS_KEPT + hour % HOURS_KEPT
            self._hours[at] = min(self._hours[at] + runs, _HOUR_MAX)
            self._hours[at + HOURS_KEPT] = min(self._hours[at + HOURS_KEPT] + failures, _HOUR_MAX)

    def add_day(self, name: str, day: int, runs: int, failures: int) -> None:
        if self.day - DAYS_KEPT < day <= self.day:
            at = self._of(name) * 2 * DAYS_KEPT + day % DAYS_KEPT
            self._days[at] += runs
            self._days[at + DAYS_KEPT] += failures

    def availability(self, name: str) -> Availability:
        index = self.slots.get(name)
        if index is None:
            return NO_AVAILABILITY
        hours, days = self._hours, self._days
        h, d = index * 2 * HOURS_KEPT, index * 2 * DAYS_KEPT
        week_runs = week_fails = 0
        for first, stop in self._week:
            week_runs += sum(days[d + first : d + stop])
            week_fails += sum(days[d + DAYS_KEPT + first : d + DAYS_KEPT + stop])
        found = Availability(
            _ratio(sum(hours[h : h + HOURS_KEPT]), sum(hours[h + HOURS_KEPT : h + 2 * HOURS_KEPT])),
            _ratio(week_runs, week_fails),
            _ratio(sum(days[d : d + DAYS_KEPT]), sum(days[d + DAYS_KEPT : d + 2 * DAYS_KEPT])),
        )
        # Most probes are available all of the time, or as often as their neighbours: equal values are held
        # once (10,000 probes: 1.2 MiB less)
        return self._equal.one(found, found)


def _ratio(runs: int, failures: int) -> float | None:
    return (runs - failures) / runs if runs else None


# -- the history ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Rollup:
    runs: int = 0
    failures: int = 0
    latency: dict[int, int] = field(default_factory=dict)


Layout = tuple[str, tuple[str, ...]]  # (TLS version, timing names in order)


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
        self.dropped = 0  # results dropped: queue overflow or a failed batch
        self.rows_written = 0
        self.batches = 0  # write transactions of results and changes
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
        self._layout_ids: dict[Layout, int] = {}
        self._layouts: dict[int, Layout] = {0: ("", ())}  # 0: no TLS, no timings (and the fallback)
        # The journal's rows are in no rollup yet: the move sums them (rollups() too, for one probe's).
        # probe id -> its rows' ids in the journal, as 8-octet integers: with the 10 rows a probe has in a
        # 10-minute journal at 60 s, 10,000 probes hold 2.0 MiB instead of 4.4 MiB as lists of ints
        self._journal_ids: dict[int, array[int]] = {}
        self._journal_rows = 0
        self._next_compaction = 0.0
        self._since_trim: dict[int, int] = {}  # rows moved per probe id since its last count trim
        self._windows = _Windows()
        self._availability: Mapping[str, Availability] = MappingProxyType({})
        self._next_retention = 0.0
        self._retried = False  # the queue holds a batch that failed once
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
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
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
            row = (
                conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
                and conn.execute("SELECT value FROM meta WHERE key = ?", (SCHEMA_KEY,)).fetchone()
            )
            found = int(row[0]) if row and str(row[0]).isdigit() else 0
            if found > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"history schema {found} is newer than this agent's {SCHEMA_VERSION}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (SCHEMA_KEY, str(SCHEMA_VERSION)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _reload_names(self, conn: sqlite3.Connection) -> None:
        try:
            ids = {name: pid for pid, name in conn.execute("SELECT id, name FROM history_probe")}
            layouts = {
                lid: (tls, tuple(names.split(",")) if names else ())
                for lid, tls, names in conn.execute("SELECT id, tls_version, timing_names FROM history_layout")
            }
        except sqlite3.Error as exc:
            log.error("history: reading the names of %s failed: %s", self.path, exc)
            ids, layouts = {}, {}
        self._ids = ids
        self._layouts = {0: ("", ()), **layouts}
        self._layout_ids = {layout: lid for lid, layout in self._layouts.items()}

    def _load(self, conn: sqlite3.Connection) -> None:
        now = self.clock()
        self._reload_names(conn)
        windows = self._windows
        windows.advance(now)
        names = {pid: name for name, pid in self._ids.items()}
        # One range seek per probe on the primary key, not a scan of every hour ever kept: 10,000 probes' last
        # 24 hours and 30 days (540,000 rows) in 0.08 s on the bench machine (bench/history.py).
        for pid, start, runs, failures in conn.execute(
            "SELECT p.id, h.start, h.runs, h.failures FROM history_probe p "
            "JOIN history_hourly h ON h.probe = p.id AND h.start >= ?",
            ((windows.hour - HOURS_KEPT + 1) * HOUR,),
        ):
            windows.add_hour(names[pid], start // HOUR, runs, failures)
        for pid, start, runs, failures in conn.execute(
            "SELECT p.id, d.start, d.runs, d.failures FROM history_probe p "
            "JOIN history_daily d ON d.probe = p.id AND d.start >= ?",
            ((windows.day - DAYS_KEPT + 1) * DAY,),
        ):
            windows.add_day(names[pid], start // DAY, runs, failures)
        # The journal's results are in no rollup yet: counted in the windows apart (grouped by SQLite: a full
        # journal, 10 minutes of 10,000 probes, took 1.0 s one row at a time in Python).
        for pid, hour, runs, failures in conn.execute(
            "SELECT probe, at / 3600000, count(*), sum(ok = 0) FROM history_journal GROUP BY 1, 2"
        ):
            if pid in names:
                windows.add_hour(names[pid], hour, runs, failures)
        for pid, day, runs, failures in conn.execute(
            "SELECT probe, at / 86400000, count(*), sum(ok = 0) FROM history_journal GROUP BY 1, 2"
        ):
            if pid in names:
                windows.add_day(names[pid], day, runs, failures)
        self._journal_ids, self._journal_rows = {}, 0
        for rid, pid in conn.execute("SELECT id, probe FROM history_journal ORDER BY id"):
            rowids = self._journal_ids.get(pid)
            if rowids is None:
                rowids = self._journal_ids[pid] = array("q")
            rowids.append(rid)
            self._journal_rows += 1
        # Counts before the restart are unknown: each probe is taken as at its limit, so its next trim comes after
        # the usual slack; the table stays within raw_max_per_probe plus twice the slack.
        self._since_trim = {}
        self._next_retention = now + 60.0
        self._next_compaction = now + COMPACT_INTERVAL

    def start(self) -> None:
        """Start the writer thread (after open())."""
        if self._conn is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer; blocking (the agent calls it from a worker thread)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        self.compact()
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
        """The store's per-result hook: compact and queue (3 µs); never raises."""
        try:
            entry = compact(result)
        except Exception:
            log.exception("history: cannot compact a result of %s", name)
            return
        with self._queue_lock:
            self._queue.append((name, entry))
            over = len(self._queue) - MAX_QUEUED
            if over > 0:
                del self._queue[:over]
                self.dropped += over
            full = len(self._queue) >= self.config.batch_rows
        if full:
            self._wake.set()

    def on_event(self, event: StoreEvent) -> None:
        """The store's events: status changes (failed, recovered) are kept; the others are not history's."""
        if event.kind not in ("failed", "recovered"):
            return
        result = event.state.last_result
        if result is None or result.ok:
            phase = reason = error = ""
        else:
            phase = result.phase.value if result.phase is not None else ""
            reason = result.reason.value if result.reason is not None else ""
            error = result.error
        self.on_status_change(event.name, event.at, event.old.value, event.new.value, phase, reason, error)

    def on_status_change(self, name: str, at: float, old: str, new: str, phase: str, reason: str, error: str) -> None:
        """A status change (failed, recovered) to keep as an event."""
        change = StatusChange(at, old, new, phase, reason, error[:ERROR_CHARS])
        with self._queue_lock:
            self._queued_changes.append((name, change))
            del self._queued_changes[:-MAX_QUEUED]
            full = len(self._queued_changes) >= self.config.batch_rows
        # With the next batch, not at once: 10,000 probes going red together woke the writer for a transaction
        # each, 11 % of a core for that minute (bench/history.py --agent, where alert_after 2 turns every probe
        # red in the measured minute).
        if full:
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
                    touched = self._write(conn, rows, changes, now)
                self._retried = False
            except Exception as exc:  # sqlite3.Error mostly; whatever it is, the writer goes on
                self._failed(conn, rows, changes, exc)
            finally:
                with self._queue_lock:
                    self._inflight, self._inflight_changes = [], []
            if now >= self._next_compaction or self._journal_rows >= JOURNAL_MAX_ROWS:
                self._compact(conn, now)
            if now >= self._next_retention:
                self._next_retention = now + self.config.retention_interval
                try:
                    self._retention(conn, now)
                except Exception as exc:
                    self.write_errors += 1
                    self.health.state_write_errors += 1
                    log.error("history: the retention pass on %s failed: %s", self.path, exc)
            self._refresh(touched, now)

    def _failed(
        self,
        conn: sqlite3.Connection,
        rows: list[tuple[str, HistoryEntry]],
        changes: list[tuple[str, StatusChange]],
        exc: Exception,
    ) -> None:
        """A failed batch is counted and logged, and tried once more with the next batch (a database locked for
        longer than the busy timeout loses nothing); failing again, it is dropped, so a row the database refuses
        cannot stop the history."""
        self.write_errors += 1
        self.health.state_write_errors += 1
        self._reload_names(conn)  # ids and rollups of the rolled back transaction are void
        if self._retried:
            self.dropped += len(rows)
            self._retried = False
            log.error("history: writing %d results to %s failed again, dropped: %s", len(rows), self.path, exc)
            return
        self._retried = True
        log.error("history: writing %d results to %s failed, trying again: %s", len(rows), self.path, exc)
        with self._queue_lock:
            self._queue[:0] = rows
            self._queued_changes[:0] = changes
            over = len(self._queue) - MAX_QUEUED
            if over > 0:
                del self._queue[:over]
                self.dropped += over
            self._inflight, self._inflight_changes = [], []

    def _write(
        self,
        conn: sqlite3.Connection,
        rows: list[tuple[str, HistoryEntry]],
        changes: list[tuple[str, StatusChange]],
        now: float,
    ) -> set[str]:
        ids = self._ids
        counted: list[tuple[str, int, int, bool]] = []
        with _transaction(conn):
            for name in {n for n, _ in rows}.union(n for n, _ in changes):
                if name not in ids:
                    ids[name] = self._probe_id(conn, name)
            raw = []
            for name, e in rows:
                pid = ids[name]
                layout, timings = self._timings(conn, e.tls_version, e.timings)
                try:
                    at_ms, total_us = round(e.at * 1000), round(e.total * 1e6)
                    expiry = None if e.cert_not_after is None else round(e.cert_not_after)
                except (ValueError, OverflowError):  # NaN or infinite: not from a probe, but never a failed batch
                    at_ms, total_us = _clamp(e.at * 1000), _clamp(e.total * 1e6)
                    expiry = None if e.cert_not_after is None else _clamp(e.cert_not_after)
                raw.append((pid, at_ms, int(e.ok), e.phase, e.reason, e.reply_code, total_us, layout, timings, expiry))
                counted.append((name, pid, at_ms // 1000, e.ok))
            conn.executemany(_JOURNAL_INSERT, raw)
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0] if raw else 0
            conn.executemany(
                "INSERT INTO history_change (probe, at, old, new, phase, reason, error) VALUES (?,?,?,?,?,?,?)",
                [(ids[n], _clamp(c.at * 1000), c.old, c.new, c.phase, c.reason, c.error) for n, c in changes],
            )
            self._trim_changes(conn, changes)
        self.rows_written += len(rows)
        self.batches += 1
        # Only after the commit: the windows count what the database holds.
        self._windows.advance(now)
        journal = self._journal_ids
        first = last - len(counted) + 1  # a table's new rowids count up from its largest
        for offset, (name, pid, at, ok) in enumerate(counted):
            self._windows.add_hour(name, at // HOUR, 1, 0 if ok else 1)
            self._windows.add_day(name, at // DAY, 1, 0 if ok else 1)
            rowids = journal.get(pid)
            if rowids is None:
                rowids = journal[pid] = array("q")
            rowids.append(first + offset)
        self._journal_rows += len(counted)
        return {name for name, _, _, _ in counted}

    @staticmethod
    def _merged(
        conn: sqlite3.Connection, period: int, pid: int, start: int, delta: _Rollup
    ) -> tuple[int, int, int, int, bytes]:
        """A rollup row as written: what the table holds plus what the journal adds."""
        row = conn.execute(_READ_ROLLUP[period], (pid, start)).fetchone()
        runs, failures, latency = (row[0], row[1], decode_histogram(row[2])) if row else (0, 0, {})
        for bucket, count in delta.latency.items():
            latency[bucket] = latency.get(bucket, 0) + count
        return pid, start, runs + delta.runs, failures + delta.failures, encode_histogram(latency)

    def compact(self) -> None:
        """Move the journal into the results and rollups now (stop() and tests; the writer does it every
        COMPACT_INTERVAL). Never raises."""
        with self._db_lock:
            if self._conn is not None:
                self._compact(self._conn, self.clock())

    def _compact(self, conn: sqlite3.Connection, now: float) -> None:
        self._next_compaction = now + COMPACT_INTERVAL
        if not self._journal_rows:
            return
        try:
            with _transaction(conn):
                conn.execute(_JOURNAL_MOVE)
                self._add_journal_to_rollups(conn)
                self._trim_counts(conn)
                conn.execute("DELETE FROM history_journal")
        except Exception as exc:  # the journal stays: the next move takes it
            self.write_errors += 1
            self.health.state_write_errors += 1
            log.error("history: moving %d results into %s failed: %s", self._journal_rows, self.path, exc)
            return
        self._journal_ids, self._journal_rows = {}, 0

    def _add_journal_to_rollups(self, conn: sqlite3.Connection) -> None:
        """The journal summed into the hourly and daily rollups, MOVE_CHUNK_ROWS rows at a time in probe order. A
        probe whose rows fall in two chunks is merged twice: the second time onto what the first wrote."""
        journal = conn.execute("SELECT probe, at, ok, total FROM history_journal ORDER BY probe")
        while chunk := journal.fetchmany(MOVE_CHUNK_ROWS):
            deltas = _sum_journal(chunk)
            for period, statement in _REPLACE_ROLLUP.items():
                rows = [self._merged(conn, *key, delta) for key, delta in deltas.items() if key[0] == period]
                conn.executemany(statement, rows)

    @staticmethod
    def _probe_id(conn: sqlite3.Connection, name: str) -> int:
        conn.execute("INSERT OR IGNORE INTO history_probe (name) VALUES (?)", (name,))
        row = conn.execute("SELECT id FROM history_probe WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _timings(self, conn: sqlite3.Connection, tls_version: str, timings: Mapping[str, float]) -> tuple[int, bytes]:
        """The layout id of (TLS version, timing names) and the timings as varints of microseconds."""
        layout = (tls_version, tuple(timings))
        lid = self._layout_ids.get(layout)
        if lid is None:
            lid = self._new_layout(conn, layout)
            if lid == 0:
                return 0, b""
        try:
            return lid, encode_varints([round(seconds * 1e6) for seconds in timings.values()])
        except (ValueError, OverflowError):  # NaN or infinite
            return lid, encode_varints([_clamp(seconds * 1e6) for seconds in timings.values()])

    def _new_layout(self, conn: sqlite3.Connection, layout: Layout) -> int:
        tls, names = layout
        if len(self._layouts) >= MAX_LAYOUTS or any("," in n for n in names):
            return 0  # the row keeps its times and status, not this layout
        joined = ",".join(names)
        conn.execute("INSERT OR IGNORE INTO history_layout (tls_version, timing_names) VALUES (?, ?)", (tls, joined))
        row = conn.execute(
            "SELECT id FROM history_layout WHERE tls_version = ? AND timing_names = ?", (tls, joined)
        ).fetchone()
        lid = int(row[0])
        self._layout_ids[layout], self._layouts[lid] = lid, layout
        return lid

    def _decode(self, layout: int, blob: bytes) -> tuple[str, dict[str, float]]:
        tls, names = self._layouts.get(layout, ("", ()))
        return tls, {name: us / 1e6 for name, us in zip(names, decode_varints(blob), strict=False)}

    def _trim_counts(self, conn: sqlite3.Connection) -> None:
        """Keep raw_max_per_probe rows per probe: a probe is trimmed once it has `slack` rows more, so one
        delete removes many rows, not one a result."""
        keep = self.config.raw_max_per_probe
        slack = max(10, keep // 10)
        due = []
        for pid, rowids in self._journal_ids.items():
            written = self._since_trim.get(pid, 0) + len(rowids)
            if written >= slack:
                due.append(pid)
                written = 0
            self._since_trim[pid] = written
        if due:
            conn.executemany(
                "DELETE FROM history_result WHERE probe = ?1 AND at <= "
                "(SELECT at FROM history_result WHERE probe = ?1 ORDER BY at DESC LIMIT 1 OFFSET ?2)",
                [(pid, keep) for pid in due],
            )

    def _trim_changes(self, conn: sqlite3.Connection, changes: list[tuple[str, StatusChange]]) -> None:
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
            ("DELETE FROM history_result WHERE probe = ? AND at < ?", _clamp((now - c.raw_max_age) * 1000)),
            ("DELETE FROM history_change WHERE probe = ? AND at < ?", _clamp((now - c.changes_max_age) * 1000)),
            ("DELETE FROM history_hourly WHERE probe = ? AND start < ?", _clamp(now - c.hourly_max_age)),
            ("DELETE FROM history_daily WHERE probe = ? AND start < ?", _clamp(now - c.daily_max_age)),
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
        self._availability = MappingProxyType({name: windows.availability(name) for name in windows.slots})

    # -- reads -------------------------------------------------------------------------------------------------
    def recent(self, name: str, limit: int = 60) -> list[HistoryEntry]:
        """The newest `limit` runs of `name`, newest first: moved, in the journal, or queued."""
        limit = max(0, min(limit, 100_000))
        with self._queue_lock:
            waiting = [e for n, e in (*self._inflight, *self._queue) if n == name]
        by_time: dict[float, HistoryEntry] = {}  # one run per start time, as in the table: the later one wins
        pid = self._ids.get(name)
        if pid is not None:
            moved, in_journal = self._with_journal(_SELECT_RECENT, (pid, limit), _SELECT_JOURNAL, pid, limit)
            found = moved + in_journal
            for at, ok, phase, reason, code, total, layout, timings, expiry in found:
                tls, times = self._decode(layout, timings)
                expires = None if expiry is None else float(expiry)
                entry = HistoryEntry(at / 1000, bool(ok), phase, reason, code, total / 1e6, times, tls, expires)
                by_time[entry.at] = entry
        for entry in waiting:
            by_time[entry.at] = entry
        return sorted(by_time.values(), key=lambda e: e.at, reverse=True)[:limit]

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
        """The newest `limit` hours or UTC days of `name` that had runs, newest first (written results: moved
        and in the journal)."""
        pid = self._ids.get(name)
        if pid is None:
            return []
        limit = max(0, min(limit, 100_000))
        seconds = HOUR if period == "hour" else DAY
        found, in_journal = self._with_journal(_SELECT_ROLLUPS[seconds], (pid, limit), _SUM_JOURNAL, pid, 100_000)
        by_start = {start: _Rollup(runs, failures, decode_histogram(blob)) for start, runs, failures, blob in found}
        for (p, _, start), delta in _sum_journal(in_journal).items():
            if p == seconds:
                agg = by_start.setdefault(start, _Rollup())
                agg.runs += delta.runs
                agg.failures += delta.failures
                for bucket, count in list(delta.latency.items()):
                    agg.latency[bucket] = agg.latency.get(bucket, 0) + count
        return [
            Rollup(float(start), a.runs, a.failures, percentile(a.latency, 0.5), percentile(a.latency, 0.95))
            for start, a in sorted(by_start.items(), reverse=True)[:limit]
        ]

    def availability(self, name: str) -> Availability:
        return self._availability.get(name, NO_AVAILABILITY)

    def availability_all(self) -> Mapping[str, Availability]:
        """Every probe's availability, from memory (refreshed after each batch): a read-only mapping."""
        return self._availability

    def _with_journal(
        self, sql: str, args: tuple[int, ...], journal_sql: str, pid: int, limit: int
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """`sql`'s rows and the newest `limit` of the probe's rows in the journal, found by their ids (the journal
        has no index by probe: every batch would write one all over), read in one transaction: a move of the
        journal in between shows its rows on one side, not on neither. [] when closed or failing."""
        journal = self._journal_ids.get(pid)
        newest = journal[-limit:] if journal and limit else []  # a slice: one step while the writer appends
        with self._read_lock:
            reader = self._reader
            if reader is None:
                return [], []
            try:
                reader.execute("BEGIN")
                try:
                    found = reader.execute(sql, args).fetchall()
                    in_journal: list[tuple[Any, ...]] = []
                    for start in range(0, len(newest), _IDS_PER_QUERY):  # a few at 60 s and a 10-minute journal
                        ids = newest[start : start + _IDS_PER_QUERY]
                        marks = ",".join("?" * len(ids))
                        in_journal += reader.execute(journal_sql.format(marks=marks), (pid, *ids)).fetchall()
                finally:
                    reader.execute("COMMIT")
            except sqlite3.Error as exc:
                log.warning("history: reading %s failed: %s", self.path, exc)
                return [], []
        return found, in_journal

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


def _sum_journal(rows: Iterable[tuple[int, int, int, int]]) -> dict[tuple[int, int, int], _Rollup]:
    """(probe, at ms, ok, total µs) rows summed by (period, probe id, start) for the rollups."""
    sums: dict[tuple[int, int, int], _Rollup] = {}
    for pid, at_ms, ok, total_us in rows:
        at = at_ms // 1000
        bucket = bucket_of(total_us / 1e6) if ok else -1
        for period in (HOUR, DAY):
            key = (period, pid, at - at % period)
            agg = sums.get(key)
            if agg is None:
                agg = sums[key] = _Rollup()
            agg.runs += 1
            if bucket >= 0:
                agg.latency[bucket] = agg.latency.get(bucket, 0) + 1
            else:
                agg.failures += 1
    return sums


def _clamp(value: float) -> int:
    """A float as a stored integer: NaN as 0, never beyond SQLite's 64 bits."""
    if value != value:  # NaN
        return 0
    return round(min(max(value, -(2**62)), 2**62))


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
