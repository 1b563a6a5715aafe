"""HTTP servers of the exporters (Prometheus /metrics, the status page) on a listener of their own.

The agent accepts its HTTP connections itself (`HttpListener`) instead of through aiohttp's site:
aiohttp keeps a connection whose request headers never end for its keep-alive time (an hour by
default), accepts until the process runs out of descriptors, and asyncio then logs a traceback per
failed accept. Here connections are counted and bounded (`HttpLimits`), a connection that has not
sent a request within `header_timeout` is closed, failed accepts are logged once per minute, and at
the bound a new connection displaces the oldest one with no request running, so that a scraper (or
a person) gets in while a flood of half-sent requests holds every slot. `BoundedHttpSite` serves one
aiohttp application so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError

from monitor.config.schema import HttpLimits

SERVER_NAME = "smtp-monitor"  # the Server header: a product name, no versions to look vulnerabilities up by
LISTEN_BACKLOG = 128  # connections the kernel queues while every slot runs a request
ACCEPT_RETRY = 0.25  # seconds between accepts while the process has no descriptor to spare
LOG_EVERY = 60.0  # at most one line per minute about failed accepts, and one about malformed requests
SHUTDOWN_GRACE = 3.0  # seconds requests in flight get at stop (aiohttp's default is 60)

log = logging.getLogger("smtp_monitor.http")


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


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


class BoundedHttpSite:
    """One aiohttp application served through an HttpListener: bounded connections, header deadline,
    keep-alive of `limits.idle_timeout`, a Server header without versions, throttled error logs."""

    def __init__(self, limits: HttpLimits, what: str) -> None:
        self.limits = limits
        self.what = what  # for the bind error: "HTTP", "the status page"
        self.listener: HttpListener | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, routes: Callable[[web.Application], None]) -> int:
        """Serve the routes `routes` adds on host:port (port 0: any); returns the port (HttpBindError)."""
        # aiohttp's own answers to malformed requests never reach the app's hooks; they take this name.
        web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]  # imported there, not exported
        listener = HttpListener(self.limits)
        app = web.Application(middlewares=[listener.track_requests])
        app.on_response_prepare.append(_server_header)
        routes(app)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            logger=_server_log,
            keepalive_timeout=self.limits.idle_timeout,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await runner.setup()
        assert runner.server is not None
        try:
            port = await listener.bind(host, port)
        except OSError as exc:
            await runner.cleanup()
            raise HttpBindError(f"cannot listen on {host}:{port} for {self.what}: {exc.strerror or exc}") from None
        listener.start(runner.server)
        self.listener, self._runner = listener, runner
        return port

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.listener is not None:
            self.listener.abort_all()  # what the runner's grace left open: a client that does not read
            self.listener = None
