"""Section scale: 10,000 probes at a 60 s interval: lateness, CPU, RSS, scrape, SNMP walk, startup and restart."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import statistics
import threading
import time
from typing import Any

from bench import profile, snmp_tools
from bench.common import (
    AgentProcess,
    CpuWindow,
    MachineWindow,
    Results,
    Row,
    Settings,
    cpu_seconds,
    histogram,
    histogram_delta,
    histogram_quantile,
    http_get,
    log,
    metric_sum,
    peak_rss_mib,
    rss_mib,
    rss_split,
    smtp_probe,
)
from bench.peers import Peers
from monitor.exporters.snmp import mib_oids
from monitor.state.history import COMPACT_INTERVAL
from tests.support.ports import free_udp_port

LATENESS = "smtp_monitor_scheduler_lateness_seconds"


RSS_LIMIT_MIB = 300e6 / 2**20  # issue 5: RSS < 300 MB, i.e. 286 MiB
RSS_TARGET = "< 300 MB (286 MiB)"


def probe_name(prefix: str, i: int) -> str:
    """The name of probe_mix's probe `i`: its row index in the MIB."""
    return f"{prefix}-{i:05d}"


def probe_mix(n: int, port: int, ca_file: Any, prefix: str = "s", **extra: Any) -> list[dict[str, Any]]:
    """n probes against one Postfix port, alternating STARTTLS and plain."""
    return [
        smtp_probe(probe_name(prefix, i), port, "starttls" if i % 2 == 0 else "none", ca_file, **extra)
        for i in range(n)
    ]


def first_run_seen(agent: AgentProcess, timeout: float) -> float:
    """Monotonic time when the agent's state database first holds a run (the probe process may start
    scheduling well after /-/ready with a big config); now, if there is no database or none in time."""
    db = agent.workdir / "state" / "state.db"
    end = time.monotonic() + timeout
    while time.monotonic() < end and db.is_file():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                if conn.execute("SELECT count(*) FROM probe_state WHERE runs > 0").fetchone()[0]:
                    break
        except sqlite3.Error:
            pass  # not created yet
        time.sleep(1.0)
    return time.monotonic()


def enterprise_oid() -> str:
    return snmp_tools.dotted(mib_oids.MIB_ROOT)


def run(settings: Settings, peers: Peers, results: Results) -> None:
    postfix = peers.postfix
    n = 2_000 if settings.quick else 10_000
    interval = 60.0
    window = 20.0 if settings.quick else 60.0
    scrape_every = 10.0
    snmp_port = free_udp_port()
    config: dict[str, Any] = {
        "defaults": {"interval": interval, "timeout": "10s", "max_concurrency": 500, "helo": "bench.test"},
        "smtp": probe_mix(n, postfix.plain_port, postfix.ca_file),
    }
    config["snmp"] = snmp_tools.agent_snmp_config(snmp_port)
    section = f"scale {n:,}"
    log(f"scale: {n} probes (half STARTTLS, half plain) every {interval:g} s, SNMP on")
    workdir = settings.workdir / "agent-scale"
    # A fresh start: a state database left by an earlier run would be read (and its states
    # dropped, the Postfix port differs), which is neither a fresh start nor a restart.
    shutil.rmtree(workdir / "state", ignore_errors=True)
    agent = AgentProcess(workdir, config)
    try:
        _startup_rows(results, section, "startup", agent, snmp_port)
        # one full interval: every probe has run once, the spread of first runs is behind us
        first = first_run_seen(agent, timeout=120.0)
        log(f"scale: first probe results saved {first - agent.started_at:.1f} s after spawn")
        settle = first + interval + 5.0 - time.monotonic()
        log(f"scale: settling {settle:.0f} s (one interval after the first runs)")
        time.sleep(max(0.0, settle))
        cold_started = time.monotonic()
        text0 = agent.metrics(timeout=60)  # the first scrape formats every probe: timed on its own
        cold = time.monotonic() - cold_started
        results.add(
            Row(
                section,
                "first /metrics scrape after start",
                cold,
                "s",
                target="< 1 s",
                ok=cold < 1.0,
                note="every probe's lines formatted once",
            )
        )
        cpu, machine = CpuWindow(agent.pid), MachineWindow()
        cpu.start()
        machine.start()
        scrapes: list[tuple[float, int]] = []
        end = time.monotonic() + window
        profiler = None
        if settings.profile:
            # py-spy samples the agent during the window: a little CPU of its own on the machine
            profiler = threading.Thread(
                target=profile.profile_to_file,
                args=(agent.pid, min(window, 30.0), settings.results_dir / "profile-scale"),
                daemon=True,
            )
            profiler.start()
        while time.monotonic() < end:
            time.sleep(min(scrape_every, max(0.0, end - time.monotonic())))
            status, body, seconds = http_get(agent.url + "/metrics", timeout=60)
            if status == 200:
                scrapes.append((seconds, len(body)))
        cpu.stop()
        machine.stop()
        if profiler is not None:
            profiler.join(120)
        text1 = agent.metrics(timeout=60)
        lateness = histogram_delta(histogram(text0, LATENESS), histogram(text1, LATENESS))
        p50 = histogram_quantile(0.5, lateness)
        p99 = histogram_quantile(0.99, lateness)
        observed = lateness[-1][1] if lateness else 0
        runs = metric_sum(text1, "smtp_probe_runs_total") - metric_sum(text0, "smtp_probe_runs_total")
        failed = metric_sum(text1, "smtp_probe_failures_total") - metric_sum(text0, "smtp_probe_failures_total")
        skipped = metric_sum(text1, "smtp_monitor_scheduler_skipped_runs_total") - metric_sum(
            text0, "smtp_monitor_scheduler_skipped_runs_total"
        )
        expected = n * cpu.wall / interval
        results.add(
            Row(
                section,
                "probe runs/s in window",
                runs / cpu.wall,
                "/s",
                expected / cpu.wall,
                "configured rate",
                "≥ 0.95x",
                runs >= 0.95 * expected,
                f"failed {failed:.0f}, skipped {skipped:.0f}",
            )
        )
        results.add(Row(section, "scheduler lateness p50", 1000 * p50, "ms", note=f"{observed:.0f} runs"))
        results.add(Row(section, "scheduler lateness p99", 1000 * p99, "ms", target="< 250 ms", ok=p99 < 0.25))
        cores = cpu.cpu / cpu.wall
        results.add(
            Row(
                section,
                "agent CPU",
                100 * cores,
                "% of one core",
                target="< 100 %",
                ok=cores < 1.0,
                note=f"machine {machine.cores_busy:.2f} cores busy, {machine.others:.2f} not ours",
            )
        )
        rss, peak = rss_mib(agent.pid), peak_rss_mib(agent.pid)
        results.add(
            Row(
                section,
                "agent RSS (peak)",
                rss,
                "MiB",
                target=RSS_TARGET,
                ok=peak < RSS_LIMIT_MIB,
                note=f"peak {peak:.0f} MiB; {rss_split(agent.pid)}",
            )
        )
        if scrapes:
            times = [s for s, _ in scrapes]
            size = statistics.median(b for _, b in scrapes)
            worst = max(times)
            results.add(
                Row(
                    section,
                    "/metrics scrape time (median)",
                    statistics.median(times),
                    "s",
                    target="< 1 s",
                    ok=worst < 1.0,
                    note=f"max {worst:.2f} s over {len(times)} scrapes",
                )
            )
            results.add(Row(section, "/metrics scrape size", size / 1e6, "MB"))
        limit = 15.0 if settings.quick else 120.0
        # (label, seconds to wait before, what the walk meets); a poller walking every few minutes
        # finds every row replaced since its last walk: the common case is the third. The startup
        # GET polled the agent, so its warmer has kept the cells encoded since.
        walks = (
            ("full SNMP walk (v2c, -Cr50)", 0.0, "; the first walk, cells encoded ahead by the warmer"),
            ("full SNMP walk again", 0.0, "; right after the first"),
            (
                "full SNMP walk one interval later",
                0.0 if settings.quick else interval,
                "; every row ran since, its changed cells encoded by the warmer as results came",
            ),
        )
        for label, wait, why in walks:
            time.sleep(wait)
            before = rss_mib(agent.pid)
            log(f"scale: {label} of {enterprise_oid()} (at most {limit:.0f} s)")
            agent_cpu0 = cpu_seconds(agent.pid)  # the agent process alone: the probe process keeps probing
            walk = snmp_tools.bulk_walk(snmp_port, "v2c", enterprise_oid(), limit)
            agent_cpu = cpu_seconds(agent.pid) - agent_cpu0
            note = (
                f"{walk.values:,} values, {walk.rate:,.0f} values/s; CPU-s: snmpbulkwalk {walk.client_cpu:.2f}, "
                f"agent process {agent_cpu:.2f}"
                + why
                + f"; RSS {before:.0f} MiB before it, {rss_mib(agent.pid):.0f} MiB after"
            )
            if not walk.complete:
                note += f"; stopped at {limit:.0f} s, unfinished" + (f" ({walk.error})" if walk.error else "")
            results.add(
                Row(
                    section,
                    label,
                    walk.seconds if walk.complete else None,
                    "s",
                    target="< 2 s",
                    ok=walk.complete and walk.seconds < 2.0,
                    note=note,
                )
            )
        # The walk leaves every cell's encoding cached: RSS once an NMS has walked the table.
        walked, walked_peak = rss_mib(agent.pid), peak_rss_mib(agent.pid)
        results.add(
            Row(
                section,
                "agent RSS after the full walk (peak)",
                walked,
                "MiB",
                target=RSS_TARGET,
                ok=walked_peak < RSS_LIMIT_MIB,
                note=f"peak {walked_peak:.0f} MiB; {rss_split(agent.pid)}",
            )
        )
        if settings.scale_minutes > 0:
            _held_rss_row(results, section, agent, snmp_port, settings.scale_minutes, scrape_every)
        # What an operator's restart costs: the same config, every probe's state saved at the stop.
        agent.stop()
        _startup_rows(results, section, f"restart with {n:,} saved states", agent, snmp_port)
    finally:
        agent.stop()


def _held_rss_row(
    results: Results, section: str, agent: AgentProcess, snmp_port: int, minutes: float, scrape_every: float
) -> None:
    """The agent kept up until `minutes` after its start, as an NMS and a Prometheus see it (/metrics every
    `scrape_every` seconds, a GET of one probe row a minute); its RSS then, and every 5 minutes on the way.

    The RSS after the walks comes 3.5-4 minutes after start, before history's first journal move
    (every COMPACT_INTERVAL): a long-running agent's memory is this row's, not that one's."""
    get_oid = snmp_tools.dotted(mib_oids.smtp_probe_oid(mib_oids.SmtpProbeColumn.STATUS, probe_name("s", 0)))
    end = agent.started_at + 60.0 * minutes
    log(f"scale: holding the agent until {minutes:g} minutes after its start ({end - time.monotonic():.0f} s)")
    trail: list[str] = []
    gets = answered = 0
    next_get = next_mark = time.monotonic()
    while (now := time.monotonic()) < end:
        if now >= next_get:
            gets += 1
            answered += snmp_tools.snmpget(snmp_port, "v2c", get_oid, timeout=5.0) is not None
            next_get = now + 60.0
        if now >= next_mark:
            trail.append(f"{(now - agent.started_at) / 60:.0f} min {rss_mib(agent.pid):.0f}")
            next_mark = now + 300.0
        http_get(agent.url + "/metrics", timeout=60)
        time.sleep(max(0.0, min(scrape_every, end - time.monotonic())))
    rss, peak = rss_mib(agent.pid), peak_rss_mib(agent.pid)
    moves = int(60.0 * minutes // COMPACT_INTERVAL)
    results.add(
        Row(
            section,
            f"agent RSS {minutes:g} minutes after start (peak)",
            rss,
            "MiB",
            target=RSS_TARGET,
            ok=peak < RSS_LIMIT_MIB,
            note=(
                f"peak {peak:.0f} MiB; MiB on the way: {', '.join(trail) or 'none'}; history's journal moved "
                f"about {moves} times; /metrics scraped every {scrape_every:g} s; {answered} of {gets} GETs "
                f"(one a minute) answered; {rss_split(agent.pid)}"
            ),
        )
    )


def _startup_rows(results: Results, section: str, label: str, agent: AgentProcess, snmp_port: int) -> None:
    """Spawn the agent; rows for the seconds from spawn to /-/ready and to the first SNMP answer."""
    snmp_first: list[float | None] = [None]
    ready = threading.Event()
    agent.spawn()
    poller = None
    if snmp_port:

        def poll() -> None:
            snmp_first[0] = snmp_tools.poll_first_answer(snmp_port, agent.started_at, 120.0, ready.is_set)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    try:
        startup = agent.wait_ready()
        if poller is not None:
            poller.join(125)
    finally:
        ready.set()
    results.add(Row(section, f"{label} to /-/ready", startup, "s", target="< 2 s", ok=startup < 2.0))
    if not snmp_port:
        results.note(f"{section}: {label} to first SNMP answer: n/a (SNMP agent not present)")
        return
    first = snmp_first[0]
    results.add(
        Row(
            section,
            f"{label} to first answered SNMP GET",
            first,
            "s",
            target="< 2 s",
            ok=None if first is None else first < 2.0,
        )
    )
