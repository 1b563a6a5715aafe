"""Section delivery: CPU per delivery run, and 200 delivery probes beside the 10,000-probe scale load.

Both parts run the real agent (`python -m monitor run`: agent and probe process, CPU and RSS of both
from /proc). The mail peers (bench/mail_peers.py: an aiosmtpd submission server with STARTTLS and
AUTH, an IMAP server with IDLE and a SPECIAL-USE Junk folder, a POP3 server, all implicit TLS for
the mailbox) run in a process of their own and answer at once, so the CPU counted is the agent's.

1. CPU per delivery run: N delivery probes at a short interval, one variant per agent (mail filed at
   once over IMAP, after 5 s over IMAP, at once over POP3), CPU of the agent's process tree over a
   window divided by the messages the submission server accepted in it; an agent without probes
   gives the background.
2. Alongside the scale load: scale.py's SMTP probes (10,000, half STARTTLS, against the bench's
   Postfix, 60 s) with and without 200 delivery probes at 60 s whose mail lands after 2, 20, 28 or
   45 s (deliver_within 30 s: a quarter goes late and is found by the next run). max_concurrency
   is set below the number of delivery runs waiting at once: a delivery run that held a slot of the
   handshake probes would starve them, which the SMTP runs/s and skipped runs would show.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    AgentProcess,
    CpuWindow,
    MachineWindow,
    Results,
    Row,
    Settings,
    histogram,
    histogram_delta,
    histogram_quantile,
    http_get,
    log,
    metric_sum,
    on_exit,
    peak_rss_mib,
    rss_mib,
    rss_split,
    samples,
    stop_process,
)
from bench.mail_peers import HOST, SERVER_NAME, Stats
from bench.peers import Peers
from bench.scale import LATENESS, RSS_LIMIT_MIB, RSS_TARGET, first_run_seen, probe_mix

SECTION = "delivery"
IN_FLIGHT = "smtp_monitor_probes_in_flight"
GC_TRACE = Path(__file__).resolve().parent / "gc_trace"  # its sitecustomize.py logs collections


# -- the cyclic collector's pauses ------------------------------------------------------------------------


@contextlib.contextmanager
def gc_traced(directory: Path) -> Iterator[None]:
    """Python processes started inside (the agent, and the probe process it starts) log their full
    collections to `directory`, through bench/gc_trace/sitecustomize.py."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "BENCH_GC_TRACE_DIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GC_TRACE), saved["PYTHONPATH"]) if p)
    os.environ["BENCH_GC_TRACE_DIR"] = str(directory)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class GcPause:
    role: str  # "agent" or "probe process"
    at: float  # time.monotonic() at its end
    generation: int
    seconds: float
    cpu: float  # the collecting thread's CPU seconds
    collected: int


def gc_pauses(directory: Path, start: float, end: float) -> list[GcPause]:
    """Full collections that ended between `start` and `end` (time.monotonic())."""
    pauses = []
    for path in sorted(directory.glob("gc-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                raw = json.loads(line)
                pause = GcPause(
                    role=str(raw["role"]),
                    at=float(raw["at"]),
                    generation=int(raw["generation"]),
                    seconds=float(raw["seconds"]),
                    cpu=float(raw.get("cpu", math.nan)),
                    collected=int(raw["collected"]),
                )
            except (ValueError, KeyError, TypeError):
                continue
            if pause.generation == 2 and start <= pause.at <= end:
                pauses.append(pause)
    return pauses


def gc_summary(pauses: list[GcPause], role: str) -> str:
    mine = [p for p in pauses if p.role == role]
    if not mine:
        return f"{role}: no full collection"
    longest = max(mine, key=lambda p: p.seconds)
    total = sum(p.seconds for p in mine)
    cpu = sum(p.cpu for p in mine)
    freed = sum(p.collected for p in mine)
    return (
        f"{role}: {len(mine)} full collections, longest {1000 * longest.seconds:.0f} ms "
        f"({1000 * longest.cpu:.0f} ms CPU), {1000 * total:.0f} ms in all ({1000 * cpu:.0f} ms CPU), "
        f"{freed:,} objects freed"
    )


# -- the mail peers' process ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailPorts:
    submission: int
    imap: int
    pop3: int
    ca_file: Path
    password_file: Path  # the one password of every mailbox and of the submission login; never printed


class MailPeers:
    """`python -m bench.mail_peers` as a child of the bench (not of the agent: its CPU is not counted)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> MailPorts:
        with (self.workdir / "peers.log").open("ab") as err:
            self.proc = proc = subprocess.Popen(
                [sys.executable, "-m", "bench.mail_peers", "--workdir", str(self.workdir)],
                stdin=subprocess.PIPE,  # closed when the bench ends, however it ends: the peers stop
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO_ROOT,
            )
        on_exit(f"mail peers {proc.pid}", lambda: stop_process(proc, 5))
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the peers print their ports once listening
        if not line:
            raise RuntimeError(f"mail peers exited with {proc.wait(5)}; see {self.workdir / 'peers.log'}")
        ports = json.loads(line)
        return MailPorts(
            submission=int(ports["submission"]),
            imap=int(ports["imap"]),
            pop3=int(ports["pop3"]),
            ca_file=Path(ports["ca_file"]),
            password_file=Path(ports["password_file"]),
        )

    def stats(self) -> Stats:
        try:
            raw = json.loads((self.workdir / "stats.json").read_text())
        except (OSError, ValueError):
            return Stats()
        return Stats(**{f.name: raw[f.name] for f in fields(Stats) if f.name in raw})


def delivery_probe(
    name: str,
    ports: MailPorts,
    protocol: str,
    delay: int,
    interval: float,
    deliver_within: float,
) -> dict[str, Any]:
    """One delivery probe: submission on STARTTLS with AUTH, its own mailbox over implicit TLS, mail
    filed `delay` seconds after the 250 (the peers read the delay from the recipient's local part)."""
    user = f"w{delay}-{name}"
    secret = {"file": str(ports.password_file)}
    return {
        "name": name,
        "submit": {
            "host": HOST,
            "port": ports.submission,
            "tls": "starttls",
            "auth": {"username": "bench", "password": secret},
            "ca_file": str(ports.ca_file),
            "servername": SERVER_NAME,
            "helo": "bench.test",
        },
        "from": "probe@sender.bench.test",
        "to": f"{user}@bench.test",
        "mailbox": {
            "protocol": protocol,
            "host": HOST,
            "port": ports.imap if protocol == "imap" else ports.pop3,
            "tls": "implicit",
            "username": user,
            "password": secret,
            "ca_file": str(ports.ca_file),
            "servername": SERVER_NAME,
        },
        "interval": interval,
        "deliver_within": deliver_within,
        "lost_after": 3600,
    }


# -- what the agent reports ------------------------------------------------------------------------------


@dataclass
class DeliveryTotals:
    """Delivery probes' counters from one /metrics scrape, summed over the probes (or a window's difference)."""

    runs: float = 0.0
    failures: float = 0.0
    causes: dict[str, float] = field(default_factory=dict)  # "phase/reason" -> failed runs
    late: float = 0.0  # pending messages found by a later run
    lost: float = 0.0
    pending: float = 0.0  # a gauge: now, not a difference
    arrived: float = 0.0  # messages seen in the mailbox, in time or late
    latency_sum: float = 0.0

    @classmethod
    def scraped(cls, text: str) -> DeliveryTotals:
        causes: dict[str, float] = {}
        for _, labels, value in samples(text, ["delivery_probe_failures_total"]):
            key = f"{labels.get('phase', '')}/{labels.get('reason', '')}"
            causes[key] = causes.get(key, 0.0) + value
        return cls(
            runs=metric_sum(text, "delivery_probe_runs_total"),
            failures=sum(causes.values()),
            causes=causes,
            late=metric_sum(text, "delivery_probe_late_messages_total"),
            lost=metric_sum(text, "delivery_probe_lost_messages_total"),
            pending=metric_sum(text, "delivery_probe_pending_messages"),
            arrived=metric_sum(text, "delivery_probe_latency_seconds_count"),
            latency_sum=metric_sum(text, "delivery_probe_latency_seconds_sum"),
        )

    def since(self, before: DeliveryTotals) -> DeliveryTotals:
        causes = {k: v - before.causes.get(k, 0.0) for k, v in self.causes.items()}
        return DeliveryTotals(
            runs=self.runs - before.runs,
            failures=self.failures - before.failures,
            causes={k: v for k, v in causes.items() if v},
            late=self.late - before.late,
            lost=self.lost - before.lost,
            pending=self.pending,
            arrived=self.arrived - before.arrived,
            latency_sum=self.latency_sum - before.latency_sum,
        )

    @property
    def ok(self) -> float:
        return self.runs - self.failures

    def causes_text(self) -> str:
        return ", ".join(f"{cause} {n:.0f}" for cause, n in sorted(self.causes.items())) or "none"


# -- 1. CPU per delivery run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    label: str
    protocol: str  # "" for the agent without probes
    delay: int


def cpu_per_run(settings: Settings, mail: MailPeers, ports: MailPorts, results: Results) -> None:
    n = 20 if settings.quick else 60
    interval = 10.0
    window = 10.0 if settings.quick else 20.0
    variants = (
        Variant("no probes (the agent's background)", "", 0),
        Variant("IMAP, mail filed at once", "imap", 0),
        Variant("IMAP, mail filed after 5 s (IDLE; the Junk folder searched every 2 s)", "imap", 5),
        Variant("POP3, mail filed at once", "pop3", 0),
    )
    log(f"delivery: CPU per run, {n} delivery probes every {interval:g} s per variant, {window:g} s windows")
    background = math.nan
    for number, variant in enumerate(variants):
        probes = [
            delivery_probe(f"c{number}-{i:03d}", ports, variant.protocol, variant.delay, interval, 8.0)
            for i in range(n if variant.protocol else 0)
        ]
        workdir = settings.workdir / f"agent-delivery-cpu-{number}"
        shutil.rmtree(workdir / "state", ignore_errors=True)
        agent = AgentProcess(workdir, {"defaults": {"interval": interval}, "delivery": probes})
        try:
            agent.start()
            # every probe's first run falls within one interval of the start (spread by name)
            time.sleep(interval + variant.delay + 2.0 if variant.protocol else 3.0)
            # the scrapes stay outside the window: their CPU is not a delivery run's
            totals0 = DeliveryTotals.scraped(agent.metrics())
            cpu, machine = CpuWindow(agent.pid), MachineWindow()
            before = mail.stats()
            cpu.start()
            machine.start()
            time.sleep(window)
            cpu.stop()
            machine.stop()
            after = mail.stats()
            totals = DeliveryTotals.scraped(agent.metrics()).since(totals0)
            rss = rss_mib(agent.pid)
        finally:
            agent.stop()
        if not variant.protocol:
            background = cpu.cpu / cpu.wall
            results.add(
                Row(
                    SECTION,
                    f"CPU, {variant.label}",
                    100 * background,
                    "% of one core",
                    note=f"agent and probe process; RSS {rss:.0f} MiB",
                )
            )
            continue
        runs = totals.runs
        per_run = cpu.cpu / runs if runs else math.nan
        net = (cpu.cpu - background * cpu.wall) / runs if runs else math.nan
        results.add(
            Row(
                SECTION,
                f"CPU-s per delivery run, {variant.label}",
                per_run,
                "CPU-s",
                note=(
                    f"{runs:.0f} runs in {cpu.wall:.0f} s ({n} probes every {interval:g} s; "
                    f"{after.accepted - before.accepted} messages accepted), failed {totals.failures:.0f} "
                    f"({totals.causes_text()}); {cpu.cpu:.2f} CPU-s of agent and probe process, "
                    f"{net:.4f} per run without the background; RSS {rss:.0f} MiB; "
                    f"machine {machine.cores_busy:.2f} cores busy, {machine.others:.2f} not ours"
                ),
            )
        )


# -- 2. beside the scale load -----------------------------------------------------------------------------


@dataclass
class ScaleFigures:
    label: str
    smtp_rate: float = math.nan  # SMTP probe runs/s in the window
    smtp_expected: float = math.nan
    smtp_failed: float = 0.0
    skipped: float = 0.0
    p50: float = math.nan
    p99: float = math.nan
    observed: float = 0.0
    cores: float = math.nan
    rss: float = math.nan
    peak: float = math.nan
    split: str = ""
    limit: int = 0  # max_concurrency
    in_flight_max: float = 0.0  # smtp_monitor_probes_in_flight at the scrapes (both kinds)
    in_flight_median: float = math.nan
    sessions_mean: float = 0.0  # delivery runs in flight (IMAP sessions open at the peers), mean over the window
    sessions_peak: int = 0
    idle_mean: float = 0.0
    window: DeliveryTotals = field(default_factory=DeliveryTotals)  # delivery runs within the window
    accepted: int = 0
    machine: str = ""
    wall: float = 0.0
    smtp_duration_median: float = math.nan  # each SMTP probe's last run, at the end of the window
    smtp_duration_p99: float = math.nan
    gc: list[GcPause] = field(default_factory=list)  # full collections in the window


class StatsSampler:
    """The peers' open sessions every 0.5 s during a window: the peak the window saw."""

    def __init__(self, mail: MailPeers) -> None:
        self.mail = mail
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.mail.stats().imap_now)

    def __enter__(self) -> StatsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def beside_scale(
    settings: Settings,
    peers: Peers,
    mail: MailPeers,
    ports: MailPorts,
    with_delivery: bool,
) -> ScaleFigures:
    postfix = peers.postfix
    n = 2_000 if settings.quick else 10_000
    deliveries = 50 if settings.quick else 200
    interval = 60.0
    settle = 15.0 if settings.quick else 30.0
    window = 40.0 if settings.quick else 60.0
    scrape_every = 10.0
    delays = (2, 20, 28, 45)  # deliver_within 30 s: the 45 s quarter goes late, the next run finds it
    # Below the delivery runs waiting at once (a mean wait of 20 s: a third of them): were they holding
    # slots, the SMTP probes would starve. The SMTP probes alone need a few.
    limit = deliveries // 5
    config: dict[str, Any] = {
        "defaults": {"interval": interval, "timeout": "10s", "max_concurrency": limit, "helo": "bench.test"},
        "smtp": probe_mix(n, postfix.plain_port, postfix.ca_file),
    }
    if with_delivery:
        config["delivery"] = [
            delivery_probe(f"d-{i:03d}", ports, "imap", delays[i % len(delays)], interval, 30.0)
            for i in range(deliveries)
        ]
    label = f"{n:,} SMTP probes" + (f" + {deliveries} delivery probes" if with_delivery else "")
    log(f"delivery: {label}, every {interval:g} s, max_concurrency {limit}")
    figures = ScaleFigures(label, limit=limit)
    workdir = settings.workdir / ("agent-delivery-scale" if with_delivery else "agent-delivery-scale-alone")
    shutil.rmtree(workdir / "state", ignore_errors=True)
    trace = workdir / "gc"
    shutil.rmtree(trace, ignore_errors=True)
    agent = AgentProcess(workdir, config)
    try:
        with gc_traced(trace):
            agent.start()
        first = first_run_seen(agent, timeout=120.0)
        time.sleep(max(0.0, first + settle - time.monotonic()))
        text0 = agent.metrics(timeout=60)
        stats0 = mail.stats()
        cpu, machine, peers_cpu = CpuWindow(agent.pid), MachineWindow(), CpuWindow(mail.pid)
        cpu.start()
        machine.start()
        peers_cpu.start()
        in_flight: list[float] = []
        end = time.monotonic() + window
        with StatsSampler(mail) as sampler:
            while time.monotonic() < end:
                time.sleep(min(scrape_every, max(0.0, end - time.monotonic())))
                status, body, _ = http_get(agent.url + "/metrics", timeout=60)
                if status == 200:
                    in_flight += [v for _, _, v in samples(body.decode(), [IN_FLIGHT])]
        cpu.stop()
        machine.stop()
        peers_cpu.stop()
        stats1 = mail.stats()
        text1 = agent.metrics(timeout=60)
        durations = sorted(v for _, _, v in samples(text1, ["smtp_probe_duration_seconds"]))
        if durations:
            figures.smtp_duration_median = statistics.median(durations)
            figures.smtp_duration_p99 = durations[int(0.99 * (len(durations) - 1))]
        lateness = histogram_delta(histogram(text0, LATENESS), histogram(text1, LATENESS))
        figures.p50 = histogram_quantile(0.5, lateness)
        figures.p99 = histogram_quantile(0.99, lateness)
        figures.observed = lateness[-1][1] if lateness else 0
        figures.smtp_rate = (
            metric_sum(text1, "smtp_probe_runs_total") - metric_sum(text0, "smtp_probe_runs_total")
        ) / cpu.wall
        figures.smtp_expected = n / interval
        figures.smtp_failed = metric_sum(text1, "smtp_probe_failures_total") - metric_sum(
            text0, "smtp_probe_failures_total"
        )
        figures.skipped = metric_sum(text1, "smtp_monitor_scheduler_skipped_runs_total") - metric_sum(
            text0, "smtp_monitor_scheduler_skipped_runs_total"
        )
        figures.cores = cpu.cpu / cpu.wall
        figures.wall = cpu.wall
        figures.rss, figures.peak, figures.split = rss_mib(agent.pid), peak_rss_mib(agent.pid), rss_split(agent.pid)
        figures.in_flight_max = max(in_flight, default=0.0)
        figures.in_flight_median = statistics.median(in_flight) if in_flight else math.nan
        wall = stats1.at - stats0.at if stats1.at > stats0.at else cpu.wall
        figures.sessions_mean = (stats1.imap_seconds - stats0.imap_seconds) / wall
        figures.idle_mean = (stats1.idle_seconds - stats0.idle_seconds) / wall
        figures.sessions_peak = sampler.peak
        figures.accepted = stats1.accepted - stats0.accepted
        figures.machine = (
            f"machine {machine.cores_busy:.2f} cores busy, {machine.others:.2f} not ours; "
            f"the mail peers {100 * peers_cpu.cpu / peers_cpu.wall:.0f} % of one core"
        )
        figures.gc = gc_pauses(trace, cpu.wall0, cpu.wall1)
        figures.window = DeliveryTotals.scraped(text1).since(DeliveryTotals.scraped(text0))
    finally:
        agent.stop()
    return figures


def _scale_rows(results: Results, figures: ScaleFigures, with_delivery: bool) -> None:
    tag = "with delivery" if with_delivery else "without delivery"
    results.add(
        Row(
            SECTION,
            f"SMTP probe runs/s, {figures.label}",
            figures.smtp_rate,
            "/s",
            figures.smtp_expected,
            "configured rate",
            "≥ 0.95x",
            figures.smtp_rate >= 0.95 * figures.smtp_expected,
            f"failed {figures.smtp_failed:.0f}, skipped {figures.skipped:.0f}; probes in flight at the scrapes "
            f"median {figures.in_flight_median:.0f}, max {figures.in_flight_max:.0f} "
            f"(max_concurrency {figures.limit}); "
            f"SMTP probe duration (each probe's last run) median {1000 * figures.smtp_duration_median:.1f} ms, "
            f"p99 {1000 * figures.smtp_duration_p99:.0f} ms",
        )
    )
    results.add(
        Row(SECTION, f"scheduler lateness p50, {tag}", 1000 * figures.p50, "ms", note=f"{figures.observed:.0f} runs")
    )
    p99 = 1000 * figures.p99
    pauses = "; ".join(gc_summary(figures.gc, role) for role in ("probe process", "agent"))
    results.add(
        Row(
            SECTION,
            f"scheduler lateness p99, {tag}",
            p99,
            "ms",
            target="< 250 ms",
            ok=figures.p99 < 0.25,
            note=f"in the window: {pauses}",
        )
    )
    results.add(
        Row(
            SECTION,
            f"agent CPU, {tag}",
            100 * figures.cores,
            "% of one core",
            target="< 100 %",
            ok=figures.cores < 1.0,
            note=figures.machine,
        )
    )
    results.add(
        Row(
            SECTION,
            f"agent RSS (peak), {tag}",
            figures.rss,
            "MiB",
            target=RSS_TARGET,
            ok=figures.peak < RSS_LIMIT_MIB,
            note=f"peak {figures.peak:.0f} MiB; {figures.split}",
        )
    )
    if not with_delivery:
        return
    done = figures.window
    mean_latency = done.latency_sum / done.arrived if done.arrived else math.nan
    results.add(
        Row(
            SECTION,
            "delivery runs ok in the window, beside the scale load",
            done.ok,
            "runs",
            note=(
                f"of {done.runs:.0f} runs ended in {figures.wall:.0f} s; failed: {done.causes_text()} (the quarter "
                f"whose mail comes after 45 s is late by design); messages found late by a later run "
                f"{done.late:.0f}, lost {done.lost:.0f}, pending at the end {done.pending:.0f}; {done.arrived:.0f} "
                f"arrived, mean latency {mean_latency:.1f} s; {figures.accepted} messages submitted"
            ),
        )
    )
    results.add(
        Row(
            SECTION,
            "delivery runs in flight beside the scale load, mean over the window",
            figures.sessions_mean,
            "runs",
            target=f"> max_concurrency {figures.limit} while SMTP probes run",
            # Holding slots, more than max_concurrency waiting runs would leave the SMTP probes none.
            ok=figures.sessions_mean > figures.limit and figures.smtp_rate >= 0.5 * figures.smtp_expected,
            note=(
                f"IMAP sessions open at the mail peers (one per delivery run): peak {figures.sessions_peak}, "
                f"in IDLE {figures.idle_mean:.0f} on average; were they holding max_concurrency slots, "
                "the SMTP probes could not run"
            ),
        )
    )


def run(settings: Settings, peers: Peers, results: Results) -> None:
    mail = MailPeers(settings.workdir / "mail-peers")
    ports = mail.start()
    log(f"mail peers: submission {ports.submission}, IMAP {ports.imap}, POP3 {ports.pop3}")
    cpu_per_run(settings, mail, ports, results)
    alone = beside_scale(settings, peers, mail, ports, with_delivery=False)
    _scale_rows(results, alone, with_delivery=False)
    beside = beside_scale(settings, peers, mail, ports, with_delivery=True)
    _scale_rows(results, beside, with_delivery=True)
    results.note(
        "delivery: mail peers are bench/mail_peers.py (aiosmtpd submission with STARTTLS and AUTH, IMAP with "
        "IDLE/UIDPLUS/SPECIAL-USE Junk and POP3 on implicit TLS, in-memory mailboxes) in their own process; "
        "the scale load is scale.py's probe mix, with max_concurrency a fifth of the delivery probes and SNMP off"
    )
