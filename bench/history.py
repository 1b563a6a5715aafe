"""History at scale: CPU per result (queueing on the event loop, and the writer's batches), the agent CPU share at
10,000 probes every 60 s, the state database's size after a simulated day, and the time of the reads the status
page makes (availability_all, recent, changes, rollups) and of a restart's rebuild at that size.

Simulated: results are written with a fake clock as fast as the writer takes them; the last hour, where CPU and
disk writes are measured, in the batches the agent makes (every 5 s of the fake clock: a twelfth of the probes),
the hours before in 5-minute batches. `--agent SECONDS` also runs a real agent (10,000 refused probes) with
history off and on. Standalone: `python bench/history.py --probes 10000 --hours 24 [--agent 60]` (0.4 GB of
disk, about 10 minutes on the 2-core machine; --agent adds 4 minutes)."""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: bench.*, monitor.*

from bench.common import (
    AgentProcess,
    Results,
    Row,
    Settings,
    cpu_seconds,
    log,
    refused_port,
    refused_smtp_probes,
    status_field,
)
from monitor.config.schema import HistoryConfig
from monitor.model.results import Phase, Reason, Reply, SmtpResult, TlsInfo
from monitor.state.history import History

if TYPE_CHECKING:
    from bench.peers import Peers

SECTION = "history"
INTERVAL = 60.0
SLOT = 5.0  # the writer's flush interval: one batch per slot
START = 20_428 * 86400.0  # a UTC midnight
EXPIRY = START + 60 * 86400.0


@dataclass
class Figures:
    probes: int
    hours: float
    results: int
    queue_cpu_us: float  # per result, on the event loop: compact and queue
    write_cpu_us: float  # per result, in the writer thread: rows, rollups, trims, retention
    write_bytes: float  # per result, written to the disk (database and WAL; /proc/self/io), in the 5 s batches
    db_bytes: int
    raw_rows: int
    availability_all_ms: float
    recent_ms: float
    changes_ms: float
    rollups_ms: float
    reopen_s: float  # open() of the filled database: schema check and the rebuild of the windows

    @property
    def agent_share(self) -> float:
        """Fraction of one core at `probes` every 60 s."""
        return self.probes / INTERVAL * (self.queue_cpu_us + self.write_cpu_us) / 1e6


def result(rng: random.Random, at: float) -> SmtpResult:
    if rng.random() < 0.03:
        return SmtpResult(
            "192.0.2.1",
            25,
            "starttls",
            at,
            False,
            phase=Phase.BANNER,
            reason=Reason.REPLY,
            error="554 5.7.1 no",
            reply=Reply(554, ("5.7.1 no",)),
            timings={"resolve": 0.001, "connect": 0.002},
            total=0.004,
        )
    connect = rng.uniform(0.001, 0.02)
    return SmtpResult(
        "192.0.2.1",
        25,
        "starttls",
        at,
        True,
        timings={
            "resolve": 0.001,
            "connect": connect,
            "banner": 0.003,
            "ehlo": 0.001,
            "starttls": 0.001,
            "tls": 0.012,
            "ehlo_tls": 0.001,
            "quit": 0.0005,
        },
        total=connect + 0.02,
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", True),
    )


def _written_bytes() -> int:
    """Bytes this process caused to be written to storage (write_bytes of /proc/self/io), 0 where unknown."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _median_ms(call: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return 1000 * statistics.median(samples)


def measure(
    probes: int,
    hours: float,
    workdir: Path,
    say: Callable[[str], None] = print,
    measured_hours: float = 1.0,
    fill_batch: float = 300.0,
) -> Figures:
    clock = [START]
    path = workdir / "state.db"
    for stale in workdir.glob("state.db*"):
        stale.unlink()
    history = History(path, HistoryConfig(), clock=lambda: clock[0])
    history.open()
    names = [f"probe-{i:05d}" for i in range(probes)]
    rng = random.Random(21)
    slots = int(hours * 3600 / SLOT)
    per_slot = int(INTERVAL / SLOT)
    queue_cpu = write_cpu = 0.0
    count = measured = 0
    # The CPU and the disk writes are measured over the last `measured_hours`, at the day's size, in the agent's
    # batches (every 5 s); the hours before are written in batches of `fill_batch` seconds: the same rows sooner.
    measure_from = max(0, slots - int(measured_hours * 3600 / SLOT))
    written0 = 0
    failed: set[str] = set()
    for slot in range(slots):
        now = START + slot * SLOT
        clock[0] = now
        batch = [(n, result(rng, now)) for n in names[slot % per_slot :: per_slot]]  # built outside the timing
        if slot == measure_from:
            history.flush()  # what the fill left queued is not the measured hour's
            written0 = _written_bytes()
        t0 = time.process_time()
        for name, r in batch:
            history.on_result(name, r)
        t1 = time.process_time()
        for name, r in batch:  # status changes as the store would see them (alert_after 1)
            if r.ok == (name in failed):
                history.on_status_change(name, now, "failed" if r.ok else "ok", "ok" if r.ok else "failed", "", "", "")
                (failed.discard if r.ok else failed.add)(name)
        if slot >= measure_from or (slot + 1) % int(fill_batch / SLOT) == 0:
            history.flush()
        t2 = time.process_time()
        count += len(batch)
        if slot >= measure_from:
            queue_cpu += t1 - t0
            write_cpu += t2 - t1
            measured += len(batch)
        if slot % 720 == 0:
            say(f"  history: {slot * SLOT / 3600:.0f} h simulated, {count:,} results")
    written = _written_bytes() - written0
    history.close()
    db_bytes = sum(p.stat().st_size for p in workdir.glob("state.db*"))
    t0 = time.perf_counter()
    history = History(path, HistoryConfig(), clock=lambda: clock[0])
    history.open()
    reopen = time.perf_counter() - t0
    sample = rng.sample(names, min(200, len(names)))
    it = iter(sample * 10)
    figures = Figures(
        probes=probes,
        hours=hours,
        results=count,
        queue_cpu_us=1e6 * queue_cpu / measured,
        write_cpu_us=1e6 * write_cpu / measured,
        write_bytes=written / measured,
        db_bytes=db_bytes,
        raw_rows=sum(len(history.recent(n, limit=100_000)) for n in sample[:5]) * probes // min(5, probes),
        availability_all_ms=_median_ms(history.availability_all, 201),
        recent_ms=_median_ms(lambda: history.recent(next(it), 60), 201),
        changes_ms=_median_ms(lambda: history.changes(next(it), 50), 201),
        rollups_ms=_median_ms(lambda: history.rollups(next(it), "day", 30), 201),
        reopen_s=reopen,
    )
    history.close()
    return figures


@dataclass
class AgentFigures:
    history: bool
    cpu_share: float  # the agent process's CPU (all its threads, not the probe process) as a fraction of a core
    rss_mib: float
    written: int  # results in the history tables at the end


def agent_run(
    workdir: Path, probes: int, history: bool, window: float, say: Callable[[str], None] = print
) -> AgentFigures:
    """A real agent with `probes` SMTP probes every 60 s against a refused loopback port (cheap probes: what is
    measured is the agent's side of each result): its own CPU over `window` seconds of steady running."""
    with refused_port() as port:
        config = {
            "status_page": {"enabled": False},
            "history": {"enabled": history},
            "smtp": refused_smtp_probes(probes, port),
        }
        agent = AgentProcess(workdir, config)
        try:
            agent.start()
            time.sleep(65.0)  # one interval: every probe has run and the schedule is spread
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(window)
            cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
            rss = status_field(agent.pid, "VmRSS") / 1024
        finally:
            agent.stop()
    written = 0
    if history:
        with sqlite3.connect(workdir / "state" / "state.db") as conn:
            written = conn.execute("SELECT count(*) FROM history_result").fetchone()[0]
    figures = AgentFigures(history, (cpu1 - cpu0) / (t1 - t0), rss, written)
    say(f"  agent, history {'on' if history else 'off'}: {100 * figures.cpu_share:.2f} % of a core, {rss:.0f} MiB")
    return figures


def run(settings: Settings, peers: Peers, results: Results) -> None:
    """The bench/run.py section (`--only history`): 10,000 probes, 24 h simulated (2 h with --quick)."""
    hours = 2.0 if settings.quick else 24.0
    workdir = settings.workdir / "history"
    workdir.mkdir(parents=True, exist_ok=True)
    f = measure(10_000, hours, workdir, log)
    tag = f"10,000 probes at 60 s, {f.hours:g} h simulated"
    results.add(Row(SECTION, f"CPU per result, event loop (compact, queue), {tag}", f.queue_cpu_us, "µs"))
    results.add(Row(SECTION, f"disk writes per result (database and WAL), {tag}", f.write_bytes / 1024, "KiB"))
    results.add(Row(SECTION, f"CPU per result, writer thread (batch, rollups, retention), {tag}", f.write_cpu_us, "µs"))
    results.add(
        Row(
            SECTION,
            f"agent CPU added, {tag}",
            100 * f.agent_share,
            "% of one core",
            target="< 5 %",
            ok=f.agent_share < 0.05,
        )
    )
    results.add(Row(SECTION, f"state database size, {tag}", f.db_bytes / 2**20, "MiB", note=f"{f.raw_rows:,} raw rows"))
    results.add(Row(SECTION, f"availability_all(), {tag}", f.availability_all_ms, "ms"))
    results.add(Row(SECTION, f"recent(name, 60), {tag}", f.recent_ms, "ms"))
    results.add(Row(SECTION, f"changes(name, 50), {tag}", f.changes_ms, "ms"))
    results.add(Row(SECTION, f"rollups(name, day, 30), {tag}", f.rollups_ms, "ms"))
    results.add(Row(SECTION, f"restart: open() with the windows rebuilt, {tag}", f.reopen_s, "s"))
    window = 30.0 if settings.quick else 60.0
    off = agent_run(settings.workdir / "history-agent-off", 10_000, False, window, log)
    on = agent_run(settings.workdir / "history-agent-on", 10_000, True, window, log)
    tag = f"real agent, 10,000 refused probes at 60 s, {window:g} s window"
    added = on.cpu_share - off.cpu_share
    results.add(
        Row(
            SECTION,
            f"agent CPU, history off / on, {tag}",
            100 * on.cpu_share,
            "% of one core",
            note=f"off: {100 * off.cpu_share:.2f} %",
        )
    )
    results.add(
        Row(
            SECTION, f"agent CPU added by history, {tag}", 100 * added, "% of one core", target="< 5 %", ok=added < 0.05
        )
    )
    results.add(Row(SECTION, f"agent RSS, history on, {tag}", on.rss_mib, "MiB", note=f"off: {off.rss_mib:.0f} MiB"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/history.py", description=__doc__)
    parser.add_argument("--probes", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the database goes (default: a temp dir)")
    parser.add_argument(
        "--agent",
        type=float,
        default=0.0,
        help="also run a real agent, history off then on, "
        "measuring its CPU over this many seconds (each run: 65 s more)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        f = measure(args.probes, args.hours, workdir)
        print(
            f"probes {f.probes:,}, {f.hours:g} h simulated at 60 s: {f.results:,} results in "
            f"{time.monotonic() - started:.0f} s"
        )
        print(f"CPU per result: {f.queue_cpu_us:.2f} µs queueing (event loop), {f.write_cpu_us:.2f} µs writing")
        rate = f.write_bytes * f.probes / INTERVAL / 2**20
        print(f"disk writes per result: {f.write_bytes / 1024:.1f} KiB ({rate:.2f} MiB/s at {f.probes:,} probes)")
        print(f"agent CPU added at {f.probes:,} probes every 60 s: {100 * f.agent_share:.2f} % of one core")
        print(f"state database: {f.db_bytes / 2**20:.1f} MiB ({f.raw_rows:,} raw rows, estimated)")
        print(
            f"availability_all(): {f.availability_all_ms:.4f} ms; recent(60): {f.recent_ms:.3f} ms; "
            f"changes(50): {f.changes_ms:.3f} ms; rollups(day, 30): {f.rollups_ms:.3f} ms"
        )
        print(f"restart (open, windows rebuilt): {f.reopen_s:.2f} s")
        if args.agent:
            off = agent_run(workdir / "agent-off", args.probes, False, args.agent)
            on = agent_run(workdir / "agent-on", args.probes, True, args.agent)
            print(
                f"real agent ({args.probes:,} refused probes at 60 s, {args.agent:g} s): CPU "
                f"{100 * off.cpu_share:.2f} % of a core with history off, {100 * on.cpu_share:.2f} % on "
                f"({on.written:,} results written); RSS {off.rss_mib:.0f} / {on.rss_mib:.0f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
