"""The probe process's program: `python -m monitor.runtime.probe_worker FD LOG_FORMAT LOG_LEVEL`, started
by the agent's ProbeProcess (monitor.runtime.probe_process) only; the frames are those of monitor.runtime.frames.

It runs the scheduler and the probes, sends their results to the agent in batches, and its own health
once a second."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from monitor.config.schema import Config
from monitor.model.delivery import PendingMessage
from monitor.model.probe_result import ProbeResult
from monitor.probes import ProbeEnv
from monitor.runtime import logs
from monitor.runtime.frames import frame, read_frame
from monitor.runtime.scheduler import ProbeScheduler
from monitor.state.health import AgentHealth, LatenessHistogram

HEALTH_EVERY = 1.0  # seconds between health frames from the probe process
# Results are sent in batches at most this old: one frame wakes the agent process once for all the
# results of that time instead of once per probe (a store that is 50 ms late is no loss).
RESULTS_EVERY = 0.05
RESULTS_MAX = 256  # results per frame: a frame stays far below MAX_FRAME whatever the backlog


class Worker:
    """The probe process's state: its scheduler, health and the batch of results not yet sent."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.health = AgentHealth()
        self.scheduler: ProbeScheduler | None = None
        self._results: list[tuple[str, ProbeResult]] = []
        self._flush: asyncio.TimerHandle | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    def add_result(self, name: str, result: ProbeResult) -> None:
        self._results.append((name, result))
        if len(self._results) >= RESULTS_MAX:
            self.send_results()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(RESULTS_EVERY, self.send_results)

    def send_results(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._results:
            batch, self._results = self._results, []
            self.send(("results", batch))

    def apply(self, config: Config, pending: Mapping[str, tuple[PendingMessage, ...]]) -> None:
        if self.scheduler is None:
            env = ProbeEnv.from_config(config)
            # No store here: results go to the agent's, and a second copy of 10,000 results costs ~10 MB.
            self.scheduler = ProbeScheduler(self.add_result, self.health, env, config.defaults.max_concurrency)
            self.scheduler.apply(config)
            self.scheduler.seed_pending(pending)
            self.scheduler.start()
            # What the config built lives as long as the process: out of the cyclic collector's reach, so
            # that a full collection traces only what probes leave behind. With 200 delivery probes beside
            # 10,000 SMTP probes a full collection took 150-260 ms of CPU (up to 1 s of event-loop pause
            # on a busy machine), 57-74 ms frozen (bench/delivery.py, 2026-12-06); the agent process does
            # the same (monitor.runtime.agent).
            gc.collect()
            gc.freeze()
        else:
            self.scheduler.apply(config)

    async def report_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY)
            h = self.health
            lateness = LatenessHistogram(counts=list(h.lateness.counts), total=h.lateness.total, count=h.lateness.count)
            self.send(
                (
                    "health",
                    {
                        "in_flight": h.in_flight,
                        "skipped_runs": h.skipped_runs,
                        "lateness": lateness,
                        # the agent reads this process's /proc entries itself (monitor.runtime.probe_process)
                        "tasks": len(asyncio.all_tasks()),
                        "at": time.time(),
                    },
                )
            )


async def _run_worker(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    worker = Worker(writer)
    health_task = asyncio.get_running_loop().create_task(worker.report_health())
    grace = 2.0
    try:
        while True:
            message = await read_frame(reader)
            if message[0] == "config":
                worker.apply(message[1], message[2])
            elif message[0] == "stop":
                grace = float(message[1])
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the agent is gone: stop probing too
    finally:
        health_task.cancel()
        if worker.scheduler is not None:
            await worker.scheduler.stop(grace)
        worker.send_results()  # the last probes' results before "stopped"
        worker.send(("stopped", None))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when probing stops
    logs.setup(argv[2] if len(argv) > 2 else "text", argv[3] if len(argv) > 3 else "info")
    asyncio.run(_run_worker(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
