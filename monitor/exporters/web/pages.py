"""The status page: HTML for people, the same data as JSON for scripts; read-only, escaped, bounded.

Every value a monitored server wrote (banners, replies, certificate names, transcripts) reaches the
HTML only through Jinja2's autoescaping, and the Content-Security-Policy allows no script at all, so a
hostile banner shows as text. No config is rendered beyond a probe's target: no secret can show.
Pages are rendered in a worker thread from an immutable store snapshot, at most RENDERS_AT_ONCE at a
time, so that a burst of page loads neither holds up probe timing nor piles up memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.config.schema import HttpLimits
from monitor.exporters.bounded_http import BoundedHttpSite
from monitor.exporters.web import view
from monitor.exporters.web.view import BadQuery, Filters, History
from monitor.state.store import ResultsStore

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from jinja2 import Environment

log = logging.getLogger("smtp_monitor.status_page")

RENDERS_AT_ONCE = 4  # page renders in worker threads at a time; more requests wait their turn
HEADERS = {
    # No script may run at all: the page has none, so injected markup could do nothing even if it got in.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(epoch: float, now: float) -> str:
    delta = now - epoch
    future = delta < 0
    delta = abs(delta)
    if delta < 90:
        text = f"{delta:.0f} s"
    elif delta < 5400:
        text = f"{delta / 60:.0f} min"
    elif delta < 172800:
        text = f"{delta / 3600:.0f} h"
    else:
        text = f"{delta / 86400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


def _pct(fraction: float) -> str:
    if fraction >= 1.0:
        return "100 %"
    return f"{min(fraction * 100, 99.99):.2f} %"  # 99.996 % is not shown as 100 % while a run failed


def _secs(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def environment() -> Environment:
    # Jinja2 is loaded with the first page, not at start: 24 ms of start-up and about 2 MiB of the agent's
    # resident memory (2026-12-07) that an agent only answering Prometheus and SNMP never needs.
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("monitor.exporters.web", "templates"),
        autoescape=True,  # every template, whatever its name: all of them are HTML
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(utc=_utc, ago=_ago, pct=_pct, secs=_secs)
    env.globals.update(kinds=view.KINDS, statuses=view.STATUSES, kind_names=view.KIND_NAMES)
    return env


_TEMPLATES = ("overview.html", "probe.html", "missing.html")
TEMPLATE_ROOT: Traversable = resources.files(__package__) / "templates"  # where environment()'s loader looks


class StatusPageUnavailable(Exception):
    """The page cannot be served from this installation (its templates are missing)."""


class StatusPage:
    """The routes of the status page, mounted on an aiohttp application (the Prometheus server's or
    StatusPageServer's). Its links are relative ("./", "../"), so that the page also works behind a reverse
    proxy that serves it under a path of its own (https://example.net/mail-status/)."""

    def __init__(
        self,
        store: ResultsStore,
        history: History | None,
        per_page: int = 100,
        config_path: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.history = history
        self.per_page = per_page
        self.config_path = config_path
        self.clock = clock
        # Found now, loaded and compiled at the first page (the environment keeps them): compiling the three
        # takes 0.05 s, which a start at 10,000 probes would otherwise spend before /-/ready.
        for name in _TEMPLATES:
            if not TEMPLATE_ROOT.joinpath(name).is_file():  # an installation built without the package's data
                raise StatusPageUnavailable(f"template {name} is not installed with monitor.exporters.web")
        self._env: Environment | None = None
        self._env_lock = threading.Lock()  # the first pages may render in several worker threads at once
        self._renders = asyncio.Semaphore(RENDERS_AT_ONCE)

    @property
    def env(self) -> Environment:
        with self._env_lock:
            if self._env is None:
                self._env = environment()
            return self._env

    def mount(self, app: web.Application) -> None:
        """GET (and HEAD) routes only: anything else gets 405 from aiohttp."""
        app.router.add_get("/", self._overview_page)
        app.router.add_get("/probe/{name}", self._probe_page)
        app.router.add_get("/api/probes", self._overview_json)
        app.router.add_get("/api/probes/{name}", self._probe_json)

    # -- the work, in a worker thread -------------------------------------------------------
    def render_overview(self, filters: Filters) -> str:
        now = self.clock()
        states = self.store.snapshot().states
        data = view.overview(states, self.history, filters, self.per_page, now)
        return self.env.get_template("overview.html").render(o=data, now=now, config_path=self.config_path, root="./")

    def overview_json(self, filters: Filters) -> str:
        now = self.clock()
        data = view.overview(self.store.snapshot().states, self.history, filters, self.per_page, now, charts=False)
        return json.dumps(data.as_json())

    def render_probe(self, name: str) -> str | None:
        state = self.store.snapshot().states.get(name)
        if state is None:
            return None
        now = self.clock()
        return self.env.get_template("probe.html").render(d=view.detail(state, self.history, now), now=now, root="../")

    def render_missing(self, name: str) -> str:
        """The 404 page: in a worker thread like the others, as its template compiles at its first use."""
        return self.env.get_template("missing.html").render(name=name[: view.MAX_QUERY], root="../")

    def probe_json(self, name: str) -> str | None:
        state = self.store.snapshot().states.get(name)
        if state is None:
            return None
        return json.dumps(view.detail(state, self.history, self.clock()).as_json())

    # -- handlers ---------------------------------------------------------------------------
    async def _run(self, work: Callable[..., str | None], *args: Any) -> str | None:
        async with self._renders:
            return await asyncio.to_thread(work, *args)

    async def _overview_page(self, request: web.Request) -> web.Response:
        try:
            filters = Filters.parse(request.query)
        except BadQuery as exc:
            return _text(400, f"bad query: {exc}\n")
        return _html(200, await self._run(self.render_overview, filters) or "")

    async def _overview_json(self, request: web.Request) -> web.Response:
        try:
            filters = Filters.parse(request.query)
        except BadQuery as exc:
            return _json(400, json.dumps({"error": str(exc)}))
        return _json(200, await self._run(self.overview_json, filters) or "")

    async def _probe_page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        page = await self._run(self.render_probe, name)
        if page is None:
            return _html(404, await self._run(self.render_missing, name) or "")
        return _html(200, page)

    async def _probe_json(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        text = await self._run(self.probe_json, name)
        if text is None:
            return _json(404, json.dumps({"error": "no such probe", "name": name[: view.MAX_QUERY]}))
        return _json(200, text)


def _html(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8", headers=HEADERS)


def _json(status: int, body: str) -> web.Response:
    # "<" as \u003c: the same JSON, and no markup even for a client that sniffs it as HTML
    return web.Response(
        status=status, text=body.replace("<", "\\u003c"), content_type="application/json", headers=HEADERS
    )


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain", headers=HEADERS)


class StatusPageServer:
    """The status page on an address of its own (`status_page.listen`), e.g. one that only a reverse
    proxy with authentication reaches, apart from the scrapers' /metrics. Its connections are bounded
    as the Prometheus listener's are (`prometheus.http`: count, header deadline, keep-alive)."""

    def __init__(self, page: StatusPage, host: str, port: int, limits: HttpLimits | None = None) -> None:
        self.page = page
        self.host, self.port = host, port
        self.site = BoundedHttpSite(limits or HttpLimits(), "the status page")

    async def start(self) -> None:
        """Listen (HttpBindError when the address cannot be bound)."""
        self.port = await self.site.start(self.host, self.port, self.page.mount)

    async def stop(self) -> None:
        await self.site.stop()
