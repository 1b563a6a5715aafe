"""Delivery probes over SNMP against net-snmp: snmptable reads deliveryTable and deliveryHopTable from a live
agent by their MIB names, and deliveryProbeFailed, deliveryLate and deliveryLost reach snmptrapd."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from monitor.config.schema import SnmpConfig
from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.exporters.snmp.mib_oids import DeliveryColumn
from monitor.exporters.snmp.mibview import date_and_time
from monitor.exporters.snmp.notify import Notifier
from monitor.model.delivery import EarlierMessage, Hop
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.integration.test_snmp_notify import SEE, _lines_matching, _receiver, _run, _trap_oid_pattern, _varbinds
from tests.peers.net_snmp import tool_env
from tests.peers.snmp_agent_thread import AgentThread
from tests.peers.snmptrapd import TrapReceiver
from tests.support.ports import free_udp_port
from tests.unit.test_snmp_delivery import (
    HELD_HOPS,
    PASSWORD,
    SUBMIT_PASSWORD,
    T0,
    delivery_config,
    found_late,
    late_run,
    on_time,
    submit_refused,
)

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
COMMUNITY = "deliv-read-3e9b"
PATIENT = ("-t", "3", "-r", "2")
EVIL_HOST = "evil\x1b[2J\r\nhost" + "x" * 400  # a hostile by clause: a terminal escape, a line break, 400 more


@dataclass
class Live:
    port: int
    env: dict[str, str]
    base_mibs: Path

    def snmptable(self, table: str) -> list[dict[str, str]]:
        """The rows of `table` by column name (with the index as "index"), as net-snmp shows them."""
        out = subprocess.run(
            [
                "snmptable", "-M", f"+{MIB_DIR}:{self.base_mibs}", "-m", "SMTP-MONITOR-MIB",
                "-v2c", "-c", COMMUNITY, *PATIENT, "-Ci", "-Cf", "|", f"udp:127.0.0.1:{self.port}", table,
            ],
            capture_output=True, text=True, env=self.env, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", out.stderr
        lines = [line for line in out.stdout.splitlines() if "|" in line]
        header = ["index", *lines[0].split("|")[1:]]
        return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:]]


def served_store() -> ResultsStore:
    store = ResultsStore(announce=False)
    names = ("loop", "junk", "held", "refused", "never", "hostile")
    store.configure([(delivery_config(name), 1, 14) for name in names])
    store.record("loop", on_time(latency=1.5))
    store.record("junk", on_time(latency=0.25, folder="junk", folder_name="Junk"))
    store.record("held", late_run("b" * 32, T0))
    store.record("held", late_run("c" * 32, T0 + 60, earlier=(found_late("b" * 32, T0, 95.5),)))
    store.record("refused", submit_refused())
    store.record("hostile", on_time(hops=(Hop("client.example", EVIL_HOST, "ESMTP", "", None, None),)))
    return store


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, base_mibs: Path) -> Iterator[Live]:
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": COMMUNITY}]})
    agent = SnmpAgent(config, tmp_path_factory.mktemp("snmp-state"), served_store(), AgentHealth())
    with AgentThread(agent):
        yield Live(port, tool_env(tmp_path_factory.mktemp("net-snmp")), base_mibs)


class TestSnmptable:
    def test_delivery_table_by_mib_names(self, live: Live) -> None:
        rows = {row["deliveryName"]: row for row in live.snmptable("deliveryTable")}
        assert set(rows) == {"held", "junk", "loop", "never", "hostile", "refused"}
        loop = rows["loop"]
        assert loop["index"] == '"loop"'
        assert loop["deliveryStatus"] == "ok"
        assert loop["deliveryFailedPhase"] == "none"
        assert loop["deliveryLatency"] == "1500 milliseconds"
        assert loop["deliveryLatencyKnown"] == "true"
        assert loop["deliveryQueueId"] == "4XyZq1Abc0z"
        assert (loop["deliverySpf"], loop["deliveryDkim"], loop["deliveryDmarc"]) == ("pass", "pass", "fail")
        assert (loop["deliveryFolder"], loop["deliveryFolderName"]) == ("inbox", "INBOX")
        assert (loop["deliveryHops"], loop["deliveryHopsSource"]) == ("3", "thisRun")
        assert rows["junk"]["deliveryFolder"] == "junk"
        held = rows["held"]
        assert (held["deliveryStatus"], held["deliveryFailedPhase"], held["deliveryFailedReason"]) == (
            "failed",
            "deliver",
            "late",
        )
        assert (held["deliveryPending"], held["deliveryLateCount"], held["deliveryLostCount"]) == ("1", "1", "0")
        assert held["deliveryLatency"] == "95500 milliseconds"
        assert held["deliveryHopsSource"] == "lateMessage"
        refused = rows["refused"]
        assert (refused["deliveryFailedPhase"], refused["deliveryFailedReason"]) == ("submit", "authFailed")
        assert refused["deliveryReplyCode"] == "535"
        never = rows["never"]
        assert never["deliveryStatus"] == "unknown"
        assert (never["deliveryLatency"], never["deliveryLatencyKnown"]) == ("0 milliseconds", "false")
        assert never["deliveryLastSuccess"] == "0-1-1,0:0:0.0"  # the MIB's never
        assert never["deliveryFolder"] == "unknown"
        assert never["deliveryHopsSource"] == "none"
        # accessible-for-notify: net-snmp lists the column, the agent serves no value in it
        assert (loop["deliveryEventLatency"], loop["deliveryEventSubmitted"]) == ("?", "?")

    def test_hop_table_by_mib_names(self, live: Live) -> None:
        rows = live.snmptable("deliveryHopTable")
        hops = {row["index"]: row for row in rows}
        assert [row["index"] for row in rows if row["index"].startswith('"loop"')] == [
            '"loop".1',
            '"loop".2',
            '"loop".3',
        ]
        first = hops['"loop".1']
        assert (first["deliveryHopBy"], first["deliveryHopFrom"], first["deliveryHopProtocol"]) == (
            "msa.example",
            "client.example",
            "ESMTPSA",
        )
        assert hops['"loop".2']["deliveryHopDelay"] == "2250 milliseconds"
        assert hops['"loop".2']["deliveryHopDelayKnown"] == "true"
        assert hops['"loop".3']["deliveryHopProtocol"] == "LMTP"
        # The late message found by held's latest run: where it waited.
        assert [hops[f'"held".{n}']["deliveryHopQueueId"] for n in (1, 2)] == [h.queue_id for h in HELD_HOPS]
        assert hops['"held".2']["deliveryHopDelay"] == "21000 milliseconds"
        assert not any(index.startswith(('"refused"', '"never"')) for index in hops)
        evil = hops['"hostile".1']
        assert evil["deliveryHopBy"].startswith("evil [2J  host")
        assert len(evil["deliveryHopBy"].encode()) <= 255
        assert (evil["deliveryHopDelay"], evil["deliveryHopDelayKnown"]) == ("0 milliseconds", "false")

    def test_walk_shows_no_password(self, live: Live) -> None:
        out = subprocess.run(
            ["snmpwalk", "-v2c", "-c", COMMUNITY, *PATIENT, "-On", f"udp:127.0.0.1:{live.port}", ".1.3.6.1.4.1"],
            capture_output=True, text=True, env=live.env, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "." + ".".join(map(str, mib.DELIVERY_HOP_ENTRY)) in out.stdout
        assert PASSWORD not in out.stdout
        assert SUBMIT_PASSWORD not in out.stdout


# -- notifications -------------------------------------------------------------------------------


def _at(column: DeliveryColumn, name: str) -> str:
    return "." + ".".join(map(str, mib.delivery_oid(column, name)))


def _hex(octets: bytes) -> str:
    return "Hex-STRING: " + " ".join(f"{b:02X}" for b in octets) + " "


@pytest.fixture
def trapd(tmp_path: Path) -> Iterator[TrapReceiver]:
    receiver = TrapReceiver(tmp_path / "snmptrapd", community="public")
    try:
        receiver.start()
        yield receiver
    finally:
        receiver.close()


class TestNotifications:
    def test_failed_late_lost_and_recovered_reach_snmptrapd_and_pending_changed_sends_nothing(
        self, trapd: TrapReceiver
    ) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = ResultsStore()
            store.configure([(delivery_config(), 2, 14)])
            notifier.subscribe(store)
            store.record("loop", late_run("b" * 32, T0))  # pending_changed only: no notification
            store.record("loop", late_run("c" * 32, T0 + 60))  # the second failure in a row: failed
            lost = EarlierMessage("b" * 32, T0, "lost")
            store.record("loop", on_time(earlier=(lost, found_late("c" * 32, T0 + 60, 75.25))))
            await notifier.drain(SEE)
            lines.extend(await _lines_matching(trapd, r"^TRAP2, ", 4))

        health = _run([_receiver(trapd.port)], scenario)

        assert len(lines) == 4, lines
        # A run's status change comes before what it found of earlier messages.
        failed, recovered, lost, late = lines
        assert re.search(_trap_oid_pattern(mib.Notification.DELIVERY_PROBE_FAILED), failed)
        assert re.search(_trap_oid_pattern(mib.Notification.DELIVERY_LOST), lost)
        assert re.search(_trap_oid_pattern(mib.Notification.DELIVERY_LATE), late)
        assert re.search(_trap_oid_pattern(mib.Notification.DELIVERY_PROBE_RECOVERED), recovered)
        got = _varbinds(failed)
        assert got[_at(DeliveryColumn.NAME, "loop")] == 'STRING: "loop"'
        assert got[_at(DeliveryColumn.FAILED_PHASE, "loop")] == f"INTEGER: {mib.PHASE_VALUES['deliver']}"
        assert got[_at(DeliveryColumn.FAILED_REASON, "loop")] == f"INTEGER: {mib.REASON_VALUES['late']}"
        assert got[_at(DeliveryColumn.PENDING, "loop")] == "Gauge32: 2"
        assert got[_at(DeliveryColumn.CONSECUTIVE_FAILURES, "loop")] == "Gauge32: 2"
        got = _varbinds(lost)
        assert got[_at(DeliveryColumn.LOST_COUNT, "loop")] == "Counter32: 1"
        assert got[_at(DeliveryColumn.EVENT_SUBMITTED, "loop")] == _hex(date_and_time(T0))
        got = _varbinds(late)
        assert got[_at(DeliveryColumn.EVENT_LATENCY, "loop")] == "Gauge32: 75250"
        assert got[_at(DeliveryColumn.LATE_COUNT, "loop")] == "Counter32: 1"
        assert got[_at(DeliveryColumn.PENDING, "loop")] == "Gauge32: 0"
        got = _varbinds(recovered)
        assert got[_at(DeliveryColumn.STATUS, "loop")] == f"INTEGER: {mib.STATUS_VALUES['ok']}"
        assert got[_at(DeliveryColumn.LATENCY_KNOWN, "loop")] == f"INTEGER: {mib.TRUTH_VALUES[True]}"
        assert health.notifications == {(f"127.0.0.1:{trapd.port}", "sent"): 4}
        assert not any(PASSWORD in line or SUBMIT_PASSWORD in line for line in trapd.lines())

    def test_a_hostile_error_text_stays_on_one_trap_line(self, trapd: TrapReceiver) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = ResultsStore()
            store.configure([(delivery_config(), 1, 14)])
            notifier.subscribe(store)
            store.record("loop", replace(submit_refused(), error="535 denied\r\nTRAP2, forged line\x1b[2J"))
            lines.extend(await _lines_matching(trapd, r"^TRAP2, ", 1))

        _run([_receiver(trapd.port)], scenario)

        assert len(lines) == 1, lines
        assert not any(line.startswith("TRAP2, forged") for line in trapd.lines())
        error = _varbinds(lines[0])[_at(DeliveryColumn.LAST_ERROR, "loop")]
        assert error == 'STRING: "535 denied  TRAP2, forged line [2J"'
