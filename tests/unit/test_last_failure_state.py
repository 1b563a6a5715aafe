"""The last failed result (with its transcript) is saved in the state database (schema 3) and restored into
ProbeState.last_failure; schema 1 and 2 files are updated in place and keep their states."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from monitor.config.schema import SmtpProbeConfig
from monitor.model.results import Phase, Reason, Reply, SmtpResult
from monitor.model.transcript import TranscriptRecorder
from monitor.state.persistence import SCHEMA_VERSION, StateDB, config_hash, restore_into
from monitor.state.store import ResultsStore

CONFIG = SmtpProbeConfig(name="relay", host="127.0.0.1", port=2525, tls="none")
T0 = 1_800_000_000.0


def store() -> ResultsStore:
    fresh = ResultsStore(announce=False)
    fresh.configure([(CONFIG, 1, 14)])
    return fresh


def refused(at: float = T0) -> SmtpResult:
    recorder = TranscriptRecorder()
    recorder.note("trying 127.0.0.1 port 2525")
    recorder.received("554 5.7.1 <script>go away</script>")
    recorder.note("failed in banner: reply: 554 5.7.1 <script>go away</script>")
    return SmtpResult(
        "127.0.0.1",
        2525,
        "none",
        at,
        False,
        phase=Phase.BANNER,
        reason=Reason.REPLY,
        error="554 5.7.1 <script>go away</script>",
        reply=Reply(554, ("5.7.1 <script>go away</script>",)),
        transcript=recorder.transcript(),
    )


def healthy(at: float = T0 + 60) -> SmtpResult:
    recorder = TranscriptRecorder()
    recorder.received("220 mail.test ESMTP")
    return SmtpResult("127.0.0.1", 2525, "none", at, True, transcript=recorder.transcript())


REFUSED = refused()
HEALTHY = healthy()


def save_and_restore(path: Path, written: ResultsStore) -> ResultsStore:
    db = StateDB(path)
    db.open()
    assert db.save_states(written.snapshot().states.values())
    db.close()
    again = StateDB(path)
    again.open()
    restored = store()
    assert restore_into(restored, again.load_states()) == 1
    again.close()
    return restored


def test_the_last_failure_survives_a_restart_after_a_recovery(tmp_path: Path) -> None:
    written = store()
    written.record("relay", REFUSED)
    written.record("relay", HEALTHY)
    restored = save_and_restore(tmp_path / "state.db", written).snapshot().states["relay"]
    assert restored.last_result == HEALTHY
    assert restored.last_failure == REFUSED
    assert isinstance(restored.last_failure, SmtpResult)
    assert restored.last_failure.transcript is not None
    assert "554 5.7.1 <script>go away</script>" in restored.last_failure.transcript.as_text()


def test_a_failing_probe_saves_its_result_once_and_gets_both_back(tmp_path: Path) -> None:
    written = store()
    written.record("relay", REFUSED)
    path = tmp_path / "state.db"
    restored = save_and_restore(path, written).snapshot().states["relay"]
    assert restored.last_failure == REFUSED
    assert restored.last_failure is restored.last_result
    row = sqlite3.connect(path).execute("SELECT last_failure FROM probe_state").fetchone()
    assert row == ("=",)


def test_a_probe_that_never_failed_has_none(tmp_path: Path) -> None:
    written = store()
    written.record("relay", HEALTHY)
    assert save_and_restore(tmp_path / "state.db", written).snapshot().states["relay"].last_failure is None


def test_an_unreadable_saved_failure_is_dropped_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    written = store()
    written.record("relay", REFUSED)
    written.record("relay", HEALTHY)
    db = StateDB(path)
    db.open()
    assert db.save_states(written.snapshot().states.values())
    db.close()
    with sqlite3.connect(path) as conn:
        conn.execute('UPDATE probe_state SET last_failure=\'{"kind": "smtp", "lines": 3\'')
    again = StateDB(path)
    again.open()
    restored = store()
    assert restore_into(restored, again.load_states()) == 1
    state = restored.snapshot().states["relay"]
    assert (state.runs, state.last_failure, state.last_result) == (2, None, HEALTHY)


_SCHEMA_1_TABLE = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE probe_state (name TEXT PRIMARY KEY, config_hash TEXT NOT NULL, status TEXT NOT NULL,
        consecutive_failures INTEGER NOT NULL, runs INTEGER NOT NULL, failures INTEGER NOT NULL,
        failures_by_cause TEXT NOT NULL, last_success REAL, last_change REAL,
        cert_warned_for TEXT NOT NULL, last_result TEXT{delivery});
    INSERT INTO meta VALUES ('schema', '{schema}');
"""


@pytest.mark.parametrize("schema", ["1", "2"])
def test_an_earlier_schema_is_updated_in_place_and_keeps_its_states(tmp_path: Path, schema: str) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_1_TABLE.format(schema=schema, delivery=", delivery TEXT" if schema == "2" else ""))
    values = "?, ?, 'failed', 3, 7, 3, '[[\"banner\", \"reply\", 3]]', NULL, 1.0, '', NULL"
    if schema == "2":
        values += ", NULL"
    insert = f"INSERT INTO probe_state VALUES ({values})"  # noqa: S608 -- fixed text
    conn.execute(insert, ("relay", config_hash(store().snapshot().states["relay"])))
    conn.commit()
    conn.close()

    db = StateDB(path)
    db.open()
    restored = store()
    assert restore_into(restored, db.load_states()) == 1
    state = restored.snapshot().states["relay"]
    assert (state.runs, state.failures, state.consecutive_failures, state.last_failure) == (7, 3, 3, None)
    restored.record("relay", REFUSED)
    assert db.save_states(restored.snapshot().states.values())
    db.close()

    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
    columns = [row[1] for row in check.execute("PRAGMA table_info(probe_state)")]
    assert columns[-2:] == ["delivery", "last_failure"]
    check.close()
    assert SCHEMA_VERSION == 3
    again = StateDB(path)
    again.open()
    reread = store()
    assert restore_into(reread, again.load_states()) == 1
    assert reread.snapshot().states["relay"].last_failure == REFUSED
    again.close()


def test_a_kept_failure_is_turned_into_json_once_over_many_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.model import probe_result
    from monitor.state import persistence

    made: list[object] = []
    real = probe_result.result_to_json  # the function persistence imported under that name

    def counting(result: probe_result.ProbeResult) -> str:
        made.append(result)
        return real(result)

    monkeypatch.setattr(persistence, "result_to_json", counting)
    written = store()
    written.record("relay", REFUSED)
    db = StateDB(tmp_path / "state.db")
    db.open()
    for i in range(5):
        written.record("relay", healthy(T0 + 60 * (i + 1)))
        assert db.save_states(written.snapshot().states.values())
    db.close()
    assert sum(1 for result in made if result is written.snapshot().states["relay"].last_failure) == 1
    assert len(made) == 6  # five last results, the failure once


def test_status_prints_the_saved_dialogues_of_one_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli.status import print_transcripts
    from monitor.config.schema import AgentConfig, Config

    written = store()
    written.record("relay", REFUSED)
    written.record("relay", HEALTHY)
    db = StateDB(tmp_path / "state.db")
    db.open()
    assert db.save_states(written.snapshot().states.values())
    db.close()
    config = Config(agent=AgentConfig(state_dir=tmp_path), smtp=[CONFIG])

    assert print_transcripts(config, "relay") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "=== last failed run: 2027-01-15 08:00:00 UTC, failed in banner"
    assert out[2].endswith("S 554 5.7.1 <script>go away</script>")
    assert out[3].endswith("-- failed in banner: reply: 554 5.7.1 <script>go away</script>")
    assert out[4] == "=== last run: 2027-01-15 08:01:00 UTC, ok"
    assert out[5].endswith("S 220 mail.test ESMTP")

    assert print_transcripts(config, "nonesuch") == 3
    assert "no saved state of a probe named 'nonesuch'" in capsys.readouterr().err
