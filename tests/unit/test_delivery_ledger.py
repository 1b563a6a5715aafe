"""Delivery probes between runs: the ledger of pending, late and lost messages, kept by the store, saved in
the state database (schema 2), handed by the scheduler to the next run; delivery probes in the config."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import ConfigError, DeliveryProbeConfig, SmtpProbeConfig, parse_config
from monitor.model.delivery import (
    LATENCY_BUCKETS,
    MAX_PENDING,
    DeliveryLedger,
    DeliveryPhase,
    DeliveryReason,
    DeliveryResult,
    EarlierMessage,
    Hop,
    PendingMessage,
)
from monitor.model.probe_result import ProbeResult, result_from_json, result_to_json
from monitor.model.results import Reason, SmtpResult, Status
from monitor.probes import ProbeEnv
from monitor.probes.runners import RUNNERS
from monitor.runtime.scheduler import ProbeScheduler
from monitor.state.health import AgentHealth
from monitor.state.persistence import SCHEMA_VERSION, StateDB, StatePersister, restore_into
from monitor.state.store import ResultsStore, probe_entries

T0 = 1_800_000_000.0


def delivery_document(name: str = "loop", **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "submit": {"host": "127.0.0.1", "port": 2587, "tls": "none"},
        "from": "probe@example.test",
        "to": "probe@example.test",
        "mailbox": {"host": "127.0.0.1", "port": 2993, "username": "probe", "password": "mailbox-secret-7"},
        "deliver_within": "30s",
        "lost_after": "10m",
    }
    return {**document, **overrides}


CONFIG = DeliveryProbeConfig.model_validate(delivery_document())


def on_time(latency: float = 1.5, token: str = "a" * 32) -> DeliveryResult:
    return DeliveryResult(
        name="loop",
        started_at=T0,
        ok=True,
        token=token,
        submitted_at=T0 + 0.1,
        arrived_at=T0 + 0.1 + latency,
        latency=latency,
        hops=(Hop("client", "msa.test", "ESMTPSA", "Q1", None, 0.0),),
        folder="inbox",
        deleted=True,
    )


def late_run(token: str, submitted_at: float = T0) -> DeliveryResult:
    return DeliveryResult(
        name="loop",
        started_at=submitted_at - 0.1,
        ok=False,
        phase=DeliveryPhase.DELIVER,
        reason=DeliveryReason.LATE,
        error="not in the mailbox within 30s of submission",
        token=token,
        submitted_at=submitted_at,
        pending=True,
        late=True,
    )


def with_earlier(result: DeliveryResult, *earlier: EarlierMessage) -> DeliveryResult:
    return DeliveryResult(**{**{f: getattr(result, f) for f in result.__dataclass_fields__}, "earlier": earlier})


def arrived(token: str, latency: float) -> EarlierMessage:
    return EarlierMessage(token, T0, "late", arrived_at=T0 + latency, latency=latency, deleted=True)


def gone(token: str) -> EarlierMessage:
    return EarlierMessage(token, T0, "lost")


def delivery_store(alert_after: int = 1) -> ResultsStore:
    store = ResultsStore(announce=True)
    store.configure([(CONFIG, alert_after, 14)])
    return store


class TestLedger:
    def test_an_on_time_arrival_is_one_latency_observation_in_every_bucket_from_its_own(self) -> None:
        ledger = DeliveryLedger().after(on_time(latency=1.5))
        assert (ledger.pending, ledger.late, ledger.lost) == ((), 0, 0)
        first_holding = LATENCY_BUCKETS.index(2.0)
        assert ledger.latency_buckets == (0,) * first_holding + (1,) * (len(LATENCY_BUCKETS) + 1 - first_holding)
        assert (ledger.latency_sum, ledger.latency_count, ledger.last_latency) == (1.5, 1, 1.5)

    def test_a_late_run_leaves_its_message_pending_and_observes_nothing(self) -> None:
        ledger = DeliveryLedger().after(late_run("b" * 32))
        assert ledger.pending == (PendingMessage("b" * 32, T0),)
        assert (ledger.late, ledger.lost, ledger.latency_count, ledger.last_latency) == (0, 0, 0, None)

    def test_a_pending_message_found_later_counts_late_with_its_real_latency(self) -> None:
        ledger = DeliveryLedger().after(late_run("b" * 32))
        ledger = ledger.after(with_earlier(on_time(latency=2.0), arrived("b" * 32, 95.0)))
        assert (ledger.pending, ledger.late, ledger.lost) == ((), 1, 0)
        assert (ledger.latency_count, ledger.latency_sum, ledger.last_latency) == (2, 97.0, 95.0)
        assert ledger.latency_buckets[LATENCY_BUCKETS.index(60.0)] == 1  # 2.0 only; 95 s falls in 120
        assert ledger.latency_buckets[LATENCY_BUCKETS.index(120.0)] == 2

    def test_a_message_given_up_counts_lost_and_leaves_the_pending_list(self) -> None:
        ledger = DeliveryLedger().after(late_run("b" * 32)).after(late_run("c" * 32, T0 + 60))
        ledger = ledger.after(with_earlier(late_run("d" * 32, T0 + 700), gone("b" * 32)))
        assert [p.token for p in ledger.pending] == ["c" * 32, "d" * 32]
        assert (ledger.late, ledger.lost, ledger.latency_count) == (0, 1, 0)

    def test_the_pending_list_is_bounded_and_the_overflow_counts_lost(self) -> None:
        ledger = DeliveryLedger()
        for i in range(MAX_PENDING + 3):
            ledger = ledger.after(late_run(f"{i:032x}", T0 + i))
        assert len(ledger.pending) == MAX_PENDING
        assert ledger.pending[0].token == f"{3:032x}"  # the oldest went first
        assert ledger.lost == 3

    def test_a_failure_before_submission_changes_nothing(self) -> None:
        before = DeliveryLedger().after(late_run("b" * 32))
        refused = DeliveryResult(
            name="loop", started_at=T0, ok=False, phase=DeliveryPhase.FETCH, reason=Reason.REFUSED, error="refused"
        )
        assert before.after(refused) == before


class TestStore:
    def test_late_and_lost_earlier_messages_are_events_naming_the_message(self) -> None:
        store = delivery_store()
        seen: list[tuple[str, str | None]] = []
        store.subscribe(lambda e: seen.append((e.kind, e.earlier.token if e.earlier else None)))
        store.record("loop", late_run("b" * 32))
        store.record("loop", late_run("c" * 32, T0 + 60))
        store.record("loop", with_earlier(on_time(), arrived("b" * 32, 80.0), gone("c" * 32)))
        assert seen == [
            ("failed", None),  # saved at once with the pending message in it
            ("pending_changed", None),  # nothing to announce: saved at once all the same
            ("recovered", None),
            ("delivery_late", "b" * 32),
            ("delivery_lost", "c" * 32),
        ]
        state = store.snapshot().states["loop"]
        assert state.kind == "delivery"
        assert state.delivery is not None
        assert (state.delivery.late, state.delivery.lost, state.delivery.pending) == (1, 1, ())
        assert store.pending() == {}

    def test_late_and_lost_are_logged_with_the_token_never_the_mailbox_password(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = delivery_store()
        store.record("loop", late_run("b" * 32))
        with caplog.at_level("INFO", logger="smtp_monitor.store"):
            store.record("loop", with_earlier(on_time(), arrived("b" * 32, 80.0)))
        text = caplog.text
        assert "message " + "b" * 32 + " arrived late, 80.0s after submission" in text
        assert "mailbox-secret-7" not in text

    def test_pending_is_what_the_next_run_looks_for(self) -> None:
        store = delivery_store()
        store.record("loop", late_run("b" * 32))
        assert store.pending() == {"loop": (PendingMessage("b" * 32, T0),)}

    def test_other_kinds_carry_no_ledger(self) -> None:
        smtp = SmtpProbeConfig(name="relay", host="127.0.0.1", port=2525, tls="none")
        store = ResultsStore()
        store.configure([(smtp, 1, 14), (CONFIG, 1, 14)])
        states = store.snapshot().states
        assert (states["relay"].kind, states["relay"].delivery) == ("smtp", None)
        assert states["loop"].delivery == DeliveryLedger()


class TestSaved:
    def test_result_json_round_trips_with_earlier_messages_and_hops(self) -> None:
        result = with_earlier(on_time(), arrived("b" * 32, 80.0), gone("c" * 32))
        text = result_to_json(result)
        assert json.loads(text)["kind"] == "delivery"
        assert result_from_json(text) == result

    def test_pending_messages_and_counts_survive_a_restart(self, tmp_path: Path) -> None:
        store = delivery_store()
        store.record("loop", late_run("b" * 32))
        store.record("loop", with_earlier(late_run("c" * 32, T0 + 60), arrived("b" * 32, 70.0)))
        db = StateDB(tmp_path / "state.db")
        db.open()
        assert db.save_states(store.snapshot().states.values())
        db.close()

        again = StateDB(tmp_path / "state.db")
        again.open()
        fresh = delivery_store()
        assert restore_into(fresh, again.load_states()) == 1
        state = fresh.snapshot().states["loop"]
        assert state.delivery == store.snapshot().states["loop"].delivery
        assert fresh.pending() == {"loop": (PendingMessage("c" * 32, T0 + 60),)}
        assert isinstance(state.last_result, DeliveryResult)
        assert state.status is Status.FAILED

    def test_a_late_run_is_on_disk_before_the_next_flush(self, tmp_path: Path) -> None:
        async def scenario() -> dict[str, Any]:
            store = delivery_store(alert_after=5)  # no status change: only the pending message moves
            db = StateDB(tmp_path / "state.db")
            db.open()
            persister = StatePersister(db, store)
            store.subscribe(persister.on_event)
            persister.start()
            store.record("loop", late_run("b" * 32))
            row = db.load_states()["loop"]  # no flush yet: a kill -9 now must not lose the message
            await persister.stop()
            db.close()
            return row

        row = asyncio.run(scenario())
        assert row["status"] == "unknown"
        assert json.loads(row["delivery"])["pending"] == [{"token": "b" * 32, "submitted_at": T0}]

    def test_a_schema_1_file_is_updated_in_place_and_keeps_its_states(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        conn = sqlite3.connect(path)
        conn.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema', '1');
            CREATE TABLE probe_state (name TEXT PRIMARY KEY, config_hash TEXT NOT NULL, status TEXT NOT NULL,
                consecutive_failures INTEGER NOT NULL, runs INTEGER NOT NULL, failures INTEGER NOT NULL,
                failures_by_cause TEXT NOT NULL, last_success REAL, last_change REAL,
                cert_warned_for TEXT NOT NULL, last_result TEXT);
            """
        )
        smtp = SmtpProbeConfig(name="relay", host="127.0.0.1", port=2525, tls="none")
        old_store = ResultsStore()
        old_store.configure([(smtp, 1, 14)])
        from monitor.state.persistence import config_hash

        conn.execute(
            "INSERT INTO probe_state VALUES (?, ?, 'ok', 0, 7, 0, '[]', NULL, NULL, '', NULL)",
            ("relay", config_hash(old_store.snapshot().states["relay"])),
        )
        conn.commit()
        conn.close()

        db = StateDB(path)
        db.open()
        store = ResultsStore()
        store.configure([(smtp, 1, 14), (CONFIG, 1, 14)])
        assert restore_into(store, db.load_states()) == 1
        assert store.snapshot().states["relay"].runs == 7
        store.record("loop", late_run("b" * 32))
        assert db.save_states(store.snapshot().states.values())
        db.close()
        check = sqlite3.connect(path)
        assert check.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert json.loads(check.execute("SELECT delivery FROM probe_state WHERE name='loop'").fetchone()[0])["pending"]
        check.close()


def scheduler_config(**overrides: Any) -> Any:
    return parse_config(
        {
            "defaults": {"interval": "1h", "max_concurrency": 1, "alert_after": 1},
            "dns": {"nameservers": ["127.0.0.1:9"]},
            "smtp": [{"name": "relay", "host": "127.0.0.1", "port": 9, "tls": "none"}],
            "delivery": [delivery_document()],
            **overrides,
        }
    )


class TestScheduler:
    def test_a_waiting_delivery_run_holds_no_slot_of_the_handshake_probes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def scenario() -> tuple[bool, ProbeResult | None]:
            waiting = asyncio.Event()

            async def deliver(config: DeliveryProbeConfig, env: ProbeEnv, pending: Sequence[PendingMessage]) -> Any:
                waiting.set()
                await asyncio.sleep(3600)  # a message that takes its time

            async def handshake(config: SmtpProbeConfig, env: ProbeEnv, pending: object) -> SmtpResult:
                return SmtpResult(host=config.host, port=9, tls_mode="none", started_at=time.time(), ok=True)

            monkeypatch.setitem(RUNNERS, DeliveryProbeConfig, deliver)
            monkeypatch.setitem(RUNNERS, SmtpProbeConfig, handshake)
            config = scheduler_config()  # max_concurrency 1: a held slot would stop the SMTP probe
            scheduler = ProbeScheduler(lambda name, result: None, AgentHealth(), ProbeEnv.from_config(config), 1)
            scheduler.apply(config)
            delivery_run = asyncio.create_task(scheduler.run_once("loop"))
            await waiting.wait()
            try:
                async with asyncio.timeout(2):
                    result = await scheduler.run_once("relay")
                return True, result
            except TimeoutError:
                return False, None
            finally:
                delivery_run.cancel()

        finished, result = asyncio.run(scenario())
        assert finished
        assert result is not None
        assert result.ok

    def test_each_run_gets_the_messages_earlier_runs_left_pending(self, monkeypatch: pytest.MonkeyPatch) -> None:
        handed: list[tuple[str, ...]] = []
        script = iter(
            [
                late_run("b" * 32),
                with_earlier(late_run("c" * 32, T0 + 60), arrived("b" * 32, 70.0)),
                with_earlier(on_time(), gone("c" * 32)),
            ]
        )

        async def deliver(config: DeliveryProbeConfig, env: ProbeEnv, pending: Sequence[PendingMessage]) -> Any:
            handed.append(tuple(p.token for p in pending))
            return next(script)

        monkeypatch.setitem(RUNNERS, DeliveryProbeConfig, deliver)

        async def scenario() -> None:
            config = scheduler_config(smtp=[])
            scheduler = ProbeScheduler(lambda name, result: None, AgentHealth(), ProbeEnv.from_config(config), 1)
            scheduler.apply(config)
            scheduler.seed_pending({"loop": (PendingMessage("0" * 32, T0 - 60),), "removed-probe": ()})
            for _ in range(3):
                await scheduler.run_once("loop")

        asyncio.run(scenario())
        assert handed == [("0" * 32,), ("0" * 32, "b" * 32), ("0" * 32, "c" * 32)]


class TestConfig:
    def test_delivery_probes_are_read_with_the_others_and_names_are_unique_across_kinds(self) -> None:
        config = scheduler_config()
        assert [p.name for p in config.delivery] == ["loop"]
        assert [entry[0].name for entry in probe_entries(config)] == ["relay", "loop"]
        with pytest.raises(ConfigError) as raised:
            scheduler_config(delivery=[delivery_document(name="relay")])
        assert "delivery[0].name: duplicate probe name 'relay' (also smtp[0])" in str(raised.value)

    def test_a_bad_delivery_probe_names_its_key_path(self) -> None:
        with pytest.raises(ConfigError) as raised:
            scheduler_config(delivery=[delivery_document(deliver_within="2h", lost_after="1h")])
        assert str(raised.value) == "<config>: delivery[0]: lost_after must be longer than deliver_within"
