"""monitor.http.MetricsServer and ScrapeRhythm: the exposition formatted ahead of the scrapes that need it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from monitor import http
from monitor.health import AgentHealth
from monitor.http import WARM_IDLE, WARM_LEAD, MetricsServer, ScrapeRhythm
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
    @pytest.fixture(autouse=True)
    def _warm_often(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(http, "WARM_EVERY", 0.01)  # a warming pass every 10 ms instead of every second

    def test_results_are_formatted_before_the_scrape_and_not_again_by_it(self) -> None:
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

    def test_between_the_first_and_second_scrape_nothing_is_formatted_ahead(self) -> None:
        store = _store()

        async def body(server: MetricsServer) -> None:
            await _scrape(server)
            formatted = server.exposition.formatted
            store.record("relay", smtp_ok())
            await asyncio.sleep(0.3)  # thirty warming periods
            assert server.exposition.formatted == formatted
            await _scrape(server)
            assert server.exposition.formatted == formatted + 1

        asyncio.run(_serving(store, body))

    def test_once_scrapes_have_a_rhythm_a_result_is_formatted_before_the_next_scrape(self) -> None:
        store = _store()

        async def body(server: MetricsServer) -> None:
            await _scrape(server)
            await _scrape(server)  # a short interval: the next scrape is due at once
            formatted = server.exposition.formatted
            store.record("relay", smtp_ok())
            await _until(lambda: server.exposition.formatted == formatted + 1, "the new result was never warmed")
            text = await _scrape(server)
            assert server.exposition.formatted == formatted + 1
            assert 'smtp_probe_runs_total{probe="relay"} 1.0' in text

        asyncio.run(_serving(store, body))

    def test_nothing_is_formatted_ahead_while_nobody_scrapes(self, monkeypatch: pytest.MonkeyPatch) -> None:
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


class TestScrapeRhythm:
    def test_warms_from_the_start_until_the_first_scrape(self) -> None:
        rhythm = ScrapeRhythm(started=100.0)
        assert rhythm.warm_now(100.0)
        assert rhythm.warm_now(100.0 + WARM_IDLE)

    def test_stops_warming_when_nobody_scraped_since_the_start(self) -> None:
        assert not ScrapeRhythm(started=100.0).warm_now(100.0 + WARM_IDLE + 1)

    def test_does_not_warm_after_one_scrape(self) -> None:
        rhythm = ScrapeRhythm(started=0.0)
        rhythm.scraped(10.0)
        assert not rhythm.warm_now(11.0)
        assert not rhythm.warm_now(100.0)

    def test_warms_only_in_the_lead_before_the_next_scrape_is_due(self) -> None:
        rhythm = ScrapeRhythm(started=0.0)
        rhythm.scraped(10.0)
        rhythm.scraped(40.0)  # every 30 s: the next one is due at 70
        assert not rhythm.warm_now(41.0)
        assert not rhythm.warm_now(70.0 - WARM_LEAD - 0.1)
        assert rhythm.warm_now(70.0 - WARM_LEAD)
        assert rhythm.warm_now(75.0)  # a late scrape is still warmed for

    def test_a_short_interval_warms_its_second_half_only(self) -> None:
        rhythm = ScrapeRhythm(started=0.0)
        rhythm.scraped(10.0)
        rhythm.scraped(12.0)  # every 2 s, shorter than twice the lead
        assert not rhythm.warm_now(12.9)
        assert rhythm.warm_now(13.0)

    def test_stops_warming_when_scrapes_stop(self) -> None:
        rhythm = ScrapeRhythm(started=0.0)
        rhythm.scraped(10.0)
        rhythm.scraped(40.0)
        assert rhythm.warm_now(40.0 + WARM_IDLE)
        assert not rhythm.warm_now(40.0 + WARM_IDLE + 1)
