"""The unauthenticated SNMPv3 flood of issue 18 (finding 3): a server's CPU per bad message, and GET/s during it.

The flood is tests.peers.snmp_flood's bad messages (discovery, an unknown user, a known user's wrong
digest, two reportable Reports), round-robin at FLOOD_RATE a second from a process of its own, the
same for the agent and for snmpd, each with its own engine ID."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import snmp_tools
from bench.common import CpuWindow, on_exit, stop_process
from tests.support.peers import snmp_flood

ROOT = Path(__file__).resolve().parent.parent
FLOOD_RATE = 2_000  # datagrams a second: 1.9 Mbit/s of unknown-user messages took 113 % of a core at f466e3e
IDLE_SECONDS = 1.0


@dataclass
class FloodFigures:
    sent: int
    cpu_per_message: float  # the server's CPU seconds per flood datagram, its idle CPU taken off
    cores: float  # the server's CPU during the flood alone
    get_rate: float  # GET/s during a second flood
    get_note: str


def _start_flood(port: int, datagrams: Path, seconds: float) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", snmp_flood.__name__, str(port), str(FLOOD_RATE), str(seconds), str(datagrams)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    on_exit(f"snmp flood {proc.pid}", lambda: stop_process(proc))
    return proc


def _sent(proc: subprocess.Popen[str], seconds: float) -> int:
    out, _ = proc.communicate(timeout=seconds + 30)
    return int(out.strip() or 0)


def measure(port: int, pid: int, get_oid: str, seconds: float, workdir: Path) -> FloodFigures:
    """Flood `port` for `seconds` measuring the server `pid`'s CPU; then flood again with GETs of `get_oid`."""
    engine_id = snmp_flood.discover_engine_id(port)
    datagrams = workdir / f"flood-{port}.hex"
    datagrams.parent.mkdir(parents=True, exist_ok=True)
    datagrams.write_text("\n".join(d.hex() for d in snmp_flood.bad_messages(engine_id, snmp_tools.V3_USER.encode())))
    idle = CpuWindow(pid)
    idle.start()
    time.sleep(IDLE_SECONDS)
    idle.stop()
    cpu = CpuWindow(pid)
    cpu.start()
    sent = _sent(_start_flood(port, datagrams, seconds), seconds)
    cpu.stop()
    spent = max(0.0, cpu.cpu - idle.cpu / idle.wall * cpu.wall)
    packet = snmp_tools.capture_request(port, "v2c", get_oid)
    flood = _start_flood(port, datagrams, seconds)
    time.sleep(0.3)  # the flood is on before the first GET
    got = snmp_tools.get_loop(port, packet, seconds - 0.8)
    _sent(flood, seconds)
    note = f"{got.answered:,} answered, {got.lost} lost during {FLOOD_RATE:,} bad v3 messages/s"
    return FloodFigures(sent, spent / sent if sent else 0.0, cpu.cpu / cpu.wall, got.rate, note)
