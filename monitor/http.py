"""HTTP endpoints: /metrics for Prometheus, /-/healthy and /-/ready for orchestrators."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from monitor.store import ResultsStore

log = logging.getLogger("smtp_monitor.http")


class HttpBindError(Exception):
    """The HTTP listen address could not be bound."""


class MetricsServer:
    """aiohttp in the agent's event loop; the exposition text is rendered in a worker
    thread so that a large scrape does not hold up probe timing."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, store: ResultsStore,
        ready: Callable[[], bool],
    ) -> None:
        self.host, self.port = host, port
        self.registry = registry
        self.store = store
        self.ready = ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/-/healthy", self._healthy)
        app.router.add_get("/-/ready", self._ready)
        app.router.add_get("/", self._index)
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

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        # Take the snapshot here, in the loop that writes the store; render it elsewhere.
        self.store.snapshot()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthy(self, _: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def _ready(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="OK\n")
        return web.Response(status=503, text="not ready\n")

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(text="smtp-monitor: see /metrics\n")
