"""The state database: saved probe states come back after a restart; bad files never stop the agent."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.exporters.prometheus.metrics import mx_samples
from monitor.model.facts import DaneFacts, MtaStsFacts, MtaStsPolicyFacts, PolicyRecord
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, Reply, SmtpResult, Status, TlsInfo
from monitor.state.health import AgentHealth
from monitor.state.persistence import StateDB, StatePersister, restore_into
from monitor.state.store import ProbeConfig, ResultsStore

SMTP = SmtpProbeConfig(name="relay", host="127.0.0.1", port=2525, tls="starttls")
MX = MxCheckConfig(name="dom", domain="good.test")


def failed_smtp() -> SmtpResult:
    return SmtpResult(
        host="127.0.0.1",
        port=2525,
        tls_mode="starttls",
        started_at=time.time(),
        ok=False,
        phase=Phase.BANNER,
        reason=Reason.REPLY,
        error="421 4.3.2 busy",
        reply=Reply(421, ("4.3.2 busy",)),
        timings={"connect": 0.001},
        total=0.002,
    )


def ok_smtp() -> SmtpResult:
    now = datetime.now(UTC)
    cert = CertInfo(
        "CN=mail.test", "CN=ca", ("DNS:mail.test",), now - timedelta(days=1), now + timedelta(days=90), "1f", "ab" * 32
    )
    return SmtpResult(
        host="127.0.0.1",
        port=2525,
        tls_mode="starttls",
        started_at=time.time(),
        ok=True,
        timings={"connect": 0.001, "tls": 0.01},
        total=0.02,
        banner="220 mail.test ESMTP",
        extensions={"SIZE": "1000"},
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", True, cert=cert),
    )


def store_with(*configs: ProbeConfig) -> ResultsStore:
    store = ResultsStore()
    store.configure([(c, 2, 14) for c in configs])
    return store


def saved_and_reopened(tmp_path: Path, store: ResultsStore) -> StateDB:
    db = StateDB(tmp_path / "state.db")
    db.open()
    assert db.save_states(store.snapshot().states.values())
    db.close()
    again = StateDB(tmp_path / "state.db")
    again.open()
    return again


class TestStateDatabase:
    def test_failed_status_and_counters_survive_a_restart(self, tmp_path: Path) -> None:
        store = store_with(SMTP)
        for _ in range(3):
            store.record("relay", failed_smtp())
        db = saved_and_reopened(tmp_path, store)
        fresh = store_with(SMTP)
        assert restore_into(fresh, db.load_states()) == 1
        state = fresh.snapshot().states["relay"]
        assert state.status is Status.FAILED
        assert (state.runs, state.failures, state.consecutive_failures) == (3, 3, 3)
        assert state.failures_by_cause == {("banner", "reply"): 3}
        assert state.last_result is not None
        assert isinstance(state.last_result, SmtpResult)
        assert state.last_result.reply_code == 421

    def test_no_new_failed_event_after_restart_of_an_already_failed_probe(self, tmp_path: Path) -> None:
        store = store_with(SMTP)
        store.record("relay", failed_smtp())
        store.record("relay", failed_smtp())
        db = saved_and_reopened(tmp_path, store)
        fresh = store_with(SMTP)
        restore_into(fresh, db.load_states())
        assert fresh.record("relay", failed_smtp()) == []
        assert [e.kind for e in fresh.record("relay", ok_smtp())] == ["recovered"]

    def test_tls_facts_and_mx_records_round_trip(self, tmp_path: Path) -> None:
        store = store_with(SMTP, MX)
        store.record("relay", ok_smtp())
        mx = MxResult(
            domain="good.test",
            started_at=time.time(),
            ok=True,
            records=(MxRecord(10, "mx1.good.test", ("127.0.0.1",), probe=ok_smtp()),),
            total=0.01,
        )
        store.record("dom", mx)
        db = saved_and_reopened(tmp_path, store)
        fresh = store_with(SMTP, MX)
        restore_into(fresh, db.load_states())
        states = fresh.snapshot().states
        assert states["relay"].last_result == store.snapshot().states["relay"].last_result
        assert states["dom"].last_result == mx

    def test_dane_mta_sts_spf_and_dmarc_facts_round_trip(self, tmp_path: Path) -> None:
        store = store_with(MX)
        dane = DaneFacts(
            "_25._tcp.mx1.good.test",
            ("3 1 1 " + "ab" * 32,),
            authenticated=True,
            usable=1,
            matched=True,
            matched_record="3 1 1 " + "ab" * 32,
            detail="matches the leaf (DANE-EE)",
            reference_names=("mx1.good.test",),
        )
        policy = MtaStsPolicyFacts(
            "testing",
            86400,
            ("mx1.good.test",),
            True,
            "",
            "",
            200,
            ("mx2.good.test",),
            datetime(2031, 1, 1, tzinfo=UTC),
        )
        mx = MxResult(
            domain="good.test",
            started_at=time.time(),
            ok=True,
            total=0.01,
            records=(
                MxRecord(10, "mx1.good.test", ("127.0.0.1",), probe=ok_smtp(), dane=dane),
                MxRecord(20, "mx2.good.test", ("127.0.0.2",)),
            ),
            mta_sts=MtaStsFacts("20261122", "", "", present=True, policy=policy, valid=True),
            spf=PolicyRecord("spf", "v=spf1 mx -all", ""),
            dmarc=PolicyRecord("dmarc", "", "no DMARC record"),
        )
        store.record("dom", mx)
        db = saved_and_reopened(tmp_path, store)
        fresh = store_with(MX)
        assert restore_into(fresh, db.load_states()) == 1
        assert fresh.snapshot().states["dom"].last_result == mx

    def test_saved_facts_that_are_no_object_start_the_check_afresh(self, tmp_path: Path) -> None:
        store = store_with(MX)
        dane = DaneFacts("_25._tcp.mx1.good.test")
        store.record(
            "dom",
            MxResult(
                domain="good.test",
                started_at=time.time(),
                ok=True,
                records=(MxRecord(10, "mx1.good.test", ("127.0.0.1",), dane=dane),),
            ),
        )
        db = saved_and_reopened(tmp_path, store)
        rows = db.load_states()
        saved = json.loads(rows["dom"]["last_result"])
        saved["mx"][0]["dane"] = "matched"  # a hand-edited or foreign database
        rows["dom"]["last_result"] = json.dumps(saved)
        fresh = store_with(MX)
        assert restore_into(fresh, rows) == 0
        state = fresh.snapshot().states["dom"]
        assert (state.status, state.last_result) == (Status.UNKNOWN, None)
        assert mx_samples(state)  # the exporters read it like any check that has not run

    def test_changed_probe_config_starts_afresh(self, tmp_path: Path) -> None:
        store = store_with(SMTP)
        store.record("relay", failed_smtp())
        db = saved_and_reopened(tmp_path, store)
        fresh = store_with(SMTP.model_copy(update={"port": 2526}))
        assert restore_into(fresh, db.load_states()) == 0
        assert fresh.snapshot().states["relay"].status is Status.UNKNOWN

    def test_removed_probes_are_deleted(self, tmp_path: Path) -> None:
        store = store_with(SMTP)
        db = StateDB(tmp_path / "state.db")
        db.open()
        db.save_states(store.snapshot().states.values())
        db.save_states([], removed=["relay"])
        assert db.load_states() == {}

    def test_corrupt_file_is_moved_aside_and_replaced(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        path.write_bytes(b"this is not an SQLite database" * 100)
        db = StateDB(path)
        db.open()
        assert db.load_states() == {}
        assert any(p.name.startswith("state.db.corrupt-") for p in tmp_path.iterdir())

    def test_write_failure_is_counted_not_raised(self, tmp_path: Path) -> None:
        health = AgentHealth()
        db = StateDB(tmp_path / "state.db", health)
        db.open()
        db.close()
        db._conn = sqlite3.connect(":memory:")  # a database without our tables: every write fails
        assert not db.save_states(store_with(SMTP).snapshot().states.values())
        assert health.state_write_errors == 1

    def test_outbox_entries_persist_until_removed(self, tmp_path: Path) -> None:
        db = StateDB(tmp_path / "state.db")
        db.open()
        ids = db.add_outbox([("udp:127.0.0.1:162", {"kind": "failed", "name": "relay"})])
        db.close()
        again = StateDB(tmp_path / "state.db")
        again.open()
        pending = again.pending_outbox()
        assert [(e.id, e.event["name"]) for e in pending] == [(ids[0], "relay")]
        again.remove_outbox(ids[0])
        assert again.pending_outbox() == []


class TestStatePersister:
    def test_status_change_is_saved_at_once_and_counters_on_flush(self, tmp_path: Path) -> None:
        async def scenario() -> tuple[dict[str, object], dict[str, object]]:
            store = store_with(SMTP)
            db = StateDB(tmp_path / "state.db")
            db.open()
            persister = StatePersister(db, store)
            store.subscribe(persister.on_event)
            persister.start()
            store.record("relay", failed_smtp())
            store.record("relay", failed_smtp())  # -> failed: saved synchronously
            at_change = dict(db.load_states()["relay"])
            store.record("relay", failed_smtp())
            await persister.stop()  # flushes the third run
            return at_change, dict(db.load_states()["relay"])

        at_change, after = asyncio.run(scenario())
        assert (at_change["status"], at_change["runs"]) == ("failed", 2)
        assert after["runs"] == 3
