"""Section soak: 2,000 probes mixing healthy Postfix and misbehaving servers for N minutes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench import snmp_tools
from bench.common import (
    REPO_ROOT,
    AgentProcess,
    Results,
    Row,
    Settings,
    http_get,
    log,
    metric_sum,
    on_exit,
    open_fds,
    rss_mib,
    samples,
    stop_process,
    thread_count,
)
from bench.peers import Peers
from tests.support.ports import free_udp_port
from tests.support.procs import descendants

# group -> (count, expected failure reasons); healthy groups expect none
FAULTS = {"tarpit": {"timeout"}, "reset": {"reset"}, "reject554": {"reply"}, "endless": {"protocol"}}


@dataclass
class Sample:
    at: float
    fds: int
    threads: int
    rss: float
    healthy_ok: bool
    healthy_s: float
    metrics_ok: bool
    metrics_s: float
    snmp_ok: bool | None
    children: frozenset[int]
    tasks: int | None


def _start_faulty(seconds: float) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.faulty_servers", "--seconds", str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    on_exit(f"faulty servers {proc.pid}", lambda: stop_process(proc, 5))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("faulty servers did not start")
    return proc, {k: int(v) for k, v in json.loads(line).items()}


def _config(postfix: Any, faulty: dict[str, int], n: int) -> list[dict[str, Any]]:
    """60 % healthy (plain, STARTTLS, implicit) and 10 % for each of the four faults."""
    common = {"host": "127.0.0.1", "ca_file": str(postfix.ca_file), "servername": "mail.test"}
    plan = [
        ("ok-plain", postfix.plain_port, "none", 0.2),
        ("ok-starttls", postfix.plain_port, "starttls", 0.3),
        ("ok-implicit", postfix.implicit_port, "implicit", 0.1),
        *((kind, faulty[kind], "none", 0.1) for kind in FAULTS),
    ]
    probes = []
    for group, port, tls, share in plan:
        probes += [{"name": f"{group}-{i:04d}", "port": port, "tls": tls, **common} for i in range(int(n * share))]
    return probes


def _sample(agent: AgentProcess, snmp_port: int) -> Sample:
    h_status, _, h_s = http_get(agent.url + "/-/healthy", timeout=5)
    m_status, body, m_s = http_get(agent.url + "/metrics", timeout=30)
    text = body.decode(errors="replace")
    tasks = None
    if "smtp_monitor_tasks" in text:  # the agent's own asyncio task gauges, when it has them
        tasks = int(metric_sum(text, "smtp_monitor_tasks") + metric_sum(text, "smtp_monitor_probe_process_tasks"))
    snmp_ok = None
    if snmp_port:
        snmp_ok = snmp_tools.snmpget(snmp_port, "v2c", timeout=2.0) is not None
    return Sample(
        time.monotonic(),
        open_fds(agent.pid),
        thread_count(agent.pid),
        rss_mib(agent.pid),
        h_status == 200,
        h_s,
        m_status == 200,
        m_s,
        snmp_ok,
        frozenset(descendants(agent.pid)),
        tasks,
    )


def run(settings: Settings, peers: Peers, results: Results) -> None:
    postfix = peers.postfix
    n, interval, timeout = 2_000, 30.0, 5.0
    duration = settings.soak_seconds
    every = 5.0 if duration <= 120 else 10.0
    faulty_proc, faulty = _start_faulty(duration + 300)
    snmp_port = free_udp_port()
    config: dict[str, Any] = {
        "defaults": {"interval": interval, "timeout": timeout, "max_concurrency": 500, "helo": "bench.test"},
        "smtp": _config(postfix, faulty, n),
    }
    config["snmp"] = snmp_tools.agent_snmp_config(snmp_port)
    log(f"soak: {n} probes every {interval:g} s for {duration:.0f} s; faulty servers {faulty}")
    agent = AgentProcess(settings.workdir / "agent-soak", config)
    taken: list[Sample] = []
    try:
        agent.start()
        started = time.monotonic()
        end = started + duration
        count = 0
        while time.monotonic() < end and count < 10_000 and agent.alive():
            taken.append(_sample(agent, snmp_port))
            count += 1
            time.sleep(max(0.0, min(every, end - time.monotonic())))
        if not agent.alive():
            raise RuntimeError(f"the agent died during the soak:\n{agent.log_tail()}")
        text = agent.metrics(timeout=60)
        taken.append(_sample(agent, snmp_port))
    finally:
        agent.stop()
        stop_process(faulty_proc, 5)
    warm = next((s for s in taken if s.at >= started + interval + every), taken[0])
    last = taken[-1]
    section = f"soak {duration / 60:.0f} min"
    cold = taken[0]
    results.add(
        Row(
            section,
            "open fds, warm → end",
            last.fds,
            "",
            warm.fds,
            "warm",
            "flat",
            last.fds <= warm.fds * 1.1 + 10,
            f"cold {cold.fds}, max {max(s.fds for s in taken)}",
        )
    )
    results.add(
        Row(
            section,
            "threads, warm → end",
            last.threads,
            "",
            warm.threads,
            "warm",
            "flat",
            last.threads <= warm.threads + 2,
            f"cold {cold.threads}",
        )
    )
    restarts = len({pid for s in taken for pid in s.children}) - len(taken[0].children)
    results.add(
        Row(
            section,
            "agent child processes replaced",
            restarts,
            "",
            target="0",
            ok=restarts == 0,
            note=f"children at start {sorted(taken[0].children)}, at end {sorted(last.children)}",
        )
    )
    growth = 100 * (last.rss - warm.rss) / warm.rss
    results.add(
        Row(
            section,
            "RSS growth, warm → end",
            growth,
            "%",
            target="< 10 %",
            ok=growth < 10,
            note=f"{warm.rss:.0f} → {last.rss:.0f} MiB, cold {cold.rss:.0f} MiB",
        )
    )
    if warm.tasks is not None and last.tasks is not None:
        results.add(
            Row(
                section,
                "asyncio tasks (agent + probe process), warm → end",
                last.tasks,
                "",
                warm.tasks,
                "warm",
                "flat",
                last.tasks <= warm.tasks * 1.1 + 10,
                f"cold {cold.tasks}, max {max(s.tasks or 0 for s in taken)}",
            )
        )
    else:
        results.note(f"{section}: the agent exports no asyncio task gauge: fds and threads stand in for it")
    _classification(results, section, text, n)
    http_missed = sum(not (s.healthy_ok and s.metrics_ok) for s in taken)
    slowest = max(s.metrics_s for s in taken)
    results.add(
        Row(
            section,
            "HTTP samples missed",
            http_missed,
            f"of {len(taken)}",
            target="0",
            ok=http_missed == 0,
            note=f"slowest /metrics {slowest:.2f} s",
        )
    )
    snmp_missed = sum(s.snmp_ok is False for s in taken)
    results.add(
        Row(
            section,
            "SNMP GETs missed",
            snmp_missed,
            f"of {len(taken)}",
            target="0",
            ok=snmp_missed == 0,
            note="snmpget v2c sysDescr.0, 2 s timeout, no retry",
        )
    )


def _classification(results: Results, section: str, text: str, n: int) -> None:
    runs = {labels["probe"]: v for _, labels, v in samples(text, ["smtp_probe_runs_total"])}
    reasons: dict[str, dict[str, float]] = {}
    for _, labels, value in samples(text, ["smtp_probe_failures_total"]):
        reasons.setdefault(labels["probe"], {})
        reasons[labels["probe"]][labels["reason"]] = reasons[labels["probe"]].get(labels["reason"], 0) + value
    internal = sum(r.get("internal", 0) for r in reasons.values())
    never_ran = sum(1 for v in runs.values() if v == 0) + max(0, n - len(runs))
    wrong: dict[str, int] = {}
    by_group: dict[str, dict[str, float]] = {}
    for probe, causes in reasons.items():
        group = probe.rsplit("-", 1)[0]
        expected = FAULTS.get(group, set())
        for reason, count in causes.items():
            by_group.setdefault(group, {})
            by_group[group][reason] = by_group[group].get(reason, 0) + count
            if reason not in expected:
                wrong[group] = wrong.get(group, 0) + int(count)
    results.add(
        Row(
            section,
            "unclassified results (reason internal)",
            internal,
            "",
            target="0",
            ok=internal == 0,
            note=f"{never_ran} probes never ran",
        )
    )
    misclassified = sum(wrong.values())
    detail = "; ".join(
        f"{g}: {', '.join(f'{r} {c:.0f}' for r, c in sorted(rs.items()))}" for g, rs in sorted(by_group.items())
    )
    results.add(
        Row(
            section,
            "failures with an unexpected reason",
            misclassified,
            "",
            target="0",
            ok=misclassified == 0,
            note=f"failures by group: {detail}",
        )
    )
