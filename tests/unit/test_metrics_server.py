"""monitor.http.MetricsServer: the exposition kept warm between scrapes, and left cold when nobody scrapes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from monitor import http
from monitor.health import AgentHealth
from monitor.http import MetricsServer
from monitor.metrics import build_agent_registry
from monitor.store import ResultsStore
from tests.unit.test_metrics import SMTP, SMTP_IMPLICIT, smtp_ok


def _store() -> ResultsStore:
    store = ResultsStore(announce=False)
    store.configure([(SMTP, 2, 14), (SMTP_IMPLICIT, 2, 14)])
    return store


async def _serving(store: ResultsStore, body: Callable[[MetricsServer], Awaitable[None]]) -> None:
    health = AgentHealth()
    server = MetricsServer("127.0.0.1", 0, build_agent_registry(health), store, ready=lambda: True, health=health)
    await server.start()
    try:
        await body(server)
    finally:
        await server.stop()


async def _scrape(server: MetricsServer) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


class TestMetricsServerWarming:
    def test_results_are_formatted_before_the_scrape_and_not_again_by_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(http, "WARM_EVERY", 0.01)
        store = _store()

        async def body(server: MetricsServer) -> None:
            store.record("relay", smtp_ok())
            store.record("smtps", smtp_ok())
            await _until(lambda: server.exposition.formatted == 2, "the warmer never formatted the two probes")
            text = await _scrape(server)
            assert server.exposition.formatted == 2
            assert 'smtp_probe_success{probe="relay",' in text
            assert 'smtp_probe_runs_total{probe="smtps"} 1.0' in text

        asyncio.run(_serving(store, body))

    def test_a_result_after_the_scrape_is_warmed_for_the_next_one(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(http, "WARM_EVERY", 0.01)
        store = _store()

        async def body(server: MetricsServer) -> None:
            await _scrape(server)
            formatted = server.exposition.formatted
            store.record("relay", smtp_ok())
            await _until(lambda: server.exposition.formatted == formatted + 1, "the new result was never warmed")
            text = await _scrape(server)
            assert server.exposition.formatted == formatted + 1
            assert 'smtp_probe_runs_total{probe="relay"} 1.0' in text

        asyncio.run(_serving(store, body))

    def test_nothing_is_formatted_ahead_while_nobody_scrapes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(http, "WARM_EVERY", 0.01)
        monkeypatch.setattr(http, "WARM_IDLE", 0.0)
        store = _store()

        async def body(server: MetricsServer) -> None:
            store.record("relay", smtp_ok())
            await asyncio.sleep(0.3)  # thirty warming periods
            assert server.exposition.formatted == 0
            text = await _scrape(server)  # the scrape formats what it needs
            assert server.exposition.formatted == 2
            assert 'smtp_probe_runs_total{probe="relay"} 1.0' in text

        asyncio.run(_serving(store, body))
