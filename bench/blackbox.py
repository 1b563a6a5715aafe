"""prometheus-blackbox-exporter as the anchor, and an aiohttp client that drives its /probe."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import http_get, log, on_exit, stop_process
from tests.support.ports import HOST, free_tcp_port

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
HELO = "bench.test"


def modules(ca_file: Path, server_name: str, query_name: str) -> dict[str, Any]:
    """The same dialogues as the agent's probes: STARTTLS, implicit TLS, and an MX query."""
    tls_config = {"ca_file": str(ca_file), "server_name": server_name}
    ehlo = [{"send": f"EHLO {HELO}\r"}, {"expect": "^250 "}]  # blackbox appends "\n"
    quit_ = [{"send": "QUIT\r"}, {"expect": "^221 "}]
    tcp = {"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False, "tls_config": tls_config}
    return {
        "modules": {
            "smtp_starttls": {
                "prober": "tcp",
                "timeout": "10s",
                "tcp": {
                    **tcp,
                    "query_response": [
                        {"expect": "^220 "},
                        *ehlo,
                        {"send": "STARTTLS\r"},
                        {"expect": "^220 "},
                        {"starttls": True},
                        *ehlo,
                        *quit_,
                    ],
                },
            },
            "smtp_implicit": {
                "prober": "tcp",
                "timeout": "10s",
                "tcp": {**tcp, "tls": True, "query_response": [{"expect": "^220 "}, *ehlo, *quit_]},
            },
            "dns_mx": {
                "prober": "dns",
                "timeout": "5s",
                "dns": {
                    "transport_protocol": "udp",
                    "preferred_ip_protocol": "ip4",
                    "ip_protocol_fallback": False,
                    "query_name": query_name,
                    "query_type": "MX",
                    "valid_rcodes": ["NOERROR"],
                },
            },
        }
    }


class BlackboxExporter:
    """One blackbox_exporter process on a free loopback port with our modules."""

    def __init__(
        self, workdir: Path, ca_file: Path, server_name: str = "mail.test", query_name: str = "good.test"
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.config_file = workdir / "blackbox.yml"
        self.log_file = workdir / "blackbox.log"
        self.config_file.write_text(yaml.safe_dump(modules(ca_file, server_name, query_name)))
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop_now: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    BLACKBOX,
                    f"--config.file={self.config_file}",
                    f"--web.listen-address={HOST}:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        self._stop_now = on_exit(f"blackbox {proc.pid}", lambda: stop_process(proc))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"blackbox exited {proc.returncode}: {self.log_file.read_text()[-2000:]}")
            if http_get(self.url + "/-/healthy", timeout=1.0)[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"blackbox_exporter not healthy within {timeout:.0f} s")

    def stop(self) -> None:
        if self._stop_now is not None:
            self._stop_now()
            self._stop_now = None

    def check(self, module: str, target: str) -> str:
        """One probe by hand: the exposition text, to fail loudly on a wrong module before a run."""
        status, body, _ = http_get(f"{self.url}/probe?module={module}&target={target}&debug=true", 15.0)
        text = body.decode(errors="replace")
        if status != 200 or "probe_success 1" not in text:
            raise RuntimeError(f"blackbox {module} against {target} did not succeed:\n{text[-3000:]}")
        return text


@dataclass
class DriveResult:
    """Completion times (monotonic) of successful and failed probes, and how late sends were."""

    ok_at: list[float] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    max_send_lag: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, start: float, end: float) -> tuple[int, int]:
        """(ok, failed) completions within [start, end)."""
        ok = sum(1 for t in self.ok_at if start <= t < end)
        failed = sum(1 for t in self.failed_at if start <= t < end)
        return ok, failed


async def drive(
    url: str,
    rate: float | None,
    concurrency: int,
    duration: float,
    on_mark: list[tuple[float, Callable[[], None]]] | None = None,
) -> DriveResult:
    """GET `url` for `duration` s: paced at `rate`/s with at most `concurrency` in flight, or
    closed-loop with `concurrency` workers when `rate` is None. `on_mark` callbacks run at
    their offsets (seconds from start), for CPU samples of the probed process."""
    result = DriveResult()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + duration
    mono0 = time.monotonic() - t0  # loop.time() is monotonic on Linux; keep the offset anyway
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)

    async def one(session: aiohttp.ClientSession) -> None:
        started = loop.time()
        try:
            async with session.get(url) as resp:
                body = await resp.read()
            ok = resp.status == 200 and b"\nprobe_success 1" in body
            if not ok:
                key = f"http {resp.status}" if resp.status != 200 else "probe_success 0"
                result.errors[key] = result.errors.get(key, 0) + 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
        done = loop.time()
        result.latencies.append(done - started)
        (result.ok_at if ok else result.failed_at).append(done + mono0)

    marks = sorted(on_mark or [], key=lambda m: m[0])

    async def run_marks() -> None:
        for offset, callback in marks:
            await asyncio.sleep(max(0.0, t0 + offset - loop.time()))
            callback()

    mark_task = loop.create_task(run_marks())
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if rate is None:

            async def worker() -> None:
                while loop.time() < end:
                    await one(session)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            sem = asyncio.Semaphore(concurrency)
            tasks: set[asyncio.Task[None]] = set()

            async def guarded() -> None:
                try:
                    await one(session)
                finally:
                    sem.release()

            total = int(duration * rate)
            for i in range(total):
                due = t0 + i / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                result.max_send_lag = max(result.max_send_lag, loop.time() - due)
                task = loop.create_task(guarded())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=30)
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(mark_task, timeout=max(0.0, end - loop.time()) + 5)
    if result.errors:
        log(f"  blackbox driver errors: {result.errors}")
    return result
