"""The agent's own health facts (config loads, scheduling, in-flight probes) for exporters."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from monitor import __version__

# Scheduler lateness buckets (seconds): a run due at t that starts at t+lateness.
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class LatenessHistogram:
    """Cumulative histogram of scheduler lateness, written by the scheduler only."""

    buckets: tuple[float, ...] = LATENESS_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out


@dataclass
class AgentHealth:
    """Facts about the agent itself; probes' results live in the store, not here."""

    version: str = __version__
    started_at: float = field(default_factory=time.time)
    config_path: str = ""
    config_loaded_at: float = 0.0  # last successful load
    config_load_success: bool = True  # the last attempt (start or reload)
    config_attempted_at: float = 0.0  # the last attempt, successful or not
    config_reloads: Counter[str] = field(default_factory=Counter)  # "success"/"failure"
    in_flight: int = 0
    skipped_runs: int = 0  # runs coalesced because the previous one was still going
    lateness: LatenessHistogram = field(default_factory=LatenessHistogram)
    # name -> count, filled by the SNMP agent and the notifier
    snmp_requests: Counter[str] = field(default_factory=Counter)
    snmp_auth_failures: int = 0
    snmp_dropped: int = 0
    snmp_dropped_reasons: Counter[str] = field(default_factory=Counter)  # reason -> part of snmp_dropped
    snmp_reports: Counter[str] = field(default_factory=Counter)  # usmStats counter -> SNMPv3 Reports sent
    notifications: Counter[tuple[str, str]] = field(default_factory=Counter)  # (receiver, outcome)
    state_write_errors: int = 0  # failed writes to the state database
    # The probe process's own resources, from its health reports (soak checks: these stay flat)
    probe_process: dict[str, float] = field(default_factory=dict)  # tasks, open_fds, rss_bytes, cpu_seconds
    agent_tasks: int = 0  # asyncio tasks of the agent process, counted in its loop at each scrape
