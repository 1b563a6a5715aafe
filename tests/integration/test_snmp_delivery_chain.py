"""End to end over SNMP: the agent runs a delivery probe through the real chain (MSA Postfix -> MX Postfix ->
Dovecot); snmptable shows its row and the real Received hops, and an MX outage reaches snmptrapd as
deliveryProbeFailed (late), then deliveryLate with the held message's latency, then deliveryProbeRecovered."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.mib_oids import DeliveryColumn
from tests.peers.agent import AgentProcess
from tests.peers.mail_chain import MailChain
from tests.peers.net_snmp import tool_env
from tests.peers.snmptrapd import TrapReceiver
from tests.support.ports import free_udp_port

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
COMMUNITY = "chain-read-6d1f"
DELIVER_WITHIN = 4  # seconds: an MX stopped for longer makes a run late


def agent_config(chain: MailChain, snmp_port: int, trapd: TrapReceiver) -> dict[str, object]:
    probe = chain.delivery_probe(interval="2s", deliver_within=DELIVER_WITHIN, lost_after="1h", alert_after=1)
    return {
        "snmp": {
            "enabled": True,
            "listen": [f"udp:127.0.0.1:{snmp_port}"],
            "communities": [{"name": COMMUNITY}],
            "notify": [{"host": "127.0.0.1", "port": trapd.port, "version": "2c", "community": "public"}],
        },
        "delivery": [probe],
    }


class NetSnmp:
    def __init__(self, port: int, env: dict[str, str], base_mibs: Path) -> None:
        self.port, self.env, self.base_mibs = port, env, base_mibs

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [
            tool, "-M", f"+{MIB_DIR}:{self.base_mibs}", "-m", "SMTP-MONITOR-MIB", "-v2c", "-c", COMMUNITY,
            "-t", "3", "-r", "2", f"udp:127.0.0.1:{self.port}", *args,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60, check=False)

    def status(self) -> str:
        out = self.run("snmpget", "-Oqv", 'deliveryStatus."chain"')
        return out.stdout.strip() if out.returncode == 0 else ""

    def table(self, table: str) -> list[dict[str, str]]:
        out = self.run("snmptable", "-Ci", "-Cf", "|", table)
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", out.stderr
        lines = [line for line in out.stdout.splitlines() if "|" in line]
        header = ["index", *lines[0].split("|")[1:]]
        return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:]]


def wait(check: Callable[[], bool], timeout: float, what: str, agent: AgentProcess) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what}\n--- agent log ---\n{agent.logs()[-3000:]}")
        time.sleep(0.3)


def traps_of(trapd: TrapReceiver, notification: mib.Notification) -> list[str]:
    oid = "." + ".".join(map(str, mib.notification_oid(notification)))
    return [line for line in trapd.notifications() if f"OID: {oid}\t" in line + "\t"]


def varbind(line: str, column: DeliveryColumn) -> str:
    oid = "." + ".".join(map(str, mib.delivery_oid(column, "chain")))
    match = re.search(re.escape(oid) + r" = ([^\t]*)", line)
    assert match, line
    return match[1]


def test_snmp_shows_the_real_hops_and_an_mx_outage_becomes_failed_late_and_recovered(
    mail_chain: MailChain,
    agent_factory: Callable[[dict[str, object]], AgentProcess],
    trap_receiver: TrapReceiver,
    base_mibs: Path,
    tmp_path: Path,
) -> None:
    chain = mail_chain
    chain.ensure_running()
    port = free_udp_port()
    agent = agent_factory(agent_config(chain, port, trap_receiver))
    snmp = NetSnmp(port, tool_env(tmp_path / "net-snmp"), base_mibs)

    wait(lambda: snmp.status() == "ok", 60, "the delivery probe never became ok", agent)
    (row,) = snmp.table("deliveryTable")
    assert (row["deliveryName"], row["deliveryFailedPhase"], row["deliveryLatencyKnown"]) == ("chain", "none", "true")
    assert row["deliverySpf"] == row["deliveryDkim"] == row["deliveryDmarc"] == "pass"
    assert (row["deliveryFolder"], row["deliveryHopsSource"], row["deliveryHops"]) == ("inbox", "thisRun", "3")
    assert row["deliverySubmittedTo"] == f"{chain.host}:{chain.msa_submission_port}"
    hops = snmp.table("deliveryHopTable")
    assert [h["index"] for h in hops] == ['"chain".1', '"chain".2', '"chain".3']
    assert [(h["deliveryHopBy"], h["deliveryHopProtocol"]) for h in hops] == [
        (chain.msa_host, "ESMTPSA"),
        (chain.mx_host, "ESMTPS"),
        (chain.mailbox_host, "LMTP"),
    ]
    assert hops[1]["deliveryHopFrom"] == chain.msa_host
    assert all(h["deliveryHopDelayKnown"] == "true" for h in hops)

    # Store and forward: the MSA holds the message while the MX is down; the run goes late.
    chain.stop_mx()
    try:
        wait(lambda: bool(traps_of(trap_receiver, mib.Notification.DELIVERY_PROBE_FAILED)), 40, "no failed", agent)
    finally:
        chain.start_mx()
    (failed,) = traps_of(trap_receiver, mib.Notification.DELIVERY_PROBE_FAILED)
    assert varbind(failed, DeliveryColumn.FAILED_PHASE) == f"INTEGER: {mib.PHASE_VALUES['deliver']}"
    assert varbind(failed, DeliveryColumn.FAILED_REASON) == f"INTEGER: {mib.REASON_VALUES['late']}"
    assert varbind(failed, DeliveryColumn.PENDING) != "Gauge32: 0"

    wait(lambda: bool(traps_of(trap_receiver, mib.Notification.DELIVERY_LATE)), 90, "no deliveryLate", agent)
    late = traps_of(trap_receiver, mib.Notification.DELIVERY_LATE)[0]
    latency = int(varbind(late, DeliveryColumn.EVENT_LATENCY).removeprefix("Gauge32: "))
    assert latency > DELIVER_WITHIN * 1000  # arrived, after its deadline: late, not lost
    # 1, unless a second run also went late before the MX was back and both arrived together
    assert varbind(late, DeliveryColumn.LATE_COUNT) in ("Counter32: 1", "Counter32: 2")
    wait(lambda: bool(traps_of(trap_receiver, mib.Notification.DELIVERY_PROBE_RECOVERED)), 60, "no recovery", agent)
    assert traps_of(trap_receiver, mib.Notification.DELIVERY_LOST) == []
    (row,) = snmp.table("deliveryTable")
    assert row["deliveryLateCount"] == str(len(traps_of(trap_receiver, mib.Notification.DELIVERY_LATE)))
    assert row["deliveryLostCount"] == "0"
    # Secrets stay out of both surfaces.
    walked = snmp.run("snmpwalk", "-On", ".1.3.6.1.4.1").stdout
    for secret in (chain.mailbox.password, chain.submitter.password):
        assert secret not in walked
        assert not any(secret in line for line in trap_receiver.lines())
