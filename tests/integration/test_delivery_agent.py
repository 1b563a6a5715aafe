"""Delivery probes in the running agent against the real chain (MSA Postfix -> MX Postfix -> Dovecot): late
and lost across runs, and a pending message that survives a kill -9 of the agent."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.agent import AgentProcess
from tests.peers.mail_chain import MailChain

NAME = "chain-loop"


@pytest.fixture
def chain(mail_chain: MailChain) -> Iterator[MailChain]:
    yield mail_chain
    mail_chain.ensure_running()


def delivery_probe(chain: MailChain, **overrides: Any) -> dict[str, Any]:
    return chain.delivery_probe(NAME, **overrides)


def agent_config(chain: MailChain, probe: dict[str, Any]) -> dict[str, object]:
    return {
        "defaults": {"alert_after": 1},
        "dns": {"nameservers": [f"{chain.host}:{chain.dns_port}"]},
        "delivery": [probe],
    }


def ledger(agent: AgentProcess) -> dict[str, Any]:
    """The probe's ledger as saved in the state database (what survives a kill -9), {} before any."""
    path = agent.workdir / "state" / "state.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(path, timeout=5)
    try:
        row = conn.execute("SELECT delivery FROM probe_state WHERE name=?", (NAME,)).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()
    return json.loads(row[0]) if row and row[0] else {}


def probe_messages(chain: MailChain) -> list[str]:
    return [m.message_id for m in chain.inbox() + chain.junk() if m.message_id.startswith("<smtp-monitor.")]


def message_id(chain: MailChain, token: str) -> str:
    """The probe's Message-ID (monitor.probes.delivery.build_message): its token at the sender's domain."""
    return f"<smtp-monitor.{token}@{chain.submitter.address.rpartition('@')[2]}>"


class TestAcrossRuns:
    def test_a_pending_message_survives_kill_9_and_the_restarted_agent_counts_it_late(
        self, chain: MailChain, tmp_path: Path
    ) -> None:
        probe = delivery_probe(chain, interval="6s", deliver_within="2s", lost_after="10m")
        agent = AgentProcess(tmp_path, agent_config(chain, probe))
        chain.stop_mx()
        try:
            agent.start()
            agent.wait_until(lambda: bool(ledger(agent).get("pending")), 30, "no pending message saved")
            agent.stop()  # SIGKILL: nothing flushed on the way out
            pending = [p["token"] for p in ledger(agent)["pending"]]
        finally:
            chain.start_mx()
        assert pending
        assert "delivery chain-loop status: unknown -> failed phase=deliver reason=late" in agent.logs()
        chain.msa.flush()
        for token in pending:
            chain.wait_for_message(message_id(chain, token), timeout=30)

        again = AgentProcess(tmp_path, agent_config(chain, probe))
        try:
            again.start()
            again.wait_until(lambda: ledger(again).get("late", 0) >= len(pending), 30, "pending message not found")
            saved = ledger(again)
            again.wait_until(
                lambda: "delivery chain-loop status: failed -> ok" in again.logs(), 30, "probe never recovered"
            )
        finally:
            again.stop()
        assert saved["lost"] == 0
        assert saved["latency_count"] >= len(pending)
        assert saved["last_latency"] is not None
        assert saved["last_latency"] > 2  # after the deadline: the MSA held it while the MX was down
        assert {p["token"] for p in saved["pending"]}.isdisjoint(pending)
        log = again.logs()
        for token in pending:
            assert f"message {token} arrived late" in log
        assert chain.mailbox.password not in log + agent.logs()
        assert chain.submitter.password not in log + agent.logs()
        assert probe_messages(chain) == []  # every probe message read and removed

    def test_a_message_that_does_not_come_within_lost_after_is_lost_and_later_swept(
        self, chain: MailChain, tmp_path: Path
    ) -> None:
        probe = delivery_probe(chain, interval="4s", deliver_within="1s", lost_after="3s")
        agent = AgentProcess(tmp_path, agent_config(chain, probe))
        try:
            chain.stop_mx()
            try:
                agent.start()
                agent.wait_until(lambda: ledger(agent).get("lost", 0) >= 1, 40, "no message counted lost")
            finally:
                chain.start_mx()
            assert "is lost (not arrived after lost_after)" in agent.logs()
            chain.msa.flush()
            # The lost messages arrive after all; the probe's sweep removes them (older than lost_after), and
            # the probe recovers.
            agent.wait_until(lambda: "status: failed -> ok" in agent.logs(), 40, "probe never recovered")
            agent.wait_until(lambda: probe_messages(chain) == [], 30, "lost messages left in the mailbox")
        finally:
            agent.stop()
