"""HTTP endpoints: /metrics for Prometheus, /-/healthy and /-/ready for orchestrators, /probe when enabled.

Served through monitor.exporters.bounded_http (connections counted and bounded, a header deadline), which
the status page's own listener shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import yaml
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import ValidationError

from monitor.config.schema import (
    HttpLimits,
    MxCheckConfig,
    ProbeAllow,
    ProbeEndpointConfig,
    SmtpProbeConfig,
    parse_duration,
    split_host_port,
)
from monitor.exporters.bounded_http import BoundedHttpSite, HttpListener
from monitor.exporters.prometheus.metrics import ProbeExposition, single_result_registry
from monitor.model.dialogues import dialogues_text
from monitor.model.probe_result import ProbeResult
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeState, ResultsStore

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


class AdhocBusy(Exception):
    """The bound on ad-hoc probes in flight is reached."""


class ProbeRefused(Exception):
    """A /probe target outside `prometheus.probe_endpoint.allow` (403)."""


class ProbeRateLimited(Exception):
    """The /probe rate limit is spent (429)."""


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class TargetPolicy:
    """Which targets /probe may reach (`prometheus.probe_endpoint.allow`)."""

    def __init__(self, allow: ProbeAllow) -> None:
        self.allow = allow
        self._exact = frozenset(h for h in allow.hosts if not h.startswith("."))
        self._below = tuple(h for h in allow.hosts if h.startswith("."))

    def refusal(self, spec: SmtpProbeConfig | MxCheckConfig) -> str | None:
        """Why `spec` may not run, judged on the request alone (before any DNS lookup); None if it may."""
        if isinstance(spec, MxCheckConfig):
            return None if self.name_allowed(spec.domain) else f"domain {spec.domain} is not in allow.hosts"
        if spec.effective_port not in self.allow.ports:
            return f"port {spec.effective_port} is not in allow.ports"
        address = _ip(spec.host)
        if address is not None:
            return None if self.address_allowed(address) else f"address {spec.host} is not in allow.networks"
        return None if self.name_allowed(spec.host) else f"host {spec.host} is not in allow.hosts"

    def address_refusal(self, host: str, addresses: list[str]) -> str | None:
        """After the lookup of an allowed name: every address must lie in allow.networks, if any are set."""
        if not self.allow.networks:
            return None
        for text in addresses:
            address = _ip(text)
            if address is None or not self.address_allowed(address):
                return f"host {host} resolves to an address outside allow.networks"
        return None

    def name_allowed(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return name in self._exact or any(name.endswith(suffix) for suffix in self._below)

    def address_allowed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        return any(address in network for network in self.allow.networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class AdhocProber:
    """Runs one probe per /probe request: allowed targets only, rate-limited and bounded in flight;
    the results never enter the store."""

    def __init__(self, env: ProbeEnv, config: ProbeEndpointConfig) -> None:
        # Here, not at the top: an agent without /probe runs no probe in its own process.
        from monitor.probes import runners

        self._runners = runners
        self.env = env
        self.config = config
        self.policy = TargetPolicy(config.allow)
        self.bucket = TokenBucket(config.rate_limit.rate, config.rate_limit.burst, time.monotonic())
        self._in_flight = 0

    async def probe(self, query: Mapping[str, str]) -> CollectorRegistry:
        spec, result = await self.run(query)
        return single_result_registry(spec, result)

    async def run(self, query: Mapping[str, str]) -> tuple[SmtpProbeConfig | MxCheckConfig, ProbeResult]:
        """The probe a request asks for, within the allow-list, rate limit and bound in flight."""
        spec = self._spec(query)
        refusal = self.policy.refusal(spec)
        if refusal is not None:
            raise ProbeRefused(refusal)
        if self._in_flight >= self.config.max_concurrency:
            raise AdhocBusy
        if not self.bucket.take(time.monotonic()):
            raise ProbeRateLimited
        self._in_flight += 1
        try:
            if isinstance(spec, SmtpProbeConfig):
                # Resolved once and every address checked before the probe: see run_pinned.
                budget = spec.timeout or self.config.timeout
                pinned = await self._runners.run_pinned(spec, self.env, budget, self.policy.address_refusal)
                if isinstance(pinned, self._runners.Refused):
                    raise ProbeRefused(pinned.why)
                result: ProbeResult = pinned
            else:
                result = await self._runners.run(spec, self.env)
        finally:
            self._in_flight -= 1
        return spec, result

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
                name="adhoc",
                host=host,
                port=port,
                tls=query.get("tls", "starttls"),  # type: ignore[arg-type]  # pydantic validates the literal
                timeout=timeout,
                servername=query.get("servername") or None,
                verify=query.get("verify", "true") != "false",
            )
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


class MetricsServer:
    """aiohttp in the agent's event loop; the exposition text is rendered in a worker
    thread so that a large scrape does not hold up probe timing."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        store: ResultsStore,
        ready: Callable[[], bool],
        adhoc: AdhocProber | None = None,
        health: AgentHealth | None = None,
        limits: HttpLimits | None = None,
        pages: Callable[[web.Application], None] | None = None,
        location: str = "",
    ) -> None:
        self.host, self.port = host, port
        self.pages = pages  # mounts the status page (`/` and below) on this server; None: the plain index
        self.limits = limits or HttpLimits()
        self.site = BoundedHttpSite(self.limits, "HTTP")
        self.health = health
        self.exposition = ProbeExposition(location)  # agent.location: a label on every probe series
        self._render_lock = asyncio.Lock()
        self.registry = registry
        self.store = store
        self.ready = ready
        self.adhoc = adhoc
        self._warmer: asyncio.Task[None] | None = None
        self.rhythm = ScrapeRhythm(time.monotonic())

    async def start(self) -> None:
        self.port = await self.site.start(self.host, self.port, self._routes)
        log.info("serving /metrics on http://%s:%d/metrics", self.host, self.port)
        self._warmer = asyncio.create_task(self._keep_warm(), name="metrics-warmer")

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/-/healthy", self._healthy)
        app.router.add_get("/-/ready", self._ready)
        if self.pages is not None:
            self.pages(app)
        else:
            app.router.add_get("/", self._index)
        if self.adhoc is not None:
            app.router.add_get("/probe", self._probe)

    @property
    def listener(self) -> HttpListener | None:
        return self.site.listener

    async def stop(self) -> None:
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer
            self._warmer = None
        await self.site.stop()

    async def _keep_warm(self) -> None:
        seen = -1
        while True:
            await asyncio.sleep(WARM_EVERY)
            if self.store.version == seen or not self.rhythm.warm_now(time.monotonic()):
                continue
            seen = self.store.version
            await self._warm_pass()

    async def _warm_pass(self) -> None:
        """Format every state of one snapshot, in slices. A call of its own so that the snapshot goes
        with it: held in _keep_warm's locals, the last one outlived its states until the next pass, and
        with nobody scraping there is none (WARM_IDLE). At 10,000 probes that kept 10 MiB of replaced
        states and results (bench/steady_rss.py, 2026-12-07)."""
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
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self._send(request, response, chunks)
        except TimeoutError:
            # A client that stops reading would hold its connection, and a batch, for good.
            if request.transport is not None:
                request.transport.abort()
        return response

    @staticmethod
    async def _send(request: web.Request, response: web.StreamResponse, chunks: list[bytes]) -> None:
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

    def _render(self, states: list[ProbeState]) -> list[bytes]:
        return self.exposition.render_chunks(states, tail=generate_latest(self.registry))

    async def _probe(self, request: web.Request) -> web.Response:
        assert self.adhoc is not None
        # A browser marks the requests a web page makes to another site: such a page may not run probes.
        if request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
            return web.Response(status=403, text="refused: a cross-site request\n")
        debug = request.query.get("debug", "false").lower() == "true"
        try:
            spec, result = await self.adhoc.run(request.query)
        except ProbeRefused as exc:
            return web.Response(status=403, text=f"refused: {exc}\n")
        except ProbeRateLimited:
            return web.Response(
                status=429, text="too many ad-hoc probes, try again later\n", headers={"Retry-After": "1"}
            )
        except AdhocBusy:
            return web.Response(status=503, text="too many ad-hoc probes in flight\n")
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        registry = single_result_registry(spec, result)
        if debug:
            return web.Response(text=debug_page(spec, result, registry), content_type="text/plain")
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


def debug_page(spec: SmtpProbeConfig | MxCheckConfig, result: ProbeResult, registry: CollectorRegistry) -> str:
    """What /probe?debug=true answers, as blackbox_exporter's debug output: the probe's dialogue, the
    metrics it produced and its configuration (secrets masked). The dialogue is bounded and redacted by
    the probe, and served as text/plain: a hostile banner stays text."""
    outcome = "succeeded" if result.ok else f"failed in {_value(result.phase)}: {_value(result.reason)}: {result.error}"
    config = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    return (
        f"Transcript of the probe ({outcome}):\n{dialogues_text(result)}\n\n"
        f"Metrics that would have been returned:\n{generate_latest(registry).decode()}\n"
        f"Probe configuration:\n{config}"
    )


def _value(member: enum.Enum | None) -> str:
    return str(member.value) if member is not None else "?"
