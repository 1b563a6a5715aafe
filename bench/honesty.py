"""Section honesty: probe connect/banner times with and without continuous scrapes and SNMP walks."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import snmp_tools
from bench.common import (
    AgentProcess,
    CpuWindow,
    MachineWindow,
    Results,
    Row,
    Settings,
    http_get,
    log,
    percentile,
)
from bench.peers import Peers
from bench.scale import probe_mix
from monitor.exporters.snmp import mib_oids
from tests.support.ports import free_udp_port
from tests.support.procs import descendants, read_pid_file

PHASES = ("connect", "banner")
NOISY_BASELINE_MS = 10.0  # loopback connect/banner p99 on an idle 2-core machine is well below this
SAMPLE_EVERY = 5.0  # the agent saves last results every 5 s (monitor/state/persistence.py FLUSH_INTERVAL)
try:
    from monitor.state.persistence import STATE_FILE as STATE_DB
except ImportError:  # an agent without a state database: the section says so and stops
    STATE_DB = "state.db"


@dataclass
class Sampler:
    """Fresh phase durations of every probe, read from the agent's state database (SQLite, read-only)
    so that sampling puts no load on the agent; each run counts once (keyed by its start time)."""

    db: Path
    seen: dict[str, float] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # each run's result fields that explain its times

    def take(self, record: bool = True) -> None:
        uri = f"file:{self.db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
            rows = conn.execute("SELECT name, last_result FROM probe_state WHERE last_result IS NOT NULL").fetchall()
        for name, text in rows:
            result = json.loads(text)
            started = result.get("started_at")
            if started is None or self.seen.get(name) == started:
                continue
            self.seen[name] = started
            if record:
                keep = ("started_at", "timings", "timing_source", "tls_mode", "ok", "reason")
                self.runs.append({"name": name, **{k: result[k] for k in keep if k in result}})


KINDS = ("quiet", "loaded", "burn")


@dataclass
class Slices:
    """Alternating quiet, loaded and burn time spans (epoch seconds), with CPU figures per kind."""

    spans: list[tuple[str, float, float]] = field(default_factory=list)
    agent_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    others_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    machine_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))  # every process
    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))

    def kind_at(self, when: float) -> str | None:
        for kind, start, end in self.spans:
            if start <= when < end:
                return kind
        return None

    def cores(self, kind: str) -> float:
        """Whole-machine cores busy in spans of `kind` so far."""
        return self.machine_cpu[kind] / (self.wall[kind] or 1.0)

    def cpu_text(self, kind: str) -> str:
        wall = self.wall[kind] or 1.0
        return (
            f"agent {self.agent_cpu[kind] / wall:.2f} cores, others {self.others_cpu[kind] / wall:.2f}, "
            f"machine {self.cores(kind):.2f}"
        )


class Burn:
    """Processes that only spin, together using `cores` of CPU (10 ms duty cycles): the loaded spans'
    extra CPU without any SNMP or HTTP, to tell a machine too busy for the peers from load that
    distorts the agent's measurements."""

    SPIN = (
        "import sys, time\n"
        "busy = float(sys.argv[1]) * 0.01\n"
        "while True:\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < busy:\n"
        "        pass\n"
        "    time.sleep(max(0.0, 0.01 - busy))\n"
    )

    def __init__(self, cores: float) -> None:
        self.cores = max(0.0, cores)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Burn:
        n = math.ceil(self.cores)
        for _ in range(n):
            argv = [sys.executable, "-c", self.SPIN, f"{self.cores / n:.3f}"]
            self.procs.append(subprocess.Popen(argv))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(10)


class Load:
    """Continuous /metrics scrapes and SNMP bulk walks of the probe table, each back to back, until stopped."""

    def __init__(self, agent: AgentProcess, snmp_port: int, limit: float) -> None:
        self.agent = agent
        self.snmp_port = snmp_port
        self.stop = threading.Event()
        self.end = time.monotonic() + limit
        self.scrapes = 0
        self.scrape_failures = 0
        self.walks = 0
        self.walk_values = 0
        self.threads = [threading.Thread(target=self._scrape, daemon=True)]
        if snmp_port:
            self.threads.append(threading.Thread(target=self._walk, daemon=True))

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.end

    def _scrape(self) -> None:
        while self._running():
            status, _, _ = http_get(self.agent.url + "/metrics", timeout=30)
            self.scrapes += 1
            self.scrape_failures += status != 200

    def _walk(self) -> None:
        table = snmp_tools.dotted(mib_oids.SMTP_PROBE_TABLE)
        while self._running():
            remaining = self.end - time.monotonic()
            if remaining < 0.5:
                break
            walk = snmp_tools.bulk_walk(self.snmp_port, "v2c", table, min(30.0, remaining))
            self.walks += 1
            self.walk_values += walk.values

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(40)


def _slice(
    agent: AgentProcess, kind: str, seconds: float, sampler: Sampler, slices: Slices, load: Load | Burn | None
) -> None:
    """One span of `seconds` of `kind`, sampling the state database every few seconds meanwhile."""
    cpu, machine = CpuWindow(agent.pid), MachineWindow()
    began = time.time()
    cpu.start()
    machine.start()
    end = time.monotonic() + seconds
    with load if load is not None else contextlib.nullcontext():
        while time.monotonic() < end:
            time.sleep(min(SAMPLE_EVERY, max(0.0, end - time.monotonic())))
            sampler.take()
    cpu.stop()
    machine.stop()
    slices.spans.append((kind, began, time.time()))
    slices.agent_cpu[kind] += cpu.cpu
    slices.others_cpu[kind] += machine.others * machine.wall
    slices.machine_cpu[kind] += machine.cores_busy * machine.wall
    slices.wall[kind] += cpu.wall


def _pin_tree(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` and its descendants onto `cpus` (children forked later inherit it)."""
    for member in {pid} | descendants(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{member}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def _peers_apart(peer_roots: list[int], agent_pid: int) -> Iterator[str]:
    """The peers on the first CPU, the agent and the load (this thread's children) on the others.

    Sharing every CPU, the loaded spans slow Postfix itself: greetings come later, truly, and the
    kernel-stamped banner times report that. Apart, what is left is what the agent's own load
    does to its measurements: its probe process shares its CPUs with SNMP, scrapes and the load."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield "one CPU: peers and agent share it"
        return
    peers, ours = {cpus[0]}, set(cpus[1:])
    for root in peer_roots:
        _pin_tree(root, peers)
    _pin_tree(agent_pid, ours)
    os.sched_setaffinity(0, ours)  # this thread: the load's subprocesses and threads inherit it
    try:
        yield f"peers (Postfix) on CPU {cpus[0]}, the agent and the load on CPU {','.join(map(str, sorted(ours)))}"
    finally:
        everything = set(cpus)
        os.sched_setaffinity(0, everything)
        for root in peer_roots:
            _pin_tree(root, everything)
        _pin_tree(agent_pid, everything)


def run(settings: Settings, peers: Peers, results: Results) -> None:
    postfix = peers.postfix
    n, interval = (1_000, 10.0) if settings.quick else (2_000, 20.0)
    pairs, slice_s = (2, 10.0) if settings.quick else (4, 15.0)
    snmp_port = free_udp_port()
    config: dict[str, Any] = {
        "defaults": {"interval": interval, "timeout": "10s", "max_concurrency": 500, "helo": "bench.test"},
        "smtp": probe_mix(n, postfix.plain_port, postfix.ca_file, prefix="h"),
    }
    config["snmp"] = snmp_tools.agent_snmp_config(snmp_port)
    log(f"honesty: {n} probes (half STARTTLS, half plain) every {interval:g} s")
    agent = AgentProcess(settings.workdir / "agent-honesty", config)
    apart = contextlib.ExitStack()
    try:
        agent.start()
        master = read_pid_file(postfix.pid_file)
        placement = apart.enter_context(_peers_apart([master] if master is not None else [], agent.pid))
        log(f"honesty: {placement}")
        time.sleep(interval + 3.0)
        if not (agent.workdir / "state" / STATE_DB).is_file():
            raise RuntimeError("no state database to sample probe timings from (monitor/state/persistence.py)")
        log(f"honesty: {pairs} x ({slice_s:g} s quiet, loaded, burn); timings from the state database")
        sampler = Sampler(agent.workdir / "state" / STATE_DB)
        sampler.take(record=False)
        slices = Slices()
        loads: list[Load] = []
        burns: list[float] = []
        for _ in range(pairs):
            _slice(agent, "quiet", slice_s, sampler, slices, None)
            loads.append(Load(agent, snmp_port, slice_s))
            _slice(agent, "loaded", slice_s, sampler, slices, loads[-1])
            # The control: as much extra CPU as the loaded spans took so far, spent by spinning processes.
            burns.append(slices.cores("loaded") - slices.cores("quiet"))
            _slice(agent, "burn", slice_s, sampler, slices, Burn(burns[-1]))
        time.sleep(SAMPLE_EVERY + 1.0)  # the agent's next save holds the last runs
        sampler.take()
        raw = settings.workdir / "honesty-runs.json"  # to look into a tail: which runs, when, timed how
        raw.write_text(json.dumps({"spans": slices.spans, "runs": sampler.runs}))
        results.note(f"honesty: every run's timings, timing sources and the spans: {raw}")
        values: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PHASES} for k in KINDS}
        for run in sampler.runs:
            kind = slices.kind_at(run["started_at"])
            if kind is not None:
                timings = run.get("timings", {})
                for phase in PHASES:
                    if phase in timings:
                        values[kind][phase].append(float(timings[phase]))
        scrapes = sum(x.scrapes for x in loads)
        load_text = f"{scrapes} scrapes ({sum(x.scrape_failures for x in loads)} failed)"
        load_text += f", {sum(x.walks for x in loads)} SNMP walks ({sum(x.walk_values for x in loads):,} values)"
        results.note(
            f"honesty: {n} probes every {interval:g} s; {pairs} rounds of {slice_s:g} s quiet, {slice_s:g} s loaded "
            f"and {slice_s:g} s burn, each run counted in the span it started in; quiet: {slices.cpu_text('quiet')}; "
            f"loaded: {slices.cpu_text('loaded')}, {load_text}; burn: {slices.cpu_text('burn')}, spinning processes "
            f"using {', '.join(f'{b:.2f}' for b in burns)} cores (the loaded spans' extra machine CPU so far). "
            "Other processes' load adds to every kind alike."
        )
        results.note(f"honesty: {placement}")
        results.note(
            "honesty: connect and banner end at kernel timestamps (TCP_INFO handshake RTT, SO_TIMESTAMPNS of the "
            "greeting): a late-scheduled probe process does not lengthen them, a server slowed by a busy machine "
            "does. The burn spans use as much extra CPU as the loaded ones with no SNMP and no scrapes: what "
            "loaded adds beyond burn is what serving SNMP and scrapes adds beyond using that CPU."
        )
        for phase in PHASES:
            shift = functools.partial(_shift_row, results, values, phase)
            shift("p50", "quiet", "loaded", f"{phase} p50 inflation under load")
            shift("p99", "quiet", "loaded", f"{phase} p99 inflation under load", judged=True)
            shift("p99", "quiet", "burn", f"{phase} p99 inflation by an equal CPU burn (no SNMP, no scrapes)")
            shift(
                "p99",
                "burn",
                "loaded",
                f"{phase} p99, loaded beyond the equal CPU burn",
                judged=True,
                why="; what SNMP and scrapes add beyond their CPU",
            )
    finally:
        apart.close()
        agent.stop()


def _shift_row(
    results: Results,
    values: dict[str, dict[str, list[float]]],
    phase: str,
    stat: str,
    before: str,
    after: str,
    figure: str,
    judged: bool = False,
    why: str = "",
) -> None:
    """How far `stat` (p50 or p99) of `phase` moved from the spans of kind `before` to those of `after`."""
    q = {"p50": 0.5, "p99": 0.99}[stat]
    first, then = values[before][phase], values[after][phase]
    base, moved = 1000 * percentile(first, q), 1000 * percentile(then, q)
    note = f"{base:.2f} ms {before} ({len(first)} runs) → {moved:.2f} ms {after} ({len(then)} runs){why}"
    ok = moved - base < 2.0 if judged else None
    if judged and 1000 * percentile(values["quiet"][phase], q) > NOISY_BASELINE_MS:
        ok = None  # a loopback connect/banner p99 this high is the machine's noise, not a verdict
        note += f"; inconclusive: the quiet {stat} is above {NOISY_BASELINE_MS:g} ms"
    target = "< 2 ms" if judged else ""
    results.add(Row("honesty", figure, moved - base, "ms", target=target, ok=ok, note=note))
