"""Runs every configured probe at its interval on APScheduler and hands each result to one sink."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.config.schema import Config, DeliveryProbeConfig
from monitor.model.delivery import DeliveryLedger, DeliveryResult, PendingMessage
from monitor.model.probe_result import ProbeResult
from monitor.probes import ProbeEnv, runners
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeConfig

log = logging.getLogger("smtp_monitor.scheduler")

# Where results go: the agent's store (ResultsStore.record), or the probe process's link to the agent.
ResultSink = Callable[[str, ProbeResult], object]


def spread_offset(name: str, interval: float) -> float:
    """A stable offset within the interval, so that a thousand probes do not start in the
    same second, and a restart keeps each probe at the same place in its cycle."""
    return (zlib.crc32(name.encode()) / 2**32) * interval


class ProbeScheduler:
    """One APScheduler job per probe in the running event loop; every result of the current config
    goes to `sink`. Whoever owns the store configures it (the scheduler only schedules)."""

    def __init__(self, sink: ResultSink, health: AgentHealth, env: ProbeEnv, max_concurrency: int) -> None:
        self.sink = sink
        self.health = health
        self.env = env
        self._limit = asyncio.Semaphore(max_concurrency)
        # Delivery probes' messages not yet seen, handed to their next run. The store keeps the same
        # (and saves it); this copy is what the probe process has, seeded from the store at start.
        self._pending: dict[str, tuple[PendingMessage, ...]] = {}
        self._probes: dict[str, ProbeConfig] = {}
        self._intervals: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        self._scheduler.add_listener(self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        # APScheduler logs every skipped run at WARNING; we count them instead.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        # _run() turns every probe exception into a result; what APScheduler's executor would
        # still report is the cancellation of in-flight probes at shutdown, which is expected.
        logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start running the jobs that apply() set up."""
        self._scheduler.start()

    def apply(self, config: Config) -> None:
        """Make the jobs match the config: add new, drop removed, reschedule changed."""
        self.env.defaults = config.defaults
        wanted: dict[str, ProbeConfig] = {p.name: p for p in config.smtp}
        wanted.update({p.name: p for p in config.mx})
        wanted.update({p.name: p for p in config.delivery})
        added = {name for name, probe in wanted.items() if self._probes.get(name) != probe}  # new or changed
        removed = [name for name in self._probes if name not in wanted]
        for name in removed:
            self._remove_job(name)
        now = datetime.now().astimezone()
        for name, probe in wanted.items():
            interval = probe.interval or config.defaults.interval
            if name not in added and self._probes.get(name) == probe and self._intervals.get(name) == interval:
                continue
            self._remove_job(name)
            self._probes[name] = probe
            self._intervals[name] = interval
            first = now + timedelta(seconds=spread_offset(name, interval))
            self._scheduler.add_job(
                self._run,
                IntervalTrigger(seconds=interval, start_date=first),
                args=[name],
                id=name,
                name=name,
                misfire_grace_time=max(int(interval), 1),
                next_run_time=first,
            )
        if added or removed:
            log.info("probes: %d configured, %d added or changed, %d removed", len(wanted), len(added), len(removed))

    def _remove_job(self, name: str) -> None:
        # Only names we scheduled: get_job() scans every job, quadratic over thousands of new probes.
        if name in self._probes and self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)
        self._probes.pop(name, None)
        self._intervals.pop(name, None)
        self._pending.pop(name, None)  # a changed probe starts afresh, as its state in the store does

    def seed_pending(self, pending: Mapping[str, tuple[PendingMessage, ...]]) -> None:
        """The pending messages the store restored (before start, or when a probe process restarts)."""
        for name, messages in pending.items():
            if name in self._probes and messages:
                self._pending[name] = messages

    async def stop(self, grace: float) -> None:
        """Stop scheduling; let probes in flight finish within `grace`, then cancel them."""
        # Pause first, shut down after the grace: AsyncIOExecutor.shutdown() cancels running
        # jobs at once, so shutting down first left in-flight probes no grace at all.
        if self._scheduler.running:
            self._scheduler.pause()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    # -- running -----------------------------------------------------------------
    async def _run(self, name: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self.run_once(name)

    async def run_once(self, name: str) -> ProbeResult | None:
        probe = self._probes.get(name)
        if probe is None:
            return None
        if isinstance(probe, DeliveryProbeConfig):
            # A delivery run mostly waits for mail (up to deliver_within): it takes no slot of the
            # handshake probes, whose concurrency limit is about sockets and CPU.
            result = await self._run_counted(probe, self._pending.get(name, ()))
        else:
            async with self._limit:
                result = await self._run_counted(probe, ())
        # A reload may have changed this probe while it ran: its result belongs to the old config.
        if self._probes.get(name) == probe:
            if isinstance(result, DeliveryResult):
                pending = DeliveryLedger(pending=self._pending.get(name, ())).after(result).pending
                self._pending[name] = pending
            self.sink(name, result)
        return result

    async def _run_counted(self, probe: ProbeConfig, pending: tuple[PendingMessage, ...]) -> ProbeResult:
        self.health.in_flight += 1
        try:
            return await runners.run(probe, self.env, pending)
        finally:
            self.health.in_flight -= 1

    def _on_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_SUBMITTED:
            times = getattr(event, "scheduled_run_times", None) or []
            if times:
                lateness = (datetime.now(times[-1].tzinfo) - times[-1]).total_seconds()
                self.health.lateness.observe(lateness)
        else:
            self.health.skipped_runs += 1

    @property
    def job_count(self) -> int:
        return len(self._scheduler.get_jobs())
