"""`smtp-monitor status`: the table is read from the state database through the typed saved results."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import status
from monitor.cli.report import EXIT_CRITICAL
from monitor.config.schema import AgentConfig, Config, MxCheckConfig, SmtpProbeConfig
from monitor.model.results import MxResult, Phase, Reason, SmtpResult
from monitor.state.persistence import STATE_FILE, StateDB
from monitor.state.store import ResultsStore

RELAY = SmtpProbeConfig(name="relay", host="127.0.0.1", port=2525, tls="none")
DOMAIN = MxCheckConfig(name="dom", domain="good.test")


def config_with_saved_states(tmp_path: Path) -> Config:
    """A refused SMTP probe and a passing MX check, saved by the agent's StateDB in tmp_path."""
    store = ResultsStore()
    store.configure([(RELAY, 1, 14), (DOMAIN, 1, 14)])
    store.record(
        "relay",
        SmtpResult("127.0.0.1", 2525, "none", time.time(), False, Phase.CONNECT, Reason.REFUSED, "connection refused"),
    )
    store.record("dom", MxResult("good.test", time.time(), True))
    db = StateDB(tmp_path / STATE_FILE)
    db.open()
    try:
        db.save_states(store.snapshot().states.values())
    finally:
        db.close()
    return Config(agent=AgentConfig(state_dir=tmp_path), smtp=[RELAY], mx=[DOMAIN])


def printed_table(config: Config, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    code = status.print_status(config, as_json=True)
    return code, {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_failed_probe_shows_its_phase_reason_and_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, table = printed_table(config_with_saved_states(tmp_path), capsys)
    assert code == EXIT_CRITICAL
    relay, dom = table["relay"], table["dom"]
    assert (relay["status"], relay["phase"], relay["reason"], relay["error"]) == (
        "failed",
        "connect",
        "refused",
        "connection refused",
    )
    assert (dom["status"], dom["phase"], dom["reason"], dom["error"]) == ("ok", "", "", "")


@pytest.mark.parametrize("saved", ["{", '{"kind": "smtp", "status": "failed"}', '["not", "an", "object"]'])
def test_unreadable_saved_result_is_shown_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: str
) -> None:
    config = config_with_saved_states(tmp_path)
    with sqlite3.connect(tmp_path / STATE_FILE) as conn:
        conn.execute("UPDATE probe_state SET last_result=? WHERE name='relay'", (saved,))
    code, table = printed_table(config, capsys)
    assert code == EXIT_CRITICAL  # the saved status still counts
    relay = table["relay"]
    assert (relay["status"], relay["phase"], relay["reason"], relay["error"]) == ("failed", "", "", "")
