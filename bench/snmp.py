"""Section snmp: GET/s and bulk-walk values/s of the agent's probe table against net-snmp's snmpd."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench import snmp_tools, snmp_v3_flood
from bench.common import (
    AgentProcess,
    CpuWindow,
    Results,
    Row,
    Settings,
    log,
    wait_settled,
)
from bench.peers import Peers
from bench.scale import probe_mix, probe_name
from monitor.exporters.snmp import mib_oids
from tests.support.ports import free_udp_port

VERSIONS = ("v2c", "v3")
# HOST-RESOURCES-MIB (storage, devices, processes, installed packages): some thousand values that
# stay put; mib-2 as a whole includes the TCP connection table, which the SMTP sections fill with
# thousands of TIME_WAIT entries that snmpd reads slowly from /proc.
ANCHOR_WALK = ".1.3.6.1.2.1.25"


@dataclass
class Figures:
    """One agent's (or snmpd's) SNMP figures for one protocol version."""

    get_rate: float
    get_note: str
    walk_rate: float
    walk_note: str


FIRST_ROW = probe_name("t", 0)  # the first of table_agent_config's rows
FIRST_ROW_STATUS = snmp_tools.dotted(mib_oids.smtp_probe_oid(mib_oids.SmtpProbeColumn.STATUS, FIRST_ROW))


def table_agent_config(rows: int, snmp_port: int, smtp_port: int, ca_file: Any) -> dict[str, Any]:
    """The agent's config serving `rows` probe rows over SNMP on `snmp_port`: the probes run every hour, so
    few run while GETs and walks are measured; the table is what is served."""
    return {
        "defaults": {"interval": "1h", "timeout": "10s", "max_concurrency": 500, "helo": "bench.test"},
        "smtp": probe_mix(rows, smtp_port, ca_file, prefix="t"),
        "snmp": snmp_tools.agent_snmp_config(snmp_port),
    }


def _gets(port: int, version: str, oid: str, seconds: float, pid: int) -> tuple[float, str]:
    packet = snmp_tools.capture_request(port, version, oid)
    cpu = CpuWindow(pid)
    cpu.start()
    got = snmp_tools.get_loop(port, packet, seconds)
    cpu.stop()
    note = (
        f"{got.answered:,} answered, {got.lost} lost, server {cpu.cpu / cpu.wall:.2f} cores, "
        f"client {got.client_cpu / got.seconds:.2f} cores"
    )
    if got.client_bound:
        note += ", client-bound: a lower bound"
    return got.rate, note


def _walks(port: int, version: str, oid: str, budget: float, per_walk: float) -> tuple[float, str]:
    """Walk `oid` again and again until `budget` s are used (each walk at most `per_walk` s)."""
    values = 0
    seconds = 0.0
    walks = complete = 0
    end = time.monotonic() + budget
    while time.monotonic() < end and walks < 100:
        walk = snmp_tools.bulk_walk(port, version, oid, min(per_walk, max(1.0, end - time.monotonic())))
        if walk.values == 0:
            return 0.0, f"walk failed: {walk.error}"
        values += walk.values
        seconds += walk.seconds
        walks += 1
        complete += walk.complete
    rate = values / seconds if seconds else 0.0
    return rate, f"{walks} walks ({complete} complete), {values:,} values, -Cr50"


def _measure(port: int, pid: int, get_oid: str, walk_oid: str, get_s: float, walk_s: float) -> dict[str, Figures]:
    out = {}
    for version in VERSIONS:
        rate, note = _gets(port, version, get_oid, get_s, pid)
        walk_rate, walk_note = _walks(port, version, walk_oid, walk_s, walk_s)
        out[version] = Figures(rate, note, walk_rate, walk_note)
        log(f"  {version}: {rate:,.0f} GET/s ({note}); {walk_rate:,.0f} values/s ({walk_note})")
    return out


def _flood_rows(
    results: Results, mine: snmp_v3_flood.FloodFigures, theirs: snmp_v3_flood.FloodFigures, calm_rate: float
) -> None:
    """Finding 3 of issue 18: at f466e3e pysnmp spent 0.84-1.18 ms on each bad v3 message (snmpd 0.06-0.09)."""
    rate = snmp_v3_flood.FLOOD_RATE
    results.add(
        Row(
            "snmp",
            f"unauthenticated v3 flood ({rate:,}/s): server CPU per message",
            mine.cpu_per_message * 1e6,
            "µs",
            theirs.cpu_per_message * 1e6,
            "snmpd",
            "≤ 2x",
            mine.cpu_per_message <= 2 * theirs.cpu_per_message,
            f"{mine.sent:,} sent, agent {mine.cores:.2f} cores; snmpd {theirs.sent:,} sent, {theirs.cores:.2f} cores",
        )
    )
    results.add(
        Row(
            "snmp",
            f"v2c GET/s during the v3 flood, 1,000 rows (without it: {calm_rate:,.0f})",
            mine.get_rate,
            "/s",
            theirs.get_rate,
            "snmpd",
            "≥ 0.5x",
            mine.get_rate >= 0.5 * theirs.get_rate,
            f"{mine.get_note}; snmpd: {theirs.get_note}",
        )
    )
    results.note(
        f"snmp: the v3 flood sends {rate:,} bad messages/s from a process of its own (discovery, an unknown user, "
        "a wrong digest, two reportable Reports); CPU per message is the server's CPU during the flood less its "
        "idle CPU, over the messages sent; the GETs replay one captured v2c request, 32 in flight, during a "
        "second flood."
    )


def run(settings: Settings, peers: Peers, results: Results) -> None:
    get_s, walk_s = (3.0, 8.0) if settings.quick else (8.0, 20.0)
    flood_s = 5.0 if settings.quick else 10.0
    log(f"snmp: snmpd anchor (GET {snmp_tools.SYS_DESCR}, bulk walks of {ANCHOR_WALK})")
    snmpd = snmp_tools.Snmpd(settings.workdir / "snmpd")
    try:
        snmpd.start()
        anchor = _measure(snmpd.port, snmpd.pid, snmp_tools.SYS_DESCR, ANCHOR_WALK, get_s, walk_s)
        anchor_flood = snmp_v3_flood.measure(snmpd.port, snmpd.pid, snmp_tools.SYS_DESCR, flood_s, settings.workdir)
        log(f"  snmpd under the v3 flood: {anchor_flood}")
    finally:
        snmpd.stop()
    postfix = peers.postfix
    table = snmp_tools.dotted(mib_oids.SMTP_PROBE_TABLE)
    for rows in (1_000, 10_000):
        port = free_udp_port()
        config = table_agent_config(rows, port, postfix.plain_port, postfix.ca_file)
        get_oid = FIRST_ROW_STATUS
        log(f'snmp: agent with {rows:,} probe rows (GET smtpProbeStatus."{FIRST_ROW}", bulk walks of smtpProbeTable)')
        agent = AgentProcess(settings.workdir / f"agent-snmp-{rows}", config)
        try:
            agent.start()
            log(f"  waited {wait_settled(agent.pid):.0f} s for the agent's startup work to finish")
            if snmp_tools.snmpget(port, "v2c", timeout=5.0) is None:
                raise RuntimeError(f"the agent's SNMP on udp {port} does not answer:\n{agent.log_tail()}")
            figures = _measure(port, agent.pid, get_oid, table, get_s, walk_s)
            if rows == 1_000:
                flood = snmp_v3_flood.measure(port, agent.pid, get_oid, flood_s, settings.workdir)
                log(f"  agent under the v3 flood: {flood}")
                _flood_rows(results, flood, anchor_flood, figures["v2c"].get_rate)
        finally:
            agent.stop()
        for version in VERSIONS:
            mine, theirs = figures[version], anchor[version]
            label = "v2c" if version == "v2c" else "v3 authPriv (SHA/AES)"
            results.add(
                Row(
                    "snmp",
                    f"{label} GET/s, {rows:,} rows",
                    mine.get_rate,
                    "/s",
                    theirs.get_rate,
                    "snmpd",
                    "≥ 0.5x",
                    mine.get_rate >= 0.5 * theirs.get_rate,
                    f"{mine.get_note}; snmpd: {theirs.get_note}",
                )
            )
            results.add(
                Row(
                    "snmp",
                    f"{label} bulk-walk values/s, {rows:,} rows",
                    mine.walk_rate,
                    "/s",
                    theirs.walk_rate,
                    "snmpd",
                    "≥ 0.5x",
                    mine.walk_rate >= 0.5 * theirs.walk_rate,
                    f"{mine.walk_note}; snmpd: {theirs.walk_note} of HOST-RESOURCES-MIB",
                )
            )
    results.note(
        "snmp: GETs replay one captured request (snmpget -d) with 32 in flight from one client socket; "
        "v3 replays stay inside RFC 3414's 150 s window. Bulk walks are net-snmp's snmpbulkwalk -Cr50."
    )
