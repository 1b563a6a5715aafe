"""HTTP endpoints: /metrics for Prometheus, /-/healthy and /-/ready for orchestrators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import ValidationError

from monitor.config import MxCheckConfig, ProbeEndpointConfig, SmtpProbeConfig, parse_duration, split_host_port
from monitor.health import AgentHealth
from monitor.metrics import ProbeExposition, single_result_registry
from monitor.store import ProbeState, ResultsStore

if TYPE_CHECKING:
    from monitor.probes import ProbeEnv

_WRITE_BATCH = 256 * 1024  # octets per write of /metrics: bounded buffers, few syscalls

log = logging.getLogger("smtp_monitor.http")

# Keeping the exposition warm: every WARM_EVERY seconds, while ScrapeRhythm says it pays, the probes
# that ran since are formatted in slices of WARM_SLICE seconds of the event loop (which also answers
# SNMP), so that a scrape only joins cached lines.
WARM_EVERY = 1.0
WARM_SLICE = 0.002
WARM_LEAD = 5.0
WARM_IDLE = 600.0


class ScrapeRhythm:
    """When formatting ahead of a scrape pays: before the first scrape (so that it is fast too), then
    in the last WARM_LEAD seconds before the next scrape is due by the interval of the last two.

    Warming on every result instead would format a probe that runs every 2 s seven times per 15 s
    scrape interval where the scrape formats it once. With nobody scraping for WARM_IDLE seconds
    (or three intervals, if longer), the work is left to the next scrape."""

    def __init__(self, started: float) -> None:
        self._started = started
        self._last: float | None = None
        self._interval: float | None = None

    def scraped(self, now: float) -> None:
        if self._last is not None:
            self._interval = now - self._last
        self._last = now

    def warm_now(self, now: float) -> bool:
        if self._last is None:
            return now - self._started <= WARM_IDLE
        if self._interval is None:
            return False  # one scrape so far: when the next one comes is not known yet
        if now - self._last > max(WARM_IDLE, 3 * self._interval):
            return False
        return now >= self._last + self._interval - min(WARM_LEAD, self._interval / 2)


class HttpBindError(Exception):
    """The HTTP listen address could not be bound."""


class AdhocBusy(Exception):
    """The bound on ad-hoc probes in flight is reached."""


class AdhocProber:
    """Runs one probe per /probe request, bounded; the results never enter the store."""

    def __init__(self, env: ProbeEnv, config: ProbeEndpointConfig) -> None:
        # Here, not at the top: an agent without /probe runs no probe in its own process.
        from monitor.probes import mx, smtp

        self._run_smtp, self._run_mx = smtp.run, mx.run
        self.env = env
        self.config = config
        self._in_flight = 0

    async def probe(self, query: Mapping[str, str]) -> CollectorRegistry:
        if self._in_flight >= self.config.max_concurrency:
            raise AdhocBusy
        spec = self._spec(query)
        self._in_flight += 1
        try:
            result = await (
                self._run_smtp(spec, self.env) if isinstance(spec, SmtpProbeConfig) else self._run_mx(spec, self.env)
            )
        finally:
            self._in_flight -= 1
        return single_result_registry(spec, result)

    def _spec(self, query: Mapping[str, str]) -> SmtpProbeConfig | MxCheckConfig:
        target = query.get("target", "")
        if not target:
            raise ValueError("target is required: /probe?target=HOST[:PORT]&tls=starttls")
        timeout = min(parse_duration(query.get("timeout", self.config.timeout)), self.config.timeout)
        try:
            if query.get("module", "smtp") == "mx":
                return MxCheckConfig(name="adhoc", domain=target, timeout=timeout)
            host, port = split_host_port(target, None)
            return SmtpProbeConfig(
                name="adhoc", host=host, port=port, tls=query.get("tls", "starttls"), timeout=timeout,  # type: ignore[arg-type]
                servername=query.get("servername") or None, verify=query.get("verify", "true") != "false",
            )
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


class MetricsServer:
    """aiohttp in the agent's event loop; the exposition text is rendered in a worker
    thread so that a large scrape does not hold up probe timing."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, store: ResultsStore,
        ready: Callable[[], bool], adhoc: AdhocProber | None = None, health: AgentHealth | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.health = health
        self.exposition = ProbeExposition()
        self._render_lock = asyncio.Lock()
        self.registry = registry
        self.store = store
        self.ready = ready
        self.adhoc = adhoc
        self._runner: web.AppRunner | None = None
        self._warmer: asyncio.Task[None] | None = None
        self.rhythm = ScrapeRhythm(time.monotonic())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/-/healthy", self._healthy)
        app.router.add_get("/-/ready", self._ready)
        app.router.add_get("/", self._index)
        if self.adhoc is not None:
            app.router.add_get("/probe", self._probe)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise HttpBindError(f"cannot listen on {self.host}:{self.port} for HTTP: {exc.strerror or exc}") from None
        sockets = getattr(site._server, "sockets", None) or []
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        log.info("serving /metrics on http://%s:%d/metrics", self.host, self.port)
        self._warmer = asyncio.create_task(self._keep_warm(), name="metrics-warmer")

    async def stop(self) -> None:
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer
            self._warmer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _keep_warm(self) -> None:
        seen = -1
        while True:
            await asyncio.sleep(WARM_EVERY)
            if self.store.version == seen or not self.rhythm.warm_now(time.monotonic()):
                continue
            seen = self.store.version
            current = self.store.snapshot().states
            states = iter(current.values())
            done = False
            while not done:
                async with self._render_lock:  # a render in its thread shares the cache
                    done = self.exposition.warm(states, time.perf_counter() + WARM_SLICE)
                    if done:
                        self.exposition.retain(current)
                await asyncio.sleep(0)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.rhythm.scraped(time.monotonic())
        # Take the snapshot here, in the loop that writes the store; format it in a worker thread.
        states = list(self.store.snapshot().states.values())
        if self.health is not None:
            self.health.agent_tasks = len(asyncio.all_tasks())
        async with self._render_lock:  # one render at a time: they share the per-probe cache
            chunks = await asyncio.to_thread(self._render, states)
        # Streamed in batches: the cached pieces are immutable, so a slow scraper holds no lock.
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
        response.content_length = sum(len(chunk) for chunk in chunks)
        await response.prepare(request)
        batch: list[bytes] = []
        size = 0
        for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if size >= _WRITE_BATCH:
                await response.write(b"".join(batch))
                batch, size = [], 0
        await response.write(b"".join(batch))
        await response.write_eof()
        return response

    def _render(self, states: list[ProbeState]) -> list[bytes]:
        return self.exposition.render_chunks(states, tail=generate_latest(self.registry))

    async def _probe(self, request: web.Request) -> web.Response:
        assert self.adhoc is not None
        try:
            registry = await self.adhoc.probe(request.query)
        except AdhocBusy:
            return web.Response(status=503, text="too many ad-hoc probes in flight\n")
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def _healthy(self, _: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def _ready(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="OK\n")
        return web.Response(status=503, text="not ready\n")

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(text="smtp-monitor: see /metrics\n")
