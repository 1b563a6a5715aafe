"""The agent keeps history: results of a real (refused) probe reach the state database through the writer
thread, what is queued is written at stop, and a restarted agent serves it; `history.enabled: false` keeps none."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from monitor.config.schema import Config
from monitor.runtime.agent import Agent


def config(state_dir: Path, port: int, enabled: bool = True) -> Config:
    return Config.model_validate(
        {
            "agent": {"state_dir": str(state_dir), "probe_process": False},
            "prometheus": {"listen": None},
            "status_page": {"enabled": False},
            "snmp": {"enabled": False},
            "history": {"enabled": enabled, "flush_interval": "60s"},  # only stop() writes, within the test
            "smtp": [
                {
                    "name": "relay",
                    "host": "127.0.0.1",
                    "port": port,
                    "tls": "none",
                    "interval": "0.2s",
                    "timeout": "1s",
                    "alert_after": 1,
                }
            ],
        }
    )


async def run_until(agent: Agent, runs: int) -> None:
    await agent.start()
    try:
        for _ in range(200):
            state = agent.store.snapshot().states["relay"]
            if state.runs >= runs:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the probe never ran")
    finally:
        await agent.stop()


def test_history_written_at_stop_and_served_after_a_restart(tmp_path: Path, refused_port: int) -> None:
    first = Agent(tmp_path / "agent.yaml", config(tmp_path / "state", refused_port))
    asyncio.run(run_until(first, 3))
    assert first.history is not None
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        written = conn.execute("SELECT count(*) FROM history_result").fetchone()[0]
    assert written >= 3

    second = Agent(tmp_path / "agent.yaml", config(tmp_path / "state", refused_port))

    async def restarted() -> None:
        await second.start()
        try:
            history = second.history
            assert history is not None
            recent = history.recent("relay", limit=1000)
            assert len(recent) >= written
            assert {(e.ok, e.phase, e.reason) for e in recent} == {(False, "connect", "refused")}
            assert [(c.old, c.new, c.phase, c.reason) for c in history.changes("relay")] == [
                ("unknown", "failed", "connect", "refused")
            ]
            assert history.availability("relay").day == 0.0  # rebuilt from the rollups at start
        finally:
            await second.stop()

    asyncio.run(restarted())


def test_history_off_keeps_no_tables(tmp_path: Path, refused_port: int) -> None:
    agent = Agent(tmp_path / "agent.yaml", config(tmp_path / "state", refused_port, enabled=False))
    asyncio.run(run_until(agent, 2))
    assert agent.history is None
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {t for t in tables if t.startswith("history")}
