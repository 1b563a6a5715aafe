"""HTTP endpoints: /metrics for Prometheus, /-/healthy and /-/ready for orchestrators, /probe when enabled.

The agent accepts its HTTP connections itself (`HttpListener`) instead of through aiohttp's site:
aiohttp keeps a connection whose request headers never end for its keep-alive time (an hour by
default), accepts until the process runs out of descriptors, and asyncio then logs a traceback per
failed accept. Here connections are counted and bounded (`prometheus.http`), a connection that has
not sent a request within `header_timeout` is closed, failed accepts are logged once per minute,
and at the bound a new connection displaces the oldest one with no request running, so that a
scraper gets in while a flood of half-sent requests holds every slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ipaddress
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import yaml
from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError
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
from monitor.exporters.prometheus.metrics import ProbeExposition, single_result_registry
from monitor.model.dialogues import dialogues_text
from monitor.model.probe_result import ProbeResult
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeState, ResultsStore

if TYPE_CHECKING:
    from monitor.probes import ProbeEnv

_WRITE_BATCH = 256 * 1024  # octets per write of /metrics: bounded buffers, few syscalls

SERVER_NAME = "smtp-monitor"  # the Server header: a product name, no versions to look vulnerabilities up by
LISTEN_BACKLOG = 128  # connections the kernel queues while every slot runs a request
ACCEPT_RETRY = 0.25  # seconds between accepts while the process has no descriptor to spare
LOG_EVERY = 60.0  # at most one line per minute about failed accepts, and one about malformed requests
SHUTDOWN_GRACE = 3.0  # seconds requests in flight get at stop (aiohttp's default is 60)

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


class Throttle:
    """At most one log line per `every` seconds about one kind of event, counting the events in between."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.total = 0
        self._since_line = 0
        self._next_line = 0.0

    def note(self, now: float) -> int | None:
        """Count one event: the events since the last line (this one included) when a line is due now, else None."""
        self.total += 1
        self._since_line += 1
        if now < self._next_line:
            return None
        self._next_line = now + self.every
        count, self._since_line = self._since_line, 0
        return count


class _ThrottledServerLog(logging.Filter):
    """aiohttp logs an ERROR with a traceback for every malformed request, which lets any client fill the
    log: one line per LOG_EVERY instead, and a client's malformed request without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = Throttle(LOG_EVERY)

    def filter(self, record: logging.LogRecord) -> bool:
        count = self.throttle.note(time.monotonic())
        if count is None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):  # the client's fault, not the agent's: no traceback
            first_line = (str(exc.message).strip().splitlines() or [type(exc).__name__])[0]
            record.args = (record.getMessage(), first_line[:200], count, LOG_EVERY)
            record.msg = "%s: %s (%d malformed requests since the last such line, one line per %.0f s at most)"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


_server_log = logging.getLogger("smtp_monitor.http.server")
_server_log.addFilter(_ThrottledServerLog())


def _descriptor_share() -> int:
    """At most half the process's descriptors for HTTP connections: SNMP, the state database, the probe
    process's pipes and a SIGHUP reload keep the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(16, soft // 2)


class _Connection:
    """One accepted connection: requests started on it and running now, and its header deadline."""

    __slots__ = ("deadline", "handler", "running", "started", "transport")

    def __init__(self, handler: asyncio.Protocol) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.started = 0
        self.running = 0
        self.deadline: asyncio.TimerHandle | None = None


class _Tracked(asyncio.Protocol):
    """aiohttp's request handler behind a proxy that tells the listener when the connection comes and goes."""

    __slots__ = ("_inner", "_listener")

    def __init__(self, inner: asyncio.Protocol, listener: HttpListener) -> None:
        self._inner = inner
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener.connection_made(self._inner, transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._listener.connection_lost(self._inner)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class HttpListener:
    """Listening sockets and an accept loop of our own, with every connection counted.

    At `max_connections` (or half the descriptor limit, if lower) a new connection displaces the
    oldest connection that has no request running: a half-sent request or an idle keep-alive. A
    scraper's connection is the newest and sends its request at once, so it is answered while a flood
    of half-open connections holds every slot; closing the new connection instead would refuse the
    scraper until the flood's header deadlines ran out. Only when every slot runs a request does the
    loop stop accepting, and new connections wait in the kernel's backlog (LISTEN_BACKLOG)."""

    def __init__(self, limits: HttpLimits) -> None:
        self._factory: Callable[[], asyncio.Protocol] | None = None  # aiohttp's, given to start()
        self.limits = limits
        self.max_connections = min(limits.max_connections, _descriptor_share())
        self._open: dict[asyncio.Protocol, _Connection] = {}  # in accept order: the oldest is displaced first
        self._room = asyncio.Event()
        self._sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._accept_failures = Throttle(LOG_EVERY)
        self._accept_failing_since: int | None = None  # accept failures counted when the last line was logged
        self.displaced = 0
        self.header_timeouts = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def bind(self, host: str, port: int) -> int:
        """Listen on every address of `host` (one, for an IP address); returns the port."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                port = port or sock.getsockname()[1]  # port 0: every address on the port the first one got
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
        except OSError:
            self.close_sockets()
            raise
        if self.max_connections < self.limits.max_connections:
            log.info("HTTP connections capped at %d, half the descriptor limit", self.max_connections)
        return port

    def start(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self._factory = factory
        self._tasks = [asyncio.create_task(self._accept(sock), name="http-accept") for sock in self._sockets]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.close_sockets()

    def close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def abort_all(self) -> None:
        for conn in list(self._open.values()):
            self._close(conn)

    # -- accepting --------------------------------------------------------------------------
    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._has_room():
                self._room.clear()
                await self._room.wait()
            try:
                conn, _ = await loop.sock_accept(listening)
            except ConnectionAbortedError:
                continue  # the client went away while queued
            except OSError as exc:
                await self._accept_failed(exc)
                continue
            self._accept_succeeded()
            if len(self._open) >= self.max_connections and not self._displace_oldest_waiting():
                conn.close()  # another listening socket took the last slot since _has_room()
                continue
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()

    def _has_room(self) -> bool:
        return len(self._open) < self.max_connections or any(c.running == 0 for c in self._open.values())

    async def _accept_failed(self, exc: OSError) -> None:
        # Out of descriptors: give up the oldest waiting connection so that the next accept gets one.
        freed = exc.errno in (errno.EMFILE, errno.ENFILE) and self._displace_oldest_waiting()
        count = self._accept_failures.note(time.monotonic())
        if count is not None:
            if self._accept_failing_since is None:
                self._accept_failing_since = self._accept_failures.total - count
            log.warning(
                "HTTP: cannot accept a connection: %s (%d failed accepts since the last such line); "
                "connections without a request running are closed to make room",
                exc.strerror or exc,
                count,
            )
        # abort() closes the descriptor in the next turn of the loop; the next accept comes after it.
        await asyncio.sleep(0 if freed else ACCEPT_RETRY)

    def _accept_succeeded(self) -> None:
        if self._accept_failing_since is not None:
            log.info(
                "HTTP: accepting connections again after %d failed accepts",
                self._accept_failures.total - self._accept_failing_since,
            )
            self._accept_failing_since = None

    def _displace_oldest_waiting(self) -> bool:
        for conn in self._open.values():
            if conn.running == 0 and conn.transport is not None:
                self.displaced += 1
                self._close(conn)
                return True
        return False

    def _close(self, conn: _Connection) -> None:
        self._open.pop(conn.handler, None)
        if conn.deadline is not None:
            conn.deadline.cancel()
        if conn.transport is not None:
            conn.transport.abort()  # not close(): a client that does not read would keep it open
        self._room.set()

    # -- the connections --------------------------------------------------------------------
    def _protocol(self) -> asyncio.Protocol:
        assert self._factory is not None
        handler = self._factory()
        self._open[handler] = _Connection(handler)
        return _Tracked(handler, self)

    def connection_made(self, handler: asyncio.Protocol, transport: asyncio.BaseTransport) -> None:
        conn = self._open.get(handler)
        if conn is not None:
            assert isinstance(transport, asyncio.Transport)
            conn.transport = transport
            loop = asyncio.get_running_loop()
            conn.deadline = loop.call_later(self.limits.header_timeout, self._headers_overdue, conn)

    def connection_lost(self, handler: asyncio.Protocol) -> None:
        conn = self._open.pop(handler, None)
        if conn is not None and conn.deadline is not None:
            conn.deadline.cancel()
        self._room.set()

    def _headers_overdue(self, conn: _Connection) -> None:
        conn.deadline = None
        if conn.started == 0 and conn.handler in self._open:
            self.header_timeouts += 1
            self._close(conn)

    @web.middleware
    async def track_requests(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Counts requests per connection: one running is not displaced, one started ends the header deadline.
        After a response aiohttp's keep-alive timer (`idle_timeout`) bounds the wait for the next request."""
        conn = self._open.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.started += 1
        conn.running += 1
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        try:
            return await handler(request)
        finally:
            conn.running -= 1
            if conn.running == 0:
                self._room.set()


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
        self.listener: HttpListener | None = None
        self.health = health
        self.exposition = ProbeExposition(location)  # agent.location: a label on every probe series
        self._render_lock = asyncio.Lock()
        self.registry = registry
        self.store = store
        self.ready = ready
        self.adhoc = adhoc
        self._runner: web.AppRunner | None = None
        self._warmer: asyncio.Task[None] | None = None
        self.rhythm = ScrapeRhythm(time.monotonic())

    async def start(self) -> None:
        # aiohttp's own answers to malformed requests never reach the app's hooks; they take this name.
        web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]  # imported there, not exported
        listener = HttpListener(self.limits)
        app = web.Application(middlewares=[listener.track_requests])
        app.on_response_prepare.append(_server_header)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/-/healthy", self._healthy)
        app.router.add_get("/-/ready", self._ready)
        if self.pages is not None:
            self.pages(app)
        else:
            app.router.add_get("/", self._index)
        if self.adhoc is not None:
            app.router.add_get("/probe", self._probe)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            logger=_server_log,
            keepalive_timeout=self.limits.idle_timeout,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        try:
            self.port = await listener.bind(self.host, self.port)
        except OSError as exc:
            await self._runner.cleanup()
            raise HttpBindError(f"cannot listen on {self.host}:{self.port} for HTTP: {exc.strerror or exc}") from None
        listener.start(self._runner.server)
        self.listener = listener
        log.info("serving /metrics on http://%s:%d/metrics", self.host, self.port)
        self._warmer = asyncio.create_task(self._keep_warm(), name="metrics-warmer")

    async def stop(self) -> None:
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer
            self._warmer = None
        if self.listener is not None:
            await self.listener.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.listener is not None:
            self.listener.abort_all()  # what the runner's grace left open: a client that does not read
            self.listener = None

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


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
