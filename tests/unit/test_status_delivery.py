"""`smtp-monitor status` with delivery probes: their status, failed phase and reason, and what the state
database keeps of them (last latency, pending, late and lost, folder, verdicts, queue ID), read through the
typed saved results and ledgers, next to the SMTP and MX probes."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import status
from monitor.cli.report import EXIT_CRITICAL, EXIT_OK
from monitor.config.schema import AgentConfig, Config, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import AuthVerdict, EarlierMessage
from monitor.model.results import MxResult, Phase, Reason, SmtpResult
from monitor.state.persistence import STATE_FILE, StateDB
from monitor.state.store import ResultsStore
from tests.unit.test_delivery_metrics import HOPS, LOOP, PASSWORD, QUEUE_ID, T0, delivery_config, late_run, on_time

RELAY = SmtpProbeConfig(name="relay", host="127.0.0.1", port=2525, tls="none")
DOMAIN = MxCheckConfig(name="dom", domain="good.test")
STUCK = delivery_config(
    "stuck",
    submit={"via": "mx"},
    mailbox={"protocol": "pop3", "host": "pop.example.net", "username": "probe", "password": PASSWORD},
)


def save(tmp_path: Path, store: ResultsStore) -> None:
    db = StateDB(tmp_path / STATE_FILE)
    db.open()
    try:
        db.save_states(store.snapshot().states.values())
    finally:
        db.close()


def config_for(tmp_path: Path, *delivery: Any) -> Config:
    return Config(agent=AgentConfig(state_dir=tmp_path), smtp=[RELAY], mx=[DOMAIN], delivery=list(delivery))


def saved_with_delivery(tmp_path: Path) -> Config:
    """relay refused, dom ok; loop ok after one late and one lost message; stuck failing deliver/late."""
    store = ResultsStore(announce=False)
    store.configure([(RELAY, 1, 14), (DOMAIN, 1, 14), (LOOP, 1, 14), (STUCK, 1, 14)])
    store.record(
        "relay",
        SmtpResult("127.0.0.1", 2525, "none", time.time(), False, Phase.CONNECT, Reason.REFUSED, "connection refused"),
    )
    store.record("dom", MxResult("good.test", time.time(), True))
    store.record("loop", late_run("b" * 32))
    store.record("loop", late_run("c" * 32))
    late = EarlierMessage("b" * 32, T0, "late", arrived_at=T0 + 75.0, latency=75.0, hops=HOPS)
    store.record("loop", on_time(0.7, earlier=(late, EarlierMessage("c" * 32, T0, "lost"))))
    store.record("stuck", late_run("d" * 32))
    save(tmp_path, store)
    return config_for(tmp_path, LOOP, STUCK)


def text_of(config: Config, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = status.print_status(config)
    return code, capsys.readouterr().out.splitlines()


def json_of(config: Config, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    code = status.print_status(config, as_json=True)
    return code, {row["name"]: row for row in json.loads(capsys.readouterr().out)}


class TestTable:
    def test_delivery_probes_are_listed_with_the_others_and_their_facts_below(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, lines = text_of(saved_with_delivery(tmp_path), capsys)
        assert code == EXIT_CRITICAL
        assert [line.split()[:2] for line in lines[1:5]] == [
            ["relay", "smtp"],
            ["dom", "mx"],
            ["loop", "delivery"],
            ["stuck", "delivery"],
        ]
        assert "  msa.example:587 -> imap imap.example.net:993  ok  " in lines[3]
        assert "  mx:example.net -> pop3 pop.example.net:995    failed  " in lines[4]
        assert lines[4].endswith("  deliver/late: not in the mailbox within 60s of submission")
        assert lines[5:] == [
            "",
            "DELIVERY  LAST LATENCY  PENDING  LATE  LOST  FOLDER  QUEUE ID     AUTH",
            "loop      75.000s       0        1     1     inbox   4XyZq1Abc0z  spf=pass dkim=pass dmarc=fail",
            "stuck     -             1        0     0     -       4XyZq1Abc0z  -",
        ]

    def test_without_delivery_probes_there_is_no_delivery_table(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        saved_with_delivery(tmp_path)
        code, lines = text_of(config_for(tmp_path), capsys)
        assert code == EXIT_CRITICAL  # relay
        assert len(lines) == 3
        assert not any("DELIVERY" in line for line in lines)

    def test_a_delivery_probe_that_never_ran_is_unknown_with_nothing_counted(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        saved_with_delivery(tmp_path)
        fresh = delivery_config("fresh")
        code, lines = text_of(config_for(tmp_path, fresh), capsys)
        assert code == EXIT_CRITICAL
        assert lines[3].split()[:3] == ["fresh", "delivery", "msa.example:587"]
        assert "  unknown  0      never" in lines[3]
        assert lines[-1] == "fresh     -             0        0     0     -       -         -"

    def test_only_ok_probes_exit_ok(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        store = ResultsStore(announce=False)
        store.configure([(LOOP, 1, 14)])
        store.record("loop", on_time(1.5))
        save(tmp_path, store)
        code, lines = text_of(Config(agent=AgentConfig(state_dir=tmp_path), delivery=[LOOP]), capsys)
        assert code == EXIT_OK
        assert (
            lines[-1]
            == "loop      1.500s        0        0     0     inbox   4XyZq1Abc0z  spf=pass dkim=pass dmarc=fail"
        )

    def test_server_written_text_cannot_reach_the_terminal_as_control_characters(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        store = ResultsStore(announce=False)
        store.configure([(LOOP, 1, 14)])
        verdict = AuthVerdict("dkim", "\x1b[2Jpass" + "x" * 500, "mx.example.net")
        store.record("loop", on_time(1.5, verdicts=(verdict,), queue_id="Q\x07"))
        save(tmp_path, store)
        _, lines = text_of(Config(agent=AgentConfig(state_dir=tmp_path), delivery=[LOOP]), capsys)
        assert "\x1b" not in "".join(lines)
        assert "\x07" not in "".join(lines)
        assert lines[-1].endswith("  Q?        dkim=?[2Jpass" + "x" * (status.MAX_SERVER_TEXT - 8))

    def test_passwords_never_appear(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        config = saved_with_delivery(tmp_path)
        status.print_status(config)
        status.print_status(config, as_json=True)
        assert PASSWORD not in capsys.readouterr().out


class TestJson:
    def test_delivery_facts_in_json_and_none_for_other_kinds(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, table = json_of(saved_with_delivery(tmp_path), capsys)
        assert code == EXIT_CRITICAL
        assert table["relay"]["delivery"] is None
        assert table["dom"]["delivery"] is None
        loop, stuck = table["loop"], table["stuck"]
        assert (loop["kind"], loop["status"], loop["runs"], loop["failures"]) == ("delivery", "ok", 3, 0)
        assert loop["delivery"] == {
            "last_latency": 75.0,
            "pending": 0,
            "late": 1,
            "lost": 1,
            "folder": "inbox",
            "verdicts": {"spf": "pass", "dkim": "pass", "dmarc": "fail"},
            "queue_id": QUEUE_ID,
        }
        assert (stuck["status"], stuck["phase"], stuck["reason"]) == ("failed", "deliver", "late")
        assert stuck["delivery"] == {
            "last_latency": None,
            "pending": 1,
            "late": 0,
            "lost": 0,
            "folder": "",
            "verdicts": {},
            "queue_id": QUEUE_ID,
        }


class TestSavedState:
    def test_an_unusable_saved_ledger_shows_nothing_counted(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = saved_with_delivery(tmp_path)
        with sqlite3.connect(tmp_path / STATE_FILE) as conn:
            conn.execute("UPDATE probe_state SET delivery=? WHERE name='loop'", ('{"late": "many"}',))
        code, table = json_of(config, capsys)
        assert code == EXIT_CRITICAL
        assert table["loop"]["status"] == "ok"
        assert (table["loop"]["delivery"]["late"], table["loop"]["delivery"]["last_latency"]) == (0, None)

    def test_a_schema_1_database_without_the_delivery_column_is_read(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = saved_with_delivery(tmp_path)
        with sqlite3.connect(tmp_path / STATE_FILE) as conn:
            conn.execute("ALTER TABLE probe_state DROP COLUMN delivery")
            conn.execute("UPDATE meta SET value='1' WHERE key='schema'")
        code, table = json_of(config, capsys)
        assert code == EXIT_CRITICAL
        assert table["relay"]["status"] == "failed"
        assert table["stuck"]["reason"] == "late"
        assert table["stuck"]["delivery"]["pending"] == 0  # not saved by that agent
