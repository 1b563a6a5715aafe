"""The state database: probe states and undelivered notifications kept across restarts (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pydantic import TypeAdapter

from monitor.model.delivery import DeliveryLedger
from monitor.model.probe_result import ProbeResult, result_from_json, result_to_json
from monitor.model.results import SmtpResult, Status
from monitor.model.wire import adapter
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeState, ResultsStore, StoreEvent

log = logging.getLogger("smtp_monitor.state")

STATE_FILE = "state.db"  # inside agent.state_dir
# Modes of what the agent keeps in state_dir, whatever the umask it was started with: the state holds
# error texts and receiver names, the SNMP engine state the boots counter replay protection rests on.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
# 2: probe_state.delivery (a delivery probe's pending messages and counts)
# 3: probe_state.last_failure (the latest failed result, with its transcript, kept past recoveries)
SCHEMA_VERSION = 3
FLUSH_INTERVAL = 5.0  # seconds between batched saves of counters and last results

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS probe_state (
    name TEXT PRIMARY KEY,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    failures_by_cause TEXT NOT NULL,
    last_success REAL,
    last_change REAL,
    cert_warned_for TEXT NOT NULL,
    last_result TEXT,
    delivery TEXT,
    last_failure TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    event TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) if missing, and make it PRIVATE_DIR_MODE if this user owns it.

    A directory someone else owns (a volume's root in a container) keeps its mode: the files in it are
    private anyway."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)  # the mode is masked by the umask
    info = path.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != PRIVATE_DIR_MODE:
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except OSError as exc:
            log.warning("cannot make state directory %s private (mode %o): %s", path, PRIVATE_DIR_MODE, exc)


def private_file(path: Path) -> None:
    """Create `path` empty if missing, and make it PRIVATE_FILE_MODE whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # an existing file (an older agent's, 0644) too
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text` in a PRIVATE_FILE_MODE file (OSError if that fails)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        private_dir(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # O_CREAT's mode is masked by the umask
            out.write(text)
            out.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def config_hash(state: ProbeState) -> str:
    """Identifies a probe's configuration: a changed probe starts afresh after a restart too."""
    return hashlib.sha256(state.config.model_dump_json().encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A notification decided but not yet delivered (or acknowledged) to one receiver."""

    id: int
    receiver: str
    event: dict[str, Any]
    created: float


class _WriteFailed(Exception):
    """A write transaction failed (already counted and logged)."""


class StateDB:
    """One SQLite file; every write is one transaction, so a kill -9 leaves either the old or the
    new rows, never a torn database. All calls are serialised by a lock (thread-safe)."""

    def __init__(self, path: Path, health: AgentHealth | None = None) -> None:
        self.path = path
        self.health = health or AgentHealth()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (creating if needed); a corrupt or foreign file is moved aside and replaced."""
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "state database %s is unreadable (%s): moved to %s, starting with fresh state", self.path, exc, aside
            )
            self.close()
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self._connect()

    def _connect(self) -> None:
        # SQLite creates files 0644 less the umask; its -wal and -shm files take the database's mode.
        private_dir(self.path.parent)
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            journal = Path(f"{self.path}{suffix}")
            if journal.exists():
                os.chmod(journal, PRIVATE_FILE_MODE)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
        self._conn = conn
        # WAL: a crash loses at most the last transaction and never corrupts earlier ones.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        check = conn.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] in _MIGRATIONS:
            # An earlier release's file: its states are kept; what later schemas add starts empty.
            conn.execute("BEGIN IMMEDIATE")  # all or nothing: a kill -9 between would leave a column twice added
            for statement in _MIGRATIONS[row[0]]:
                conn.execute(statement)
            conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
            log.info("state database %s: schema %s updated to %d", self.path, row[0], SCHEMA_VERSION)
        elif row[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection | None]:
        """One write transaction; a failure rolls back, is counted and logged, never raised."""
        with self._lock:
            conn = self._conn
            if conn is None:
                yield None
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.health.state_write_errors += 1
                log.error("state database write failed: %s", exc)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise _WriteFailed from None

    def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> bool:
        try:
            with self._transaction() as conn:
                if conn is None:
                    return False
                for sql, params in statements:
                    conn.execute(sql, params)
        except _WriteFailed:
            return False
        return True

    # -- probe states ---------------------------------------------------------------
    def save_states(self, states: Iterable[ProbeState], removed: Iterable[str] = ()) -> bool:
        removed = list(removed)
        for name in removed:
            _failure_json.pop(name, None)
        statements = [("DELETE FROM probe_state WHERE name=?", (name,)) for name in removed]
        statements += [(_UPSERT, _row(state)) for state in states]
        return self._write(statements)

    def load_states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            assert self._conn is not None
            cursor = self._conn.execute("SELECT * FROM probe_state")
            names = [c[0] for c in cursor.description]
            return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}

    # -- notifications not yet delivered ---------------------------------------------------
    def add_outbox(self, entries: list[tuple[str, dict[str, Any]]], states: Iterable[ProbeState] = ()) -> list[int]:
        """Record notifications to send together with the state change that caused them."""
        now = time.time()
        try:
            with self._transaction() as conn:
                if conn is None:
                    return []
                for state in states:
                    conn.execute(_UPSERT, _row(state))
                return [
                    int(
                        conn.execute(
                            "INSERT INTO outbox (receiver, event, created) VALUES (?, ?, ?)",
                            (receiver, json.dumps(event), now),
                        ).lastrowid
                        or 0
                    )
                    for receiver, event in entries
                ]
        except _WriteFailed:
            return []

    def remove_outbox(self, entry_id: int) -> None:
        self._write([("DELETE FROM outbox WHERE id=?", (entry_id,))])

    def pending_outbox(self) -> list[OutboxEntry]:
        with self._lock:
            assert self._conn is not None
            rows = self._conn.execute("SELECT id, receiver, event, created FROM outbox ORDER BY id").fetchall()
        return [OutboxEntry(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]


_ADD_DELIVERY = "ALTER TABLE probe_state ADD COLUMN delivery TEXT"  # schema 2
_ADD_LAST_FAILURE = "ALTER TABLE probe_state ADD COLUMN last_failure TEXT"  # schema 3
# An earlier schema's file -> the statements that bring it to SCHEMA_VERSION.
_MIGRATIONS = {"1": (_ADD_DELIVERY, _ADD_LAST_FAILURE), "2": (_ADD_LAST_FAILURE,)}

_UPSERT = """
INSERT INTO probe_state (name, config_hash, status, consecutive_failures, runs, failures, failures_by_cause,
                         last_success, last_change, cert_warned_for, last_result, delivery, last_failure)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(name) DO UPDATE SET
    config_hash=excluded.config_hash, status=excluded.status,
    consecutive_failures=excluded.consecutive_failures, runs=excluded.runs, failures=excluded.failures,
    failures_by_cause=excluded.failures_by_cause, last_success=excluded.last_success,
    last_change=excluded.last_change, cert_warned_for=excluded.cert_warned_for, last_result=excluded.last_result,
    delivery=excluded.delivery, last_failure=excluded.last_failure
"""


def _row(state: ProbeState) -> tuple[Any, ...]:
    causes = [[phase, reason, count] for (phase, reason), count in state.failures_by_cause.items()]
    return (
        state.name,
        config_hash(state),
        state.status.value,
        state.consecutive_failures,
        state.runs,
        state.failures,
        json.dumps(causes),
        state.last_success,
        state.last_change,
        state.cert_warned_for,
        result_to_json(state.last_result) if state.last_result is not None else None,
        json.dumps(state.delivery.as_dict()) if state.delivery is not None else None,
        _last_failure_json(state),
    )


def _last_failure_json(state: ProbeState) -> str | None:
    """The saved last failure; "=" when it is the last result (a failing probe), saved once instead of twice.

    A recovered probe keeps its last failure for weeks while every run changes its state: its JSON is
    made once and kept with the result it is of (an SMTP result with its transcript is 50-100 us of JSON,
    at 10,000 probes a minute 1 % of a core saved)."""
    failure = state.last_failure
    if failure is None:
        return None
    if failure is state.last_result:
        return _SAME_AS_LAST
    cached = _failure_json.get(state.name)
    if cached is not None and cached[0] is failure:
        return cached[1]
    text = result_to_json(failure)
    _failure_json[state.name] = (failure, text)
    return text


_SAME_AS_LAST = "="
# probe name -> (its last failure, that failure's JSON); written from the loop and the flush thread, where
# a lost race only makes the JSON again
_failure_json: dict[str, tuple[ProbeResult, str]] = {}


# failures_by_cause as saved by _row: [[phase, reason, count], ...]
_CAUSES: TypeAdapter[list[tuple[str, str, int]]] = TypeAdapter(list[tuple[str, str, int]])


def _ledger(saved: str | None, kind: str) -> DeliveryLedger | None:
    if kind != "delivery":
        return None
    if not saved:
        return DeliveryLedger()
    ledger: DeliveryLedger = adapter(DeliveryLedger).validate_json(saved)
    if len(ledger.latency_buckets) != len(DeliveryLedger().latency_buckets):  # saved with other buckets
        ledger = replace(ledger, latency_buckets=DeliveryLedger().latency_buckets, latency_sum=0.0, latency_count=0)
    return ledger


def restore_into(store: ResultsStore, rows: dict[str, dict[str, Any]]) -> int:
    """Put saved states back for probes whose configuration is unchanged; returns how many."""
    return store.restore(_saved_states(store, rows))


def _saved_states(store: ResultsStore, rows: dict[str, dict[str, Any]]) -> Iterator[ProbeState]:
    """Each usable saved state, built on its probe's current state (config, thresholds)."""
    for name, current in store.snapshot().states.items():
        row = rows.get(name)
        if row is None or row["config_hash"] != config_hash(current):
            continue
        try:
            result = result_from_json(row["last_result"]) if row["last_result"] else None
            saved_failure = row.get("last_failure")
            last_failure = result if saved_failure == _SAME_AS_LAST else _saved_failure(saved_failure)
            causes = {(p, r): c for p, r, c in _CAUSES.validate_json(row["failures_by_cause"])}
            yield ProbeState(
                name=name,
                kind=current.kind,
                config=current.config,
                alert_after=current.alert_after,
                cert_warn_days=current.cert_warn_days,
                status=Status(row["status"]),
                last_result=result,
                last_failure=last_failure,
                consecutive_failures=int(row["consecutive_failures"]),
                runs=int(row["runs"]),
                failures=int(row["failures"]),
                failures_by_cause=causes,
                last_success=row["last_success"],
                last_change=row["last_change"],
                cert_warned_for=row["cert_warned_for"],
                last_tls=result.tls if isinstance(result, SmtpResult) else None,
                last_tls_at=result.started_at if isinstance(result, SmtpResult) and result.tls else None,
                delivery=_ledger(row.get("delivery"), current.kind),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("saved state of %s is unusable (%s): starting it afresh", name, exc)


def _saved_failure(saved: str | None) -> ProbeResult | None:
    """The saved last failure; an unreadable one is dropped alone (the state's counters stay)."""
    if not saved:
        return None
    try:
        failure = result_from_json(saved)
    except ValueError as exc:
        log.warning("a saved last failure is unusable (%s): dropped", exc)
        return None
    return None if failure.ok else failure


class StatePersister:
    """Saves the store: status changes at once (before any notification goes out), counters and
    last results in batches off the event loop."""

    def __init__(self, db: StateDB, store: ResultsStore) -> None:
        self.db = db
        self.store = store
        self._saved: dict[str, ProbeState] = {}
        self._task: asyncio.Task[None] | None = None

    def on_event(self, event: StoreEvent) -> None:
        # Synchronous on purpose: a crash right after a status change must not forget it, or the
        # restarted agent would report the same transition again.
        if self.db.save_states([event.state]):
            self.saved(event.state)

    def saved(self, state: ProbeState) -> None:
        self._saved[state.name] = state

    def start(self) -> None:
        self._saved = dict(self.store.snapshot().states)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        snap = self.store.snapshot()
        changed = [s for name, s in snap.states.items() if self._saved.get(name) is not s]
        removed = [name for name in self._saved if name not in snap.states]
        if not changed and not removed:
            return
        if await asyncio.to_thread(self.db.save_states, changed, removed):
            for state in changed:
                self._saved[state.name] = state
            for name in removed:
                self._saved.pop(name, None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


class PreparingNotifier(Protocol):
    """What DurableNotifications needs of the notifier (monitor.exporters.snmp.notify.Notifier)."""

    def prepare(self, event: StoreEvent) -> list[tuple[str, dict[str, Any]]]: ...

    def enqueue_prepared(self, items: list[tuple[int, str, dict[str, Any]]]) -> None: ...


class DurableNotifications:
    """Store subscriber when notifications are configured: the state change and the notifications it
    causes are written in one transaction, then queued; each leaves the outbox only once delivered
    (or given up), so a crash neither repeats a failure trap nor loses a recovery trap."""

    def __init__(self, db: StateDB, persister: StatePersister, notifier: PreparingNotifier) -> None:
        self.db = db
        self.persister = persister
        self.notifier = notifier

    def on_event(self, event: StoreEvent) -> None:
        prepared = self.notifier.prepare(event)
        ids = self.db.add_outbox(prepared, states=[event.state])
        self.persister.saved(event.state)
        if len(ids) == len(prepared):
            items = [(i, label, payload) for i, (label, payload) in zip(ids, prepared, strict=True)]
            self.notifier.enqueue_prepared(items)
        else:  # the database refused the write: send anyway rather than stay silent
            self.notifier.enqueue_prepared([(0, label, payload) for label, payload in prepared])

    def done(self, outbox_id: int) -> None:
        if outbox_id:
            self.db.remove_outbox(outbox_id)

    def resend_pending(self) -> int:
        """Queue what was decided before the last stop but never delivered."""
        pending = self.db.pending_outbox()
        self.notifier.enqueue_prepared([(e.id, e.receiver, e.event) for e in pending])
        return len(pending)
