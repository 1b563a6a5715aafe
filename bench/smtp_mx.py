"""Sections smtp and mx: the agent's probes against blackbox_exporter's at the same rate and concurrency."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import profile
from bench.blackbox import BlackboxExporter, drive
from bench.common import (
    REPO_ROOT,
    AgentProcess,
    CpuWindow,
    MachineWindow,
    Results,
    Row,
    Settings,
    log,
    metric_sum,
    peak_rss_mib,
    smtp_probe,
)
from bench.peers import Peers
from tests.support.ports import HOST

CONCURRENCY = 50  # the agent's max_concurrency and the blackbox client's in-flight bound
BLACKBOX_STARTTLS_ANCHOR = 2.4  # CPU-s per 1,000 STARTTLS probes measured before (issue 5)
ROUNDS = 3  # agent/blackbox pairs per SMTP and MX figure in a full run


@dataclass
class Measured:
    """One system's run over a steady window."""

    who: str
    probes: int
    failed: int
    seconds: float
    cpu: float
    peak_rss: float
    machine_cores: float
    others: float

    @classmethod
    def pooled(cls, passes: list[Measured]) -> Measured:
        """Several passes as one: counts and CPU summed, the highest peak RSS, mean machine load."""
        return cls(
            passes[0].who,
            sum(p.probes for p in passes),
            sum(p.failed for p in passes),
            sum(p.seconds for p in passes),
            sum(p.cpu for p in passes),
            max(p.peak_rss for p in passes),
            sum(p.machine_cores for p in passes) / len(passes),
            max(p.others for p in passes),
        )

    @property
    def rate(self) -> float:
        return self.probes / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_1000(self) -> float | None:
        return 1000 * self.cpu / self.probes if self.probes else None

    def line(self) -> str:
        return (
            f"{self.who}: {self.probes} ok + {self.failed} failed in {self.seconds:.1f} s "
            f"= {self.rate:.1f}/s, {self.cpu:.2f} CPU-s, peak RSS {self.peak_rss:.1f} MiB, "
            f"machine {self.machine_cores:.2f} cores busy ({self.others:.2f} not ours)"
        )


def measure_agent(
    workdir: Path,
    config: dict[str, Any],
    kind: str,
    warmup: float,
    window: float,
    profile_out: Path | None = None,
) -> Measured:
    """Start the agent on `config`, let it settle `warmup` s, count runs and CPU over `window` s."""
    runs_metric, failures_metric = f"{kind}_runs_total", f"{kind}_failures_total"
    agent = AgentProcess(workdir, config)
    try:
        agent.start()
        time.sleep(warmup)
        text0 = agent.metrics()
        cpu, machine = CpuWindow(agent.pid), MachineWindow()
        cpu.start()
        machine.start()
        time.sleep(window)
        cpu.stop()
        machine.stop()
        text1 = agent.metrics()
        runs = metric_sum(text1, runs_metric) - metric_sum(text0, runs_metric)
        failed = metric_sum(text1, failures_metric) - metric_sum(text0, failures_metric)
        if failed:
            reasons = {k: v for k, v in _by_reason(text1, failures_metric).items() if v}
            log(f"  agent failures by (phase, reason) so far: {reasons}")
        measured = Measured(
            "agent",
            int(runs - failed),
            int(failed),
            cpu.wall,
            cpu.cpu,
            peak_rss_mib(agent.pid),
            machine.cores_busy,
            machine.others,
        )
        log("  " + measured.line())
        if profile_out is not None:
            summary = profile.profile_to_file(agent.pid, min(window, 20), profile_out)
            log(f"  profile of the agent ({profile_out.name}):\n{summary}")
        return measured
    finally:
        agent.stop()


def _by_reason(text: str, name: str) -> dict[tuple[str, str], float]:
    from bench.common import samples

    out: dict[tuple[str, str], float] = {}
    for _, labels, value in samples(text, [name]):
        key = (labels.get("phase", ""), labels.get("reason", ""))
        out[key] = out.get(key, 0.0) + value
    return out


def measure_blackbox(bb: BlackboxExporter, url: str, rate: float, warmup: float, window: float) -> Measured:
    """Drive blackbox's /probe at `rate`/s for warmup + window; count completions in the window."""
    cpu, machine = CpuWindow(bb.pid), MachineWindow()

    def begin() -> None:
        cpu.start()
        machine.start()

    def end() -> None:
        cpu.stop()
        machine.stop()

    marks = [(warmup, begin), (warmup + window, end)]
    result = asyncio.run(drive(url, rate, CONCURRENCY, warmup + window + 0.2, marks))
    ok, failed = result.count(cpu.wall0, cpu.wall1)
    measured = Measured(
        "blackbox", ok, failed, cpu.wall, cpu.cpu, peak_rss_mib(bb.pid), machine.cores_busy, machine.others
    )
    log("  " + measured.line() + f" (max send lag {result.max_send_lag:.2f} s)")
    return measured


def _rows(
    results: Results, section: str, label: str, a: Measured, b: Measured, rate_text: str, cpu_target: str = "≤ 1.0x"
) -> None:
    ratio_ok = a.rate >= 0.99 * b.rate
    results.add(
        Row(
            section,
            f"{label} probes/s ({rate_text})",
            a.rate,
            "/s",
            b.rate,
            "blackbox",
            "≥ 1.0x",
            ratio_ok,
            f"failed: agent {a.failed}, blackbox {b.failed}",
        )
    )
    a_cpu, b_cpu = a.cpu_per_1000, b.cpu_per_1000
    results.add(
        Row(
            section,
            f"{label} CPU-s per 1,000 probes ({rate_text})",
            a_cpu,
            "CPU-s",
            b_cpu,
            "blackbox",
            cpu_target,
            None if a_cpu is None or b_cpu is None else a_cpu <= b_cpu,
        )
    )
    results.add(Row(section, f"{label} peak RSS ({rate_text})", a.peak_rss, "MiB", b.peak_rss, "blackbox"))


def smtp(settings: Settings, peers: Peers, results: Results) -> None:
    """N STARTTLS then N implicit-TLS probes: agent vs blackbox, paced, then offered 4x (full run)."""
    postfix = peers.postfix
    n, interval = 100, 2.0  # 50 probes/s: Postfix's TLS side costs about as much CPU as the client's
    warmup, window = (interval + 2.0, 10.0) if settings.quick else (interval + 4.0, 20.0)
    rounds = 1 if settings.quick else ROUNDS
    rate = n / interval
    passes = [(rate, interval, "paced")]
    if not settings.quick:
        passes.append((rate * 4, interval / 4, "offered 4x"))
    for mode, port, module in (
        ("starttls", postfix.plain_port, "smtp_starttls"),
        ("implicit", postfix.implicit_port, "smtp_implicit"),
    ):
        label = "STARTTLS" if mode == "starttls" else "implicit TLS"
        for offered, every, name in passes:
            rate_text = f"{name} {offered:.0f}/s, ≤{CONCURRENCY} in flight"
            log(f"smtp: {label}, {n} probes every {every:g} s ({rate_text}), {rounds} rounds")
            probes = [smtp_probe(f"{mode}-{i:04d}", port, mode, postfix.ca_file) for i in range(n)]
            config = {
                "defaults": {"interval": every, "timeout": "10s", "max_concurrency": CONCURRENCY, "helo": "bench.test"},
                "smtp": probes,
            }
            target = f"{HOST}:{port}"
            profile_out = (
                settings.results_dir / f"profile-smtp-{mode}" if settings.profile and name == "paced" else None
            )
            agent_pass = functools.partial(
                _agent_pass,
                settings.workdir / f"agent-smtp-{mode}-{name[:6]}",
                config,
                "smtp_probe",
                warmup,
                window,
                profile_out,
            )
            blackbox_pass = functools.partial(
                _blackbox_pass,
                settings.workdir / "blackbox-smtp",
                postfix.ca_file,
                module,
                target,
                offered,
                warmup,
                window,
            )
            a, b = paired_rounds(rounds, agent_pass, blackbox_pass, results, f"smtp: {label} ({rate_text})")
            _rows(results, "smtp", label, a, b, rate_text)
            if name == "paced":
                _floor(results, mode, label, port, postfix.ca_file, offered, warmup + window, b, rate_text)
                if mode == "implicit":
                    _openssl_handshakes(results, port, postfix.ca_file, b)
    results.note(
        "smtp, mx: 'agent' figures cover the agent's process tree (the agent process and its probe "
        "process): CPU from /proc/PID/stat utime+stime of each, peak RSS as the sum of each one's VmHWM."
    )
    results.note(
        f"smtp: blackbox STARTTLS CPU per 1,000 probes measured before: {BLACKBOX_STARTTLS_ANCHOR} CPU-s "
        "(issue 5); the table's anchor is this run's."
    )


def _agent_pass(
    workdir: Path, config: dict[str, Any], kind: str, warmup: float, window: float, profile_out: Path | None, i: int
) -> Measured:
    """One agent pass; only the first round is profiled."""
    return measure_agent(workdir, config, kind, warmup, window, profile_out if i == 0 else None)


def _blackbox_pass(
    workdir: Path, ca_file: Path, module: str, target: str, rate: float, warmup: float, window: float, i: int
) -> Measured:
    """One blackbox pass on a fresh exporter: its peak RSS then belongs to that pass alone."""
    bb = BlackboxExporter(workdir, ca_file)
    try:
        bb.start()
        bb.check(module, target)
        return measure_blackbox(bb, f"{bb.url}/probe?module={module}&target={target}", rate, warmup, window)
    finally:
        bb.stop()


def paired_rounds(
    rounds: int,
    agent_pass: Callable[[int], Measured],
    blackbox_pass: Callable[[int], Measured],
    results: Results,
    what: str,
) -> tuple[Measured, Measured]:
    """Agent and blackbox passes taking turns first, pooled; each round's CPU ratio goes in a note.

    CPU on a shared machine drifts by 10-25 % over minutes: one agent pass followed by one
    blackbox pass puts that drift into the ratio, alternating the order spreads it over both."""
    agents: list[Measured] = []
    blackboxes: list[Measured] = []
    for i in range(rounds):
        if i % 2 == 0:
            agents.append(agent_pass(i))
            blackboxes.append(blackbox_pass(i))
        else:
            blackboxes.append(blackbox_pass(i))
            agents.append(agent_pass(i))
    if rounds > 1:
        ratios = [_cpu_ratio(a, b) for a, b in zip(agents, blackboxes, strict=True)]
        results.note(f"{what}: CPU ratio per round " + ", ".join(ratios))
        how = (
            f"smtp, mx: each figure pools {rounds} rounds, the agent and blackbox taking turns first "
            "(agent-blackbox, blackbox-agent, ...): a machine that drifts faster or slower during a pass "
            "weighs on both sides alike. CPU per 1,000 is total CPU over total probes of all rounds; "
            "peak RSS the highest of the rounds."
        )
        if how not in results.notes:
            results.note(how)
    return Measured.pooled(agents), Measured.pooled(blackboxes)


def _cpu_ratio(a: Measured, b: Measured) -> str:
    if a.cpu_per_1000 is None or not b.cpu_per_1000:
        return "n/a"
    return f"{a.cpu_per_1000 / b.cpu_per_1000:.2f}x ({a.cpu_per_1000:.2f}/{b.cpu_per_1000:.2f})"


def _floor(
    results: Results,
    mode: str,
    label: str,
    port: int,
    ca_file: Path,
    rate: float,
    seconds: float,
    b: Measured,
    rate_text: str,
) -> None:
    """The bare dialogue in Python at the same pace: how much of the agent's CPU is its own structure."""
    argv = [sys.executable, "-m", "bench.bare_starttls", str(port), str(ca_file), "mail.test", str(rate), str(seconds)]
    if mode == "implicit":
        argv.append("implicit")
    log(f"smtp: bare Python {label} dialogue (bench/bare_starttls.py), {rate_text}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False, cwd=REPO_ROOT)
    if proc.returncode != 0:
        results.note(f"smtp: bare {label} floor failed: {proc.stderr.strip()[-300:]}")
        return
    floor = json.loads(proc.stdout)
    per_1000 = 1000 * floor["cpu"] / floor["probes"] if floor["probes"] else None
    log(f"  bare dialogue: {floor}")
    results.add(
        Row(
            "smtp",
            f"bare Python {label} dialogue, no timeouts/timings/results: CPU-s per 1,000 ({rate_text})",
            per_1000,
            "CPU-s",
            b.cpu_per_1000,
            "blackbox",
            note=f"{floor['probes']} probes, {floor['failed']} failed; the floor of a Python prober, not a target",
        )
    )


def _openssl_handshakes(results: Results, port: int, ca_file: Path, b: Measured, seconds: int = 10) -> None:
    """OpenSSL's own C client (`openssl s_time -new`): CPU per verified full handshake, nothing else.

    What the handshake alone costs with the OpenSSL that Python's ssl module uses, next to
    blackbox's (Go's crypto/tls) whole implicit-TLS probe."""
    argv = [
        "openssl",
        "s_time",
        "-connect",
        f"{HOST}:{port}",
        "-new",
        "-time",
        str(seconds),
        "-CAfile",
        str(ca_file),
        "-verify",
        "2",
    ]
    log(f"smtp: OpenSSL C client, full handshakes only: {' '.join(argv)}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = re.search(r"^(\d+) connections in [\d.]+ real seconds", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or found is None or int(found.group(1)) == 0:
        results.note(f"smtp: openssl s_time failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        return
    handshakes = int(found.group(1))
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    log(f"  openssl s_time: {handshakes} handshakes, {cpu:.2f} CPU-s")
    results.add(
        Row(
            "smtp",
            "OpenSSL C client (openssl s_time -new), verified full TLS handshakes only: CPU-s per 1,000",
            1000 * cpu / handshakes,
            "CPU-s",
            b.cpu_per_1000,
            "blackbox implicit TLS, whole probe",
            note=f"{handshakes} handshakes in {seconds} s back to back; no SMTP dialogue; not a target",
        )
    )


def mx(settings: Settings, peers: Peers, results: Results) -> None:
    """M MX checks of good.test against NSD: agent vs blackbox's dns prober (MX query only)."""
    nsd = peers.nsd
    m, interval = 100, 1.0
    warmup, window = (interval + 2.0, 10.0) if settings.quick else (interval + 4.0, 20.0)
    rounds = 1 if settings.quick else ROUNDS
    rate = m / interval
    rate_text = f"paced {rate:.0f}/s, ≤{CONCURRENCY} in flight"
    log(f"mx: {m} checks of good.test every {interval:g} s ({rate_text}), {rounds} rounds")
    config = {
        "defaults": {"interval": interval, "timeout": "5s", "max_concurrency": CONCURRENCY},
        "dns": {"nameservers": [f"{HOST}:{nsd.port}"], "timeout": "5s"},
        "mx": [{"name": f"mx-{i:04d}", "domain": "good.test"} for i in range(m)],
    }
    prof = settings.results_dir / "profile-mx" if settings.profile else None
    ca_unused = settings.workdir / "none.pem"
    ca_unused.touch()
    agent_pass = functools.partial(_agent_pass, settings.workdir / "agent-mx", config, "mx_check", warmup, window, prof)
    blackbox_pass = functools.partial(
        _blackbox_pass,
        settings.workdir / "blackbox-mx",
        ca_unused,
        "dns_mx",
        f"{HOST}:{nsd.port}",
        rate,
        warmup,
        window,
    )
    a, b = paired_rounds(rounds, agent_pass, blackbox_pass, results, f"mx: MX check ({rate_text})")
    _rows(results, "mx", "MX check", a, b, rate_text)
    results.note(
        "mx: an agent MX check of good.test is 5 DNS queries (MX, then A and AAAA of both exchanges); "
        "blackbox's dns prober sends the MX query only. Per DNS query the agent's CPU is "
        f"{_per_query(a)} CPU-s per 1,000 queries."
    )


def _per_query(a: Measured) -> str:
    value = a.cpu_per_1000
    return "n/a" if value is None else f"{value / 5:.2f}"
