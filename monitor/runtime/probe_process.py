"""The probe process: scheduler and probes in an interpreter of their own, so that SNMP requests and
Prometheus scrapes served by the agent process never delay the timings probes measure.

The agent starts `python -m monitor.runtime.probe_process FD` with one end of a socket pair. Frames are a
4-byte length and a pickle (both ends are this program). Agent -> probes: ("config", Config),
("stop", grace). Probes -> agent: ("results", [(name, result), ...]), ("health", dict), ("stopped", None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from monitor.config.schema import Config, SnmpConfig
from monitor.runtime import logs
from monitor.state.health import AgentHealth, LatenessHistogram
from monitor.state.store import ResultsStore, probe_entries

if TYPE_CHECKING:  # the probe process's side only: the agent's side needs neither
    from monitor.runtime.scheduler import ProbeScheduler

log = logging.getLogger("smtp_monitor.probe_process")

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024  # a config of many thousand probes is a few MB; anything beyond is a bug
HEALTH_EVERY = 1.0  # seconds between health frames from the probe process
RESTART_DELAY = 1.0  # before starting a probe process that died on its own
# Results are sent in batches at most this old: one frame wakes the agent process once for all the
# results of that time instead of once per probe (a store that is 50 ms late is no loss).
RESULTS_EVERY = 0.05
RESULTS_MAX = 256  # results per frame: a frame stays far below MAX_FRAME whatever the backlog


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    return pickle.loads(await reader.readexactly(length))  # noqa: S301 - our own child, over a socketpair


def _frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def probes_only(config: Config) -> Config:
    """What the probe process needs: no SNMP credentials cross the process boundary."""
    return config.model_copy(update={"snmp": SnmpConfig(enabled=False, listen=[])})


# -- the agent's side ------------------------------------------------------------------------------


class ProbeProcess:
    """Runs the probes in a child process and records their results in the agent's store.

    Same interface as ProbeScheduler (apply, start, stop), so the agent wires either."""

    def __init__(
        self, store: ResultsStore, health: AgentHealth, log_format: str = "text", log_level: str = "info"
    ) -> None:
        self.store = store
        self.health = health
        self.log_args = [log_format, log_level]
        self._config: Config | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    def apply(self, config: Config) -> None:
        """The agent's store follows the config at once; the probe process follows when told."""
        self._config = probes_only(config)
        self.store.configure(probe_entries(config))
        self._send(("config", self._config))

    def start(self) -> None:
        self._spawn()

    def _spawn(self) -> None:
        assert self._config is not None
        parent, child = socket.socketpair()
        try:
            # The child must not take the agent's terminal signals: the agent stops it in order.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.runtime.probe_process", str(child.fileno()), *self.log_args],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._serve(parent))
        log.info("probe process %d started", self._proc.pid)

    async def _serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        self._writer = writer
        assert self._config is not None
        self._send(("config", self._config))
        try:
            while True:
                message = await _read_frame(reader)
                kind = message[0]
                if kind == "results":
                    for name, result in message[1]:
                        self.store.record(name, result)
                elif kind == "health":
                    self._take_health(message[1])
                elif kind == "stopped":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, pickle.UnpicklingError) as exc:
            if not self._stopping:
                log.error("lost the probe process (%s)", exc or type(exc).__name__)
        finally:
            writer.close()
            self._writer = None
            self._stopped.set()
        if not self._stopping:
            await self._reap(grace=1.0)
            await asyncio.sleep(RESTART_DELAY)
            if not self._stopping:
                self._stopped.clear()
                log.warning("restarting the probe process")
                self._spawn()

    def _take_health(self, facts: dict[str, Any]) -> None:
        self.health.probe_process = facts["process"]
        self.health.in_flight = facts["in_flight"]
        self.health.skipped_runs = facts["skipped_runs"]
        self.health.lateness = facts["lateness"]

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(_frame(message))

    async def stop(self, grace: float) -> None:
        """Ask the probe process to finish in-flight probes within `grace`, then make sure it is gone."""
        self._stopping = True
        self._send(("stop", grace))
        if self._reader_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), grace + 2.0)
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        await self._reap(grace=1.0)

    async def _reap(self, grace: float) -> None:
        """Wait for the probe process to exit, killing it after `grace` seconds; off the event loop,
        which keeps serving SNMP and HTTP meanwhile."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None

        def wait() -> None:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

        await asyncio.to_thread(wait)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


# -- the probe process's side ----------------------------------------------------------------------


def process_facts() -> dict[str, float]:
    """This process's asyncio tasks, open descriptors, resident memory and CPU time."""
    facts: dict[str, float] = {"tasks": len(asyncio.all_tasks())}
    with contextlib.suppress(OSError):
        facts["open_fds"] = len(os.listdir("/proc/self/fd"))
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115 - a one-shot read
        facts["rss_bytes"] = pages * os.sysconf("SC_PAGE_SIZE")
    times = os.times()
    facts["cpu_seconds"] = times.user + times.system
    return facts


class _Worker:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.health = AgentHealth()
        self.scheduler: ProbeScheduler | None = None
        self._results: list[tuple[str, Any]] = []
        self._flush: asyncio.TimerHandle | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(message))

    def add_result(self, name: str, result: Any) -> None:
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

    def apply(self, config: Config) -> None:
        if self.scheduler is None:
            from monitor.probes import ProbeEnv
            from monitor.runtime.scheduler import ProbeScheduler

            env = ProbeEnv.from_config(config)
            # No store here: results go to the agent's, and a second copy of 10,000 results costs ~10 MB.
            self.scheduler = ProbeScheduler(None, self.health, env, config.defaults.max_concurrency)
            self.scheduler.on_result = self.add_result
            self.scheduler.apply(config)
            self.scheduler.start()
        else:
            self.scheduler.apply(config)

    async def report_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY)
            h = self.health
            lateness = LatenessHistogram(counts=list(h.lateness.counts), total=h.lateness.total, count=h.lateness.count)
            self.send(("health", {"in_flight": h.in_flight, "skipped_runs": h.skipped_runs, "lateness": lateness,
                                  "process": process_facts(), "at": time.time()}))


async def _run_worker(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    worker = _Worker(writer)
    health_task = asyncio.get_running_loop().create_task(worker.report_health())
    grace = 2.0
    try:
        while True:
            message = await _read_frame(reader)
            if message[0] == "config":
                worker.apply(message[1])
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
    """`python -m monitor.runtime.probe_process FD LOG_FORMAT LOG_LEVEL`, started by the agent only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when probing stops
    logs.setup(argv[2] if len(argv) > 2 else "text", argv[3] if len(argv) > 3 else "info")
    asyncio.run(_run_worker(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
