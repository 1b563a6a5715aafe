"""monitor.runtime.scheduler: start offsets, one run per probe at a time, the concurrency bound, reloads and stop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from monitor.config.schema import Config, MxCheckConfig, SmtpProbeConfig, parse_config
from monitor.model.results import MxResult, Phase, Reason, SmtpResult, Status
from monitor.probes import ProbeEnv
from monitor.probes.runners import RUNNERS, internal_failure
from monitor.runtime.scheduler import ProbeScheduler, spread_offset
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeState, ResultsStore, probe_entries

HOST = "127.0.0.1"
LONG = "1h"  # an interval under which no scheduled run happens during a test (see offsets below)


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def smtp_probe(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "host": HOST, "port": port, "tls": "none"}


def make_config(
    probes: list[dict[str, Any]],
    *,
    interval: str = "200ms",
    timeout: str = "5s",
    max_concurrency: int = 500,
    alert_after: int = 1,
) -> Config:
    return parse_config(
        {
            "defaults": {
                "interval": interval,
                "timeout": timeout,
                "max_concurrency": max_concurrency,
                "alert_after": alert_after,
                "helo": "monitor.test",
            },
            "dns": {"nameservers": [f"{HOST}:9"]},  # probes use IP literals; never ask the system resolver
            "smtp": probes,
        }
    )


class StoredScheduler(ProbeScheduler):
    """Wired as the agent wires it without a probe process: results go to a store that follows the
    config before the scheduler does (Agent._apply)."""

    def __init__(self, config: Config) -> None:
        self.store = ResultsStore()
        super().__init__(
            self.store.record, AgentHealth(), ProbeEnv.from_config(config), config.defaults.max_concurrency
        )

    def apply(self, config: Config) -> None:
        self.store.configure(probe_entries(config))
        super().apply(config)


def new_scheduler(config: Config) -> StoredScheduler:
    """Built inside the running loop, as the agent does."""
    return StoredScheduler(config)


def start(scheduler: ProbeScheduler, config: Config) -> None:
    """Jobs first, then the clock, as the agent does."""
    scheduler.apply(config)
    scheduler.start()


def state(scheduler: StoredScheduler, name: str) -> ProbeState:
    return scheduler.store.snapshot().states[name]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


class Tarpit:
    """A TCP server that accepts and never speaks; it hangs up after `hold` seconds (never if None).

    It counts connections open at once; it stops counting one when it hangs up itself, before the
    client can notice, so its count never exceeds the client's true concurrency."""

    def __init__(self, hold: float | None) -> None:
        self.hold = hold
        self.current = 0
        self.max_current = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.current += 1
        self.accepted += 1
        self.max_current = max(self.max_current, self.current)
        self._writers.add(writer)
        try:
            if self.hold is None:
                await reader.read()  # until the client goes away
            else:
                await asyncio.sleep(self.hold)
        except ConnectionError:
            pass
        finally:
            self.current -= 1
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TestSpreadOffset:
    def test_stable_for_a_name(self) -> None:
        assert spread_offset("mx1.example.com", 60.0) == spread_offset("mx1.example.com", 60.0)

    def test_stable_across_processes_with_other_hash_seeds(self) -> None:
        code = (
            "from monitor.runtime.scheduler import spread_offset; print(repr(spread_offset('mx1.example.com', 60.0)))"
        )
        env = {**os.environ, "PYTHONHASHSEED": "12345"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60
        ).stdout
        assert float(out) == spread_offset("mx1.example.com", 60.0)

    @pytest.mark.parametrize("interval", [0.2, 1.0, 60.0, 3600.0])
    def test_within_the_interval(self, interval: float) -> None:
        offsets = [spread_offset(f"probe-{i}", interval) for i in range(1000)]
        assert all(0.0 <= offset < interval for offset in offsets)

    def test_same_place_in_the_cycle_for_any_interval(self) -> None:
        assert spread_offset("relay", 120.0) == pytest.approx(2 * spread_offset("relay", 60.0))

    @pytest.mark.parametrize("pattern", ["probe-{}", "mx{}.example.com", "smtp-{:04d}"])
    def test_thousand_names_spread_over_the_interval(self, pattern: str) -> None:
        buckets = Counter(int(spread_offset(pattern.format(i), 60.0)) for i in range(1000))
        assert set(buckets) == set(range(60))  # every second of the minute gets some
        assert max(buckets.values()) <= 40  # and none more than 4 % (even spread: 1.7 %)


class TestProbeEntries:
    def test_per_probe_thresholds_override_defaults(self) -> None:
        config = parse_config(
            {
                "defaults": {"alert_after": 3, "cert_warn_days": 20},
                "smtp": [
                    {"name": "a", "host": HOST},
                    {"name": "b", "host": HOST, "alert_after": 1, "cert_warn_days": 0},
                ],
                "mx": [{"name": "m", "domain": "example.com", "alert_after": 5}],
            }
        )
        assert [(p.name, after, warn) for p, after, warn in probe_entries(config)] == [
            ("a", 3, 20),
            ("b", 1, 0),
            ("m", 5, 20),
        ]


class TestScheduledRuns:
    def test_results_of_a_closed_port_land_in_the_store(self) -> None:
        async def scenario() -> None:
            config = make_config([smtp_probe("solo", closed_port())], alert_after=2)
            scheduler = new_scheduler(config)
            start(scheduler, config)
            try:
                assert scheduler.job_count == 1
                await wait_until(lambda: state(scheduler, "solo").runs >= 3, what="three runs")
            finally:
                await scheduler.stop(1.0)
            solo = state(scheduler, "solo")
            assert solo.status is Status.FAILED
            assert isinstance(solo.last_result, SmtpResult)
            assert (solo.last_result.phase, solo.last_result.reason) == (Phase.CONNECT, Reason.REFUSED)
            assert solo.failures_by_cause[("connect", "refused")] == solo.runs
            assert scheduler.health.lateness.count >= 3
            assert scheduler.health.in_flight == 0

        asyncio.run(scenario())

    def test_never_two_runs_of_the_same_probe_at_once(self) -> None:
        async def scenario() -> None:
            pits = [Tarpit(hold=0.5), Tarpit(hold=0.5)]
            ports = [await pit.start() for pit in pits]
            # Each run takes 0.5 s (the tarpit hangs up) with a 5 s timeout, every 0.2 s.
            config = make_config([smtp_probe("slow", ports[0]), smtp_probe("relay", ports[1])])
            scheduler = new_scheduler(config)
            start(scheduler, config)
            try:
                await wait_until(lambda: all(pit.accepted >= 3 for pit in pits), what="three runs each")
            finally:
                await scheduler.stop(1.0)
                for pit in pits:
                    await pit.stop()
            assert [pit.max_current for pit in pits] == [1, 1]
            assert scheduler.health.skipped_runs >= 2  # the runs that came due meanwhile
            assert state(scheduler, "slow").runs >= 2

        asyncio.run(scenario())

    def test_max_concurrency_bounds_runs_across_probes(self) -> None:
        async def scenario() -> None:
            pit = Tarpit(hold=0.3)
            port = await pit.start()
            config = make_config([smtp_probe(f"p{i}", port) for i in range(6)], max_concurrency=2)
            scheduler = new_scheduler(config)
            in_flight: list[int] = []

            def sample() -> bool:
                in_flight.append(scheduler.health.in_flight)
                return pit.accepted >= 8

            start(scheduler, config)
            try:
                await wait_until(sample, what="eight connections")
            finally:
                await scheduler.stop(1.0)
                await pit.stop()
            assert pit.max_current == 2
            assert max(in_flight) == 2
            assert sum(state(scheduler, f"p{i}").runs for i in range(6)) >= 6

        asyncio.run(scenario())


class TestRunOnce:
    def test_runner_that_raises_is_an_internal_failure(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def crash(config: SmtpProbeConfig, env: ProbeEnv, pending: object) -> SmtpResult:
            raise RuntimeError("boom")

        monkeypatch.setitem(RUNNERS, SmtpProbeConfig, crash)

        async def scenario() -> None:
            config = make_config([smtp_probe("a", 2525)], interval=LONG)
            scheduler = new_scheduler(config)
            scheduler.apply(config)
            result = await scheduler.run_once("a")
            assert isinstance(result, SmtpResult)
            assert (result.ok, result.phase, result.reason) == (False, Phase.INTERNAL, Reason.INTERNAL)
            assert result.error == "internal error: RuntimeError: boom"
            assert (result.host, result.port, result.tls_mode) == (HOST, 2525, "none")
            a = state(scheduler, "a")
            assert a.last_result == result
            assert a.status is Status.FAILED
            assert dict(a.failures_by_cause) == {("internal", "internal"): 1}
            assert scheduler.health.in_flight == 0

        asyncio.run(scenario())

    def test_internal_failure_of_an_mx_check(self) -> None:
        check = MxCheckConfig(name="m", domain="example.com")
        result = internal_failure(check, 12.5, "internal error: KeyError: 'x'")
        assert isinstance(result, MxResult)
        assert (result.domain, result.started_at, result.ok) == ("example.com", 12.5, False)
        assert (result.phase, result.reason) == (Phase.INTERNAL, Reason.INTERNAL)

    def test_unknown_probe_runs_nothing(self) -> None:
        async def scenario() -> None:
            scheduler = new_scheduler(make_config([]))
            assert await scheduler.run_once("nobody") is None

        asyncio.run(scenario())

    def test_result_of_a_probe_changed_while_running_is_dropped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def scenario() -> None:
            gate = asyncio.Event()

            async def gated(config: SmtpProbeConfig, env: ProbeEnv, pending: object) -> SmtpResult:
                await gate.wait()
                return SmtpResult(
                    host=config.host, port=config.effective_port, tls_mode=config.tls, started_at=time.time(), ok=True
                )

            monkeypatch.setitem(RUNNERS, SmtpProbeConfig, gated)
            scheduler = new_scheduler(make_config([]))
            scheduler.apply(make_config([smtp_probe("gated", 2525)], interval=LONG))
            running = asyncio.create_task(scheduler.run_once("gated"))
            await asyncio.sleep(0.05)
            scheduler.apply(make_config([smtp_probe("gated", 2526)], interval=LONG))
            gate.set()
            result = await running
            assert result is not None
            assert result.ok
            assert state(scheduler, "gated").runs == 0  # belongs to the old config

        asyncio.run(scenario())


class TestApply:
    def test_reload_adds_and_removes_jobs_and_keeps_unchanged_state(self) -> None:
        # Offsets within the hour are far from now, so no scheduled run interferes.
        assert min(spread_offset(n, 3600.0) for n in ("keep", "drop", "added")) > 60

        async def scenario() -> None:
            keep, drop, added = (smtp_probe(name, closed_port()) for name in ("keep", "drop", "added"))
            first = make_config([keep, drop], interval=LONG)
            scheduler = new_scheduler(first)
            start(scheduler, first)
            try:
                await scheduler.run_once("keep")
                await scheduler.run_once("drop")
                assert scheduler.job_count == 2

                scheduler.apply(make_config([keep, added], interval=LONG))
                assert scheduler.job_count == 2
                assert set(scheduler.store.snapshot().states) == {"keep", "added"}
                assert state(scheduler, "keep").runs == 1
                assert state(scheduler, "keep").status is Status.FAILED
                assert state(scheduler, "added").runs == 0
                assert await scheduler.run_once("drop") is None

                scheduler.apply(make_config([keep, added], interval="2h"))  # only the interval changed
                assert state(scheduler, "keep").runs == 1

                scheduler.apply(make_config([{**keep, "port": closed_port()}], interval="2h"))
                assert scheduler.job_count == 1
                assert (state(scheduler, "keep").runs, state(scheduler, "keep").status) == (0, Status.UNKNOWN)
            finally:
                await scheduler.stop(1.0)

        asyncio.run(scenario())


class TestStop:
    def test_stop_cancels_a_run_still_going_after_the_grace(self) -> None:
        async def scenario() -> None:
            pit = Tarpit(hold=None)
            port = await pit.start()
            config = make_config([smtp_probe("stuck", port)], timeout="30s")
            scheduler = new_scheduler(config)
            start(scheduler, config)
            try:
                await wait_until(lambda: pit.current == 1, what="a connection in flight")
                loop = asyncio.get_running_loop()
                started = loop.time()
                await scheduler.stop(0.3)
                elapsed = loop.time() - started
                assert 0.25 <= elapsed < 2.0, elapsed  # waited for the grace, then cancelled
                await wait_until(lambda: pit.current == 0, timeout=2.0, what="the connection closed")
                accepted = pit.accepted
                await asyncio.sleep(0.5)
                assert pit.accepted == accepted  # nothing scheduled after stop
            finally:
                await pit.stop()
            assert state(scheduler, "stuck").runs == 0
            assert scheduler.health.in_flight == 0

        asyncio.run(scenario())

    def test_stop_lets_a_run_finish_within_the_grace(self) -> None:
        async def scenario() -> None:
            pit = Tarpit(hold=0.4)  # hangs up after 0.4 s: the run ends, failed in the banner
            port = await pit.start()
            config = make_config([smtp_probe("slow", port)], timeout="30s")
            scheduler = new_scheduler(config)
            start(scheduler, config)
            try:
                await wait_until(lambda: pit.current == 1, what="a connection in flight")
                loop = asyncio.get_running_loop()
                started = loop.time()
                await scheduler.stop(5.0)
                assert loop.time() - started < 2.0
            finally:
                await pit.stop()
            slow = state(scheduler, "slow")
            assert slow.runs == 1
            assert isinstance(slow.last_result, SmtpResult)
            assert slow.last_result.phase is Phase.BANNER
            assert pit.accepted == 1

        asyncio.run(scenario())


class TestSink:
    def test_results_only_reach_the_sink_and_reloads_still_add_and_remove_jobs(self) -> None:
        async def scenario() -> None:
            keep, drop, added = (smtp_probe(name, closed_port()) for name in ("keep", "drop", "added"))
            first = make_config([keep, drop], interval=LONG)
            seen: list[tuple[str, bool]] = []
            scheduler = ProbeScheduler(
                lambda name, result: seen.append((name, result.ok)), AgentHealth(), ProbeEnv.from_config(first), 10
            )
            start(scheduler, first)
            try:
                await scheduler.run_once("keep")
                assert seen == [("keep", False)]
                scheduler.apply(make_config([keep, added], interval=LONG))
                assert sorted(job.id for job in scheduler._scheduler.get_jobs()) == ["added", "keep"]
                assert await scheduler.run_once("drop") is None
                await scheduler.run_once("added")
                assert seen == [("keep", False), ("added", False)]
            finally:
                await scheduler.stop(1.0)

        asyncio.run(scenario())
