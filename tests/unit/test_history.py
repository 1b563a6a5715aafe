"""History: compact results, availability and rollups with exact values for a scripted sequence on an injected
clock, retention by count and age, status changes from the store, failed writes counted, restarts."""

from __future__ import annotations

import _sqlite3
import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.config.schema import HistoryConfig, SmtpProbeConfig
from monitor.model.delivery import DeliveryPhase, DeliveryResult
from monitor.model.results import CertInfo, MxResult, Phase, Reason, Reply, SmtpResult, TlsInfo
from monitor.state import history as history_module
from monitor.state.health import AgentHealth
from monitor.state.history import (
    Availability,
    History,
    HistoryEntry,
    Period,
    bucket_bound,
    bucket_of,
    compact,
    percentile,
)
from monitor.state.store import ResultsStore

HOUR = 3600
DAY = 86400
DAY0 = 20_428 * DAY  # a UTC midnight (2025-12-06)
NOW = DAY0 + 10 * HOUR + 30 * 60  # 10:30 on DAY0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def smtp(at: float, ok: bool = True, total: float = 0.016) -> SmtpResult:
    if ok:
        return SmtpResult("127.0.0.1", 25, "starttls", at, True, timings={"connect": 0.002, "tls": 0.01}, total=total)
    return SmtpResult(
        "127.0.0.1",
        25,
        "starttls",
        at,
        False,
        phase=Phase.BANNER,
        reason=Reason.REPLY,
        error="554 5.7.1 go away",
        reply=Reply(554, ("5.7.1 go away",)),
        timings={"connect": 0.002},
        total=0.004,
    )


def opened(path: Path, clock: Clock, **settings: object) -> History:
    history = History(path / "state.db", HistoryConfig.model_validate(settings), AgentHealth(), clock)
    history.open()
    return history


def raw_rows(path: Path) -> int:
    """Results kept: moved, and in the journal."""
    with sqlite3.connect(path / "state.db") as conn:
        moved = conn.execute("SELECT count(*) FROM history_result").fetchone()[0]
        return int(moved + conn.execute("SELECT count(*) FROM history_journal").fetchone()[0])


class TestHistogram:
    def test_exact_bounds_stay_in_their_own_bucket(self) -> None:
        for k in range(0, 120, 8):
            bound = 0.001 * 2 ** (k / 8)
            assert bucket_of(bound) == k
            assert bucket_bound(bucket_of(bound)) == pytest.approx(bound)
        assert bucket_of(0.0) == 0
        assert bucket_of(1e9) == 159

    def test_percentile_is_the_nearest_rank_buckets_bound(self) -> None:
        counts = {bucket_of(0.016): 10, bucket_of(0.128): 9, bucket_of(1.024): 1}
        assert percentile(counts, 0.5) == pytest.approx(0.016)
        assert percentile(counts, 0.95) == pytest.approx(0.128)
        assert percentile(counts, 0.99) == pytest.approx(1.024)
        assert percentile({}, 0.5) is None


class TestScriptedSequence:
    def test_availability_and_rollups_across_hour_and_day_boundaries(self, tmp_path: Path) -> None:
        clock = Clock(NOW)
        history = opened(tmp_path, clock)
        script: list[tuple[float, bool, float]] = [
            # 12 days ago: outside 7 d, inside 30 d
            *((DAY0 - 12 * DAY + 60 * i, False, 0.0) for i in range(4)),
            # 3 days ago: inside 7 d and 30 d; 9 ok, 1 failed
            *((DAY0 - 3 * DAY + 60 * i, i != 0, 0.016) for i in range(10)),
            # yesterday 10:59:59, just outside the 24 h window (11:00 yesterday to now), failed
            (DAY0 - 13 * HOUR - 1, False, 0.0),
            # yesterday 11:00:00, the first second inside it
            (DAY0 - 13 * HOUR, True, 0.016),
            # the last second of yesterday and the first of today: two hours, two days
            (DAY0 - 0.5, True, 0.128),
            (DAY0, False, 0.0),
            # this hour: 20 ok runs with a known spread, 1 failed
            *((NOW - 1200 + i, True, 0.016) for i in range(10)),
            *((NOW - 1100 + i, True, 0.128) for i in range(9)),
            (NOW - 1000, True, 1.024),
            (NOW - 900, False, 0.0),
        ]
        for at, ok, total in script:
            history.on_result("relay", smtp(at, ok, total))
        history.flush()

        # 24 h: yesterday 11:00, 23:59:59.5, today 00:00 and this hour's 21 runs: 24 runs, 2 failed
        # 7 d: today (22 runs, 2 failed), yesterday (10:59:59, 11:00, 23:59:59.5: 3 runs, 1 failed), 3 days ago
        # (10 runs, 1 failed): 35 runs, 4 failed; 30 d: also 12 days ago's 4 failures: 39 runs, 8 failed
        expected = Availability((24 - 2) / 24, (35 - 4) / 35, (39 - 8) / 39)
        assert history.availability("relay") == expected
        assert history.availability_all() == {"relay": expected}
        assert history.availability("other") == Availability(None, None, None)

        hours = history.rollups("relay", "hour", limit=3)
        assert [(r.start, r.runs, r.failures) for r in hours] == [
            (DAY0 + 10 * HOUR, 21, 1),
            (DAY0, 1, 1),
            (DAY0 - HOUR, 1, 0),
        ]
        assert hours[0].p50 == pytest.approx(0.016)
        assert hours[0].p95 == pytest.approx(0.128)
        assert hours[1].p50 is None  # no ok run in that hour
        assert hours[2].p50 == pytest.approx(0.128)
        days = history.rollups("relay", "day", limit=10)
        assert [(r.start, r.runs, r.failures) for r in days] == [
            (DAY0, 22, 2),
            (DAY0 - DAY, 3, 1),
            (DAY0 - 3 * DAY, 10, 1),
            (DAY0 - 12 * DAY, 4, 4),
        ]
        history.close()

    def test_probes_with_equal_availability_share_one_value(self, tmp_path: Path) -> None:
        history = opened(tmp_path, Clock(NOW))
        for name in ("a", "b", "c"):
            for minute in range(3):
                history.on_result(name, smtp(NOW - 600 + 60 * minute, ok=name != "c" or minute > 0))
        history.flush()

        a, b, c = (history.availability(name) for name in ("a", "b", "c"))
        assert a == b == Availability(1.0, 1.0, 1.0)
        assert a is b
        assert c == Availability(2 / 3, 2 / 3, 2 / 3)
        history.close()

    def test_windows_slide_with_the_clock_without_new_results(self, tmp_path: Path) -> None:
        clock = Clock(NOW)
        history = opened(tmp_path, clock)
        history.on_result("relay", smtp(NOW - 60, ok=False))
        history.on_result("relay", smtp(NOW - 30))
        history.flush()
        assert history.availability("relay") == Availability(0.5, 0.5, 0.5)
        clock.now = NOW + 24 * HOUR  # the hour of those runs has left the 24 h window; their day has not left 7 d
        history.flush()
        assert history.availability("relay") == Availability(None, 0.5, 0.5)
        clock.now = NOW + 30 * DAY
        history.flush()
        assert history.availability("relay") == Availability(None, None, None)
        history.close()

    def test_each_probes_windows_are_its_own_and_slide_alone(self) -> None:
        # every probe's rings share three flat arrays: no count may land in a neighbour's slots
        windows = history_module._Windows()
        windows.advance(NOW)
        hour, day = int(NOW // HOUR), int(NOW // DAY)
        for index, name in enumerate(("a", "b", "c")):
            windows.add_hour(name, hour, 10 * (index + 1), index)
            windows.add_day(name, day, 10 * (index + 1), index)
        windows.add_day("c", day - 8, 4, 4)  # in the month, not the week
        assert windows.availability("a") == Availability(1.0, 1.0, 1.0)
        assert windows.availability("b") == Availability(0.95, 0.95, 0.95)
        assert windows.availability("c") == Availability(28 / 30, 28 / 30, 28 / 34)
        assert windows.availability("nobody") == Availability(None, None, None)
        windows.advance(NOW + DAY)  # the hour left the 24 h window, the day is still in the week and month
        assert windows.availability("b") == Availability(None, 0.95, 0.95)
        assert windows.availability("c") == Availability(None, 28 / 30, 28 / 34)

    def test_an_hour_with_more_runs_than_its_slot_holds_is_counted_without_error(self) -> None:
        # 16-bit hourly slots: 70,000 runs in an hour (an interval under 55 ms) saturate the slot; the daily
        # slots are 32-bit, so the week and month stay exact
        windows = history_module._Windows()
        windows.advance(NOW)
        windows.add_hour("fast", int(NOW // HOUR), 70_000, 7_000)
        windows.add_day("fast", int(NOW // DAY), 70_000, 7_000)
        found = windows.availability("fast")
        assert found.day == pytest.approx((65_535 - 7_000) / 65_535)
        assert (found.week, found.month) == (0.9, 0.9)

    def test_recent_is_newest_first_with_the_compact_fields(self, tmp_path: Path) -> None:
        history = opened(tmp_path, Clock(NOW))
        for i in range(5):
            history.on_result("relay", smtp(NOW - 300 + 60 * i, ok=i != 3))
        queued = history.recent("relay", limit=2)  # not yet written: served from the queue
        history.flush()
        written = history.recent("relay", limit=2)
        assert queued == written
        assert [e.at for e in written] == [NOW - 60, NOW - 120]
        failed = written[1]
        assert failed == HistoryEntry(NOW - 120, False, "banner", "reply", 554, 0.004, {"connect": 0.002}, "", None)
        assert written[0].timings == {"connect": 0.002, "tls": 0.01}
        assert len(history.recent("relay")) == 5
        assert history.recent("nobody") == []
        history.close()


class TestCompact:
    def test_smtp_keeps_tls_version_and_the_earliest_expiry(self) -> None:
        expiry = datetime(2027, 3, 1, tzinfo=UTC)
        cert = CertInfo("CN=mail.test", "CN=ca", (), expiry - timedelta(days=90), expiry, "1", "ab" * 32)
        chain_expiry = expiry - timedelta(days=10)
        result = SmtpResult("h", 25, "starttls", NOW, True, total=0.2, tls=TlsInfo("TLSv1.3", "c", True, cert=cert))
        assert compact(result).tls_version == "TLSv1.3"
        assert compact(result).cert_not_after == expiry.timestamp()
        chained = SmtpResult(
            "h", 25, "starttls", NOW, True, tls=TlsInfo("TLSv1.2", "c", True, cert=cert, chain_not_after=chain_expiry)
        )
        assert compact(chained).cert_not_after == chain_expiry.timestamp()

    def test_delivery_keeps_its_latency_as_total_and_mx_its_own_total(self) -> None:
        arrived = DeliveryResult("d", NOW, True, latency=3.5, total=9.0, reply=None)
        assert compact(arrived).total == 3.5
        lost = DeliveryResult(
            "d", NOW, False, phase=DeliveryPhase.SUBMIT, reason=Reason.REPLY, reply=Reply(550, ("no",)), total=1.0
        )
        assert (compact(lost).total, compact(lost).reply_code, compact(lost).phase) == (0.0, 550, "submit")
        mx = MxResult("example.test", NOW, False, phase=Phase.MX, reason=Reason.NXDOMAIN, total=0.25)
        assert compact(mx) == HistoryEntry(NOW, False, "mx", "nxdomain", 0, 0.25, {}, "", None)


class TestJournal:
    def test_moving_the_journal_changes_no_answer(self, tmp_path: Path) -> None:
        clock = Clock(NOW)
        history = opened(tmp_path, clock)
        for i in range(30):  # across the hour and day boundary before DAY0
            history.on_result("relay", smtp(DAY0 - 900 + 60 * i, ok=i % 4 != 0, total=0.016 * (1 + i % 3)))
        history.on_result("relay", smtp(NOW - 60, ok=False))
        history.flush()
        before = (history.recent("relay", 100), history.rollups("relay", "hour"), history.rollups("relay", "day"))
        assert before[1][0].runs == 1  # the pending counts are served before they are written
        availability = history.availability_all()
        history.compact()
        with sqlite3.connect(tmp_path / "state.db") as conn:
            assert conn.execute("SELECT count(*) FROM history_journal").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM history_result").fetchone()[0] == 31
        after = (history.recent("relay", 100), history.rollups("relay", "hour"), history.rollups("relay", "day"))
        assert after == before
        assert history.availability_all() == availability
        history.close()
        reopened = opened(tmp_path, clock)  # and the same once more from the database alone
        assert (reopened.recent("relay", 100), reopened.rollups("relay", "hour")) == before[:2]
        assert reopened.availability_all() == availability
        reopened.close()

    def test_a_batch_appends_to_the_journal_and_the_writer_moves_it_every_ten_minutes(self, tmp_path: Path) -> None:
        clock = Clock(NOW)
        history = opened(tmp_path, clock)
        history.on_result("relay", smtp(NOW))
        history.flush()
        with sqlite3.connect(tmp_path / "state.db") as conn:
            assert conn.execute("SELECT count(*) FROM history_journal").fetchone()[0] == 1
        clock.now = NOW + history_module.COMPACT_INTERVAL
        history.flush()
        with sqlite3.connect(tmp_path / "state.db") as conn:
            assert conn.execute("SELECT count(*) FROM history_journal").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM history_result").fetchone()[0] == 1
        history.close()

    def test_a_move_summed_in_chunks_that_split_probes_changes_no_answer(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(history_module, "MOVE_CHUNK_ROWS", 7)  # every probe's 30 rows fall in several chunks
        clock = Clock(NOW)
        history = opened(tmp_path, clock)
        names = [f"relay-{n}" for n in range(3)]
        for i in range(30):  # across the hour and day boundary before DAY0
            for n, name in enumerate(names):
                at = DAY0 - 900 + 60 * i
                history.on_result(name, smtp(at, ok=(i + n) % 4 != 0, total=0.016 * (1 + (i + n) % 3)))
        history.flush()
        periods: tuple[Period, ...] = ("hour", "day")
        before = {name: [history.rollups(name, period) for period in periods] for name in names}
        assert before["relay-0"][0][0].runs == 15  # 23:45 to 23:59, from the journal before the move
        history.compact()
        with sqlite3.connect(tmp_path / "state.db") as conn:
            assert conn.execute("SELECT count(*) FROM history_journal").fetchone()[0] == 0
        assert {name: [history.rollups(name, period) for period in periods] for name in names} == before
        history.close()

    def test_moving_a_large_journal_keeps_sqlites_memory_bounded(self, tmp_path: Path) -> None:
        # A move touches pages of every probe in each table, and SQLite keeps what it touched up to its page
        # cache's size. With a 16 MiB cache this grew 3.4 MiB (10.9 MiB at 10,000 probes, and the agent 16 MiB
        # at each of its first two moves).
        # The SQLite that sqlite3 runs on: the one _sqlite3 links to, or the interpreter's own when built in
        sqlite_heap = ctypes.CDLL(getattr(_sqlite3, "__file__", None)).sqlite3_memory_used
        sqlite_heap.restype = ctypes.c_int64
        clock = Clock(NOW)
        before = sqlite_heap()
        history = opened(tmp_path, clock)
        for _ in range(2):
            for _ in range(10):
                for i in range(3000):
                    history.on_result(f"relay-{i}", smtp(clock.now))
                clock.now += 60
            history.flush()
            history.compact()
        grown = sqlite_heap() - before
        history.close()
        assert raw_rows(tmp_path) == 60_000
        # 2.2 MiB: the writer's 2 MiB cache, the reader's few pages, statements and schema
        assert grown < 3 * 2**20, f"{grown / 2**20:.2f} MiB"


class TestRetention:
    def test_count_limit_holds_in_bulk(self, tmp_path: Path) -> None:
        history = opened(tmp_path, Clock(NOW), raw_max_per_probe=20)  # slack: 10 rows
        for i in range(100):
            history.on_result("relay", smtp(NOW - 1000 + i))
        history.flush()
        assert raw_rows(tmp_path) == 100  # in the journal: trimmed when it moves
        history.compact()
        assert raw_rows(tmp_path) == 20
        assert history.recent("relay", limit=100)[-1].at == NOW - 1000 + 80  # the newest 20 kept
        for i in range(9):
            history.on_result("relay", smtp(NOW - 500 + i))
        history.flush()
        history.compact()
        assert raw_rows(tmp_path) == 29  # below the slack: no delete yet
        history.on_result("relay", smtp(NOW - 400))
        history.flush()
        history.compact()
        assert raw_rows(tmp_path) == 20
        history.close()

    def test_age_limits_of_results_rollups_and_changes(self, tmp_path: Path) -> None:
        clock = Clock(NOW)
        history = opened(tmp_path, clock, raw_max_age="1h", hourly_max_age="2h", daily_max_age="2d",
                         changes_max_age="3h", retention_interval="1m")  # fmt: skip
        history.on_result("relay", smtp(NOW - 2 * HOUR))
        history.on_result("relay", smtp(NOW - 60))
        history.on_status_change("relay", NOW - 4 * HOUR, "ok", "failed", "banner", "reply", "554")
        history.on_status_change("relay", NOW - 60, "failed", "ok", "", "", "")
        history.flush()
        history.compact()
        assert len(history.recent("relay")) == 2
        clock.now = NOW + 61  # the first retention pass comes a minute after opening
        history.flush()
        assert [e.at for e in history.recent("relay")] == [NOW - 60]
        assert [c.at for c in history.changes("relay")] == [NOW - 60]
        assert [r.start for r in history.rollups("relay", "hour")] == [DAY0 + 10 * HOUR]
        assert [r.start for r in history.rollups("relay", "day")] == [DAY0]
        clock.now = NOW + 3 * DAY
        history.flush()
        assert history.recent("relay") == []
        assert history.rollups("relay", "hour") == []
        assert history.rollups("relay", "day") == []
        history.close()

    def test_three_simulated_days_stay_within_the_limits(self, tmp_path: Path) -> None:
        clock = Clock(DAY0)
        history = opened(tmp_path, clock, raw_max_per_probe=100, changes_max_per_probe=5, retention_interval="10m")
        probes = [f"p{i}" for i in range(5)]
        most = 0
        for minute in range(3 * 24 * 60):
            clock.now = DAY0 + 60 * minute
            for name in probes:
                history.on_result(name, smtp(clock.now, ok=minute % 7 != 0))
            if minute % 7 == 0:
                history.on_status_change(probes[0], clock.now, "ok", "failed", "banner", "reply", "554")
            if minute % 5 == 0:  # a batch every 5 minutes of the fake clock
                history.flush()
                most = max(most, raw_rows(tmp_path))
        history.flush()
        history.compact()
        assert most <= len(probes) * (100 + 2 * 10)  # the limit, the slack, and 10 minutes of journal
        with sqlite3.connect(tmp_path / "state.db") as conn:
            assert conn.execute("SELECT count(*) FROM history_change").fetchone()[0] == 5
            hourly = conn.execute("SELECT count(*) FROM history_hourly").fetchone()[0]
        assert hourly == len(probes) * 3 * 24  # 8 days kept: none dropped yet
        last_day = range(2 * 1440, 3 * 1440)  # the minutes of the last 24 hours
        assert history.availability("p0").day == (1440 - sum(1 for m in last_day if m % 7 == 0)) / 1440
        history.close()


class TestStatusChanges:
    def test_failed_and_recovered_from_the_store_newest_first(self, tmp_path: Path) -> None:
        history = opened(tmp_path, Clock(NOW))
        store = ResultsStore()
        store.configure([(SmtpProbeConfig(name="relay", host="127.0.0.1"), 2, 14)])
        store.on_result(history.on_result)
        store.subscribe(history.on_event)
        for ok in (True, False, False, False, True):
            store.record("relay", smtp(NOW, ok=ok) if ok else smtp(NOW, ok=False))
        history.flush()
        changes = history.changes("relay")
        assert [(c.old, c.new, c.phase, c.reason, c.error) for c in changes] == [
            ("failed", "ok", "", "", ""),
            ("ok", "failed", "banner", "reply", "554 5.7.1 go away"),
        ]
        assert changes[0].at >= changes[1].at
        assert len(history.recent("relay")) == 1  # the five results share one start time: one row
        history.close()

    def test_many_changes_at_once_wait_for_the_batch(self, tmp_path: Path) -> None:
        history = opened(tmp_path, Clock(NOW), flush_interval="60s")
        history.start()
        for i in range(999):  # a network outage: every probe goes red within the same seconds
            history.on_status_change(f"p{i}", NOW, "ok", "failed", "connect", "refused", "")
        time.sleep(0.3)
        assert history.batches == 0  # not one transaction per change
        history.on_status_change("p999", NOW, "ok", "failed", "connect", "refused", "")  # batch_rows: 1,000
        for _ in range(100):
            if history.batches:
                break
            time.sleep(0.02)
        assert history.batches == 1
        history.stop()
        assert history.changes("p999") == []  # closed
        again = opened(tmp_path, Clock(NOW))
        assert [c.new for c in again.changes("p999")] == ["failed"]
        again.close()

    def test_every_recorded_result_reaches_the_hook_even_unannounced(self) -> None:
        store = ResultsStore(announce=False)
        store.configure([(SmtpProbeConfig(name="relay", host="127.0.0.1"), 2, 14)])
        seen: list[tuple[str, bool]] = []
        store.on_result(lambda name, result: seen.append((name, result.ok)))
        store.record("relay", smtp(NOW))
        store.record("relay", smtp(NOW + 60, ok=False))
        store.record("gone", smtp(NOW))  # not configured: not recorded
        assert seen == [("relay", True), ("relay", False)]


class TestFailures:
    def test_a_failed_write_is_counted_and_logged_never_raised(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        history = opened(tmp_path, Clock(NOW))
        with sqlite3.connect(tmp_path / "state.db") as conn:
            conn.execute("DROP TABLE history_journal")
        history.on_result("relay", smtp(NOW))
        history.flush()
        assert history.write_errors == 1
        assert history.health.state_write_errors == 1
        assert "history: writing 1 results" in caplog.text
        assert len(history.recent("relay")) == 1  # queued again for one more try
        history.flush()
        assert history.write_errors == 2
        assert history.dropped == 1
        assert history.recent("relay") == []
        assert history.availability("relay") == Availability(None, None, None)  # nothing counted unwritten
        history.close()

    def test_a_locked_database_delays_the_writer_not_the_caller_and_loses_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(history_module, "BUSY_TIMEOUT_MS", 50)
        history = opened(tmp_path, Clock(NOW))
        other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the database past the busy timeout
        started = time.perf_counter()
        for i in range(1000):
            history.on_result("relay", smtp(NOW - 1000 + i))
        assert time.perf_counter() - started < 0.5  # queueing only: no wait for the lock
        history.flush()
        assert history.write_errors == 1
        other.execute("COMMIT")
        other.close()
        history.flush()
        history.compact()
        assert history.dropped == 0
        assert raw_rows(tmp_path) == 720  # all 1,000 written, then trimmed to the default count limit
        assert history.rollups("relay")[0].runs == 1000
        history.close()

    def test_a_newer_history_schema_is_refused_at_open(self, tmp_path: Path) -> None:
        with sqlite3.connect(tmp_path / "state.db") as conn:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO meta VALUES ('history_schema', '99')")
        with pytest.raises(sqlite3.DatabaseError, match="newer"):
            opened(tmp_path, Clock(NOW))


class TestRestart:
    def test_written_history_survives_kill_9_and_windows_are_rebuilt(self, tmp_path: Path) -> None:
        script = textwrap.dedent(
            f"""
            import os, signal
            from pathlib import Path
            from monitor.config.schema import HistoryConfig
            from monitor.model.results import SmtpResult
            from monitor.state.history import History
            h = History(Path({str(tmp_path / "state.db")!r}), HistoryConfig(), clock=lambda: {NOW})
            h.open()
            h.start()
            for i in range(10):
                h.on_result("relay", SmtpResult("h", 25, "none", {NOW} - 600 + i, i % 5 != 0, total=0.016))
            h.on_status_change("relay", {NOW} - 500, "ok", "failed", "banner", "reply", "554 no")
            h.flush()
            h.on_result("relay", SmtpResult("h", 25, "none", {NOW} - 10, False))  # queued, never written
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=60)
        assert done.returncode == -signal.SIGKILL
        history = opened(tmp_path, Clock(NOW))
        assert len(history.recent("relay")) == 10
        assert history.recent("relay")[0].at == NOW - 600 + 9
        assert [c.error for c in history.changes("relay")] == ["554 no"]
        assert history.availability_all() == {"relay": Availability(0.8, 0.8, 0.8)}
        # the restarted history adds to the same hour's rollup
        history.on_result("relay", smtp(NOW - 5, ok=False))
        history.flush()
        assert history.rollups("relay")[0].runs == 11
        assert history.availability("relay") == Availability(8 / 11, 8 / 11, 8 / 11)
        history.close()
        assert os.path.exists(tmp_path / "state.db")


class TestEncoding:
    def test_varints_and_histograms_round_trip(self) -> None:
        from monitor.state.history import decode_histogram, decode_varints, encode_histogram, encode_varints

        values = [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 2**40]
        assert decode_varints(encode_varints(values)) == values
        assert decode_varints(encode_varints([-5])) == [0]
        assert len(encode_varints([5_000])) == 2  # 5 ms in microseconds
        counts = {0: 3, 7: 200, 159: 1}
        assert decode_histogram(encode_histogram(counts)) == counts
        assert decode_histogram(encode_histogram(counts)[:-1]) == {0: 3, 7: 200}  # a torn tail loses its pair

    def test_a_nan_or_infinite_time_is_stored_clamped_not_a_failed_batch(self, tmp_path: Path) -> None:
        history = opened(tmp_path, Clock(NOW))
        history.on_result("relay", smtp(NOW, total=float("nan")))
        history.on_result("relay", smtp(NOW + 1, total=float("inf")))
        history.flush()
        assert history.write_errors == 0
        assert [e.total for e in history.recent("relay")] == [2**62 / 1e6, 0.0]
        history.close()
