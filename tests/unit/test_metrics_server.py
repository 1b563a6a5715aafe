"""prometheus/http.py MetricsServer and ScrapeRhythm: the exposition formatted ahead of the scrapes that need it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from monitor.config.schema import HttpLimits
from monitor.exporters import bounded_http
from monitor.exporters.bounded_http import Throttle
from monitor.exporters.prometheus import http
from monitor.exporters.prometheus.http import WARM_IDLE, WARM_LEAD, MetricsServer, ScrapeRhythm
from monitor.exporters.prometheus.metrics import build_agent_registry
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.unit.test_metrics import SMTP, SMTP_IMPLICIT, smtp_ok


def _store() -> ResultsStore:
    store = ResultsStore(announce=False)
    store.configure([(SMTP, 2, 14), (SMTP_IMPLICIT, 2, 14)])
    return store


async def _serving(
    store: ResultsStore,
    body: Callable[[MetricsServer], Awaitable[None]],
    limits: HttpLimits | None = None,
) -> None:
    health = AgentHealth()
    server = MetricsServer(
        "127.0.0.1",
        0,
        build_agent_registry(health),
        store,
        ready=lambda: True,
        health=health,
        limits=limits,
    )
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

    def test_states_replaced_after_warming_stops_are_not_held(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Warming stops WARM_IDLE after start when nobody scrapes: the last pass's snapshot must not outlive
        # the states it formatted (it held 10,000 probes' replaced results, 10 MiB, for good).
        monkeypatch.setattr(http, "WARM_IDLE", 0.3)
        store = _store()

        async def body(server: MetricsServer) -> None:
            store.record("relay", smtp_ok())
            store.record("smtps", smtp_ok())
            await _until(lambda: server.exposition.formatted == 2, "the warmer never formatted the two probes")
            warmed = [weakref.ref(state) for state in store.snapshot().states.values()]
            await asyncio.sleep(0.4)  # past WARM_IDLE: no more passes
            store.record("relay", smtp_ok())
            store.record("smtps", smtp_ok())
            await asyncio.sleep(0.1)  # ten warming periods, none of them a pass
            assert server.exposition.formatted == 2
            gc.collect()
            assert [ref() for ref in warmed] == [None, None]

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


# -- bounded connections ----------------------------------------------------------------------

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: agent\r\n"  # the blank line that ends the headers never comes
FULL_REQUEST = b"GET /-/healthy HTTP/1.1\r\nHost: agent\r\n\r\n"
MALFORMED = b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"


async def _connect(
    server: MetricsServer,
    data: bytes = HALF_REQUEST,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds` (whatever it sends before)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


async def _timed_scrape(server: MetricsServer) -> float:
    started = time.monotonic()
    async with asyncio.timeout(5):
        await _scrape(server)
    return time.monotonic() - started


def _limits(**settings: object) -> HttpLimits:
    return HttpLimits.model_validate(settings)


class TestConnectionBounds:
    def test_a_request_whose_headers_never_end_is_closed_at_the_header_timeout(self) -> None:
        async def body(server: MetricsServer) -> None:
            started = time.monotonic()
            reader, writer = await _connect(server)
            assert await _closed_within(reader, 3.0)
            assert 0.25 <= time.monotonic() - started < 1.5
            assert server.listener is not None
            assert server.listener.header_timeouts == 1
            await _until(lambda: server.listener is not None and server.listener.open_connections == 0, "still open")
            writer.close()

        asyncio.run(_serving(_store(), body, _limits(header_timeout=0.3)))

    def test_a_trickle_of_header_bytes_does_not_extend_the_header_timeout(self) -> None:
        async def body(server: MetricsServer) -> None:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

            async def trickle() -> None:
                for byte in HALF_REQUEST:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)

            trickling = asyncio.create_task(trickle())
            assert await _closed_within(reader, 3.0)
            assert time.monotonic() - started < 1.0
            trickling.cancel()
            writer.close()

        asyncio.run(_serving(_store(), body, _limits(header_timeout=0.3)))

    def test_after_a_response_a_half_sent_next_request_is_closed_at_the_idle_timeout(self) -> None:
        async def body(server: MetricsServer) -> None:
            reader, writer = await _connect(server, FULL_REQUEST)
            async with asyncio.timeout(3):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                assert await reader.readexactly(3) == b"OK\n"
            started = time.monotonic()
            writer.write(HALF_REQUEST)  # the header deadline (30 s) is over: the keep-alive bound applies
            assert await _closed_within(reader, 3.0)
            assert 0.25 <= time.monotonic() - started < 1.5
            writer.close()

        asyncio.run(_serving(_store(), body, _limits(header_timeout=30, idle_timeout=0.3)))

    def test_at_the_bound_a_new_connection_displaces_the_oldest_without_a_request(self) -> None:
        async def body(server: MetricsServer) -> None:
            assert server.listener is not None
            held = [await _connect(server) for _ in range(10)]
            await _until(lambda: server.listener is not None and server.listener.displaced == 6, "none displaced")
            assert await _timed_scrape(server) < 1.0  # the scrape displaced one more
            assert server.listener.open_connections <= 4
            for reader, _ in held[:7]:  # the oldest went first
                assert await _closed_within(reader, 1.0)
            for reader, _ in held[7:]:
                assert not await _closed_within(reader, 0.05)
            for _, writer in held:
                writer.close()

        asyncio.run(_serving(_store(), body, _limits(max_connections=4, header_timeout=30)))

    def test_a_connection_running_a_request_is_not_displaced_and_a_stalled_reader_is_cut_at_the_send_timeout(
        self,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        block = b"# " + b"x" * (256 * 1024 - 3) + b"\n"
        monkeypatch.setattr(MetricsServer, "_render", lambda self, states: [block] * 128)  # 32 MiB

        async def body(server: MetricsServer) -> None:
            assert server.listener is not None
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            stalled, stalled_writer = await asyncio.open_connection(sock=sock)
            stalled_writer.write(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")  # and never read
            await _until(lambda: server.listener is not None and server.listener.open_connections == 1, "no scrape")
            started = time.monotonic()
            await asyncio.sleep(0.2)  # the response fills the socket buffers: the request runs on
            waiting, waiting_writer = await _connect(server)
            newest, newest_writer = await _connect(server)
            assert await _closed_within(waiting, 1.0)  # displaced, not the running scrape
            assert server.listener.displaced == 1
            assert not await _closed_within(newest, 0.05)
            await _until(lambda: server.listener is not None and server.listener.open_connections == 1, "scrape kept")
            received = 0
            with contextlib.suppress(ConnectionResetError):  # RST or a clean EOF: either way cut short
                while chunk := await stalled.read(1 << 20):
                    received += len(chunk)
            assert time.monotonic() - started < 3.0
            assert received < len(block) * 128
            for writer in (stalled_writer, waiting_writer, newest_writer):
                writer.close()

        asyncio.run(_serving(_store(), body, _limits(max_connections=2, header_timeout=30, send_timeout=1)))

    def test_every_response_names_the_product_without_versions(self) -> None:
        async def body(server: MetricsServer) -> None:
            async with aiohttp.ClientSession() as session:
                for path in ("/metrics", "/-/healthy", "/no-such-page"):
                    async with session.get(f"http://127.0.0.1:{server.port}{path}") as resp:
                        assert resp.headers["Server"] == "smtp-monitor", path
            reader, writer = await _connect(server, MALFORMED)  # answered by aiohttp itself, not by the app
            async with asyncio.timeout(3):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400")
            assert b"\r\nServer: smtp-monitor\r\n" in head
            assert b"aiohttp" not in head
            assert b"Python" not in head
            writer.close()

        asyncio.run(_serving(_store(), body))

    def test_malformed_requests_log_one_line_without_traceback_per_interval(
        self,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        for log_filter in bounded_http._server_log.filters:
            monkeypatch.setattr(log_filter, "throttle", Throttle(60.0))  # as after a start: a line is due

        async def body(server: MetricsServer) -> None:
            for _ in range(50):
                reader, writer = await _connect(server, MALFORMED)
                assert await _closed_within(reader, 3.0)
                writer.close()
            assert await _timed_scrape(server) < 1.0

        with caplog.at_level(logging.DEBUG, logger="smtp_monitor.http"):
            asyncio.run(_serving(_store(), body))
        lines = [r for r in caplog.records if r.name == "smtp_monitor.http.server"]
        assert len(lines) == 1
        assert lines[0].exc_info is None
        assert lines[0].levelno == logging.WARNING
        assert "Invalid header token" in lines[0].getMessage()

    def test_failed_accepts_are_logged_once_per_interval_and_out_of_descriptors_displaces_a_waiting_one(
        self,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setattr(bounded_http, "ACCEPT_RETRY", 0.001)
        failures = {"left": 0}

        async def body(server: MetricsServer) -> None:
            assert server.listener is not None
            held = [await _connect(server) for _ in range(3)]
            await _until(lambda: server.listener is not None and server.listener.open_connections == 3, "not held")
            failures["left"] = 500  # accept() runs out of descriptors 500 times in a row
            assert await _timed_scrape(server) < 2.0
            assert failures["left"] == 0
            assert await _closed_within(held[0][0], 1.0)  # given up to get a descriptor back
            assert server.listener.displaced >= 1
            for _, writer in held:
                writer.close()

        real_sock_accept = asyncio.selector_events.BaseSelectorEventLoop.sock_accept

        async def sock_accept(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[socket.socket, object]:
            """accept() as at the descriptor limit: a connection is queued, and accepting it fails."""
            queued: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not queued.done():
                    queued.set_result(None)

            loop.add_reader(sock.fileno(), readable)
            try:
                await queued
            finally:
                loop.remove_reader(sock.fileno())
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            assert isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
            return await real_sock_accept(loop, sock)

        monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_accept", sock_accept)
        with caplog.at_level(logging.INFO, logger="smtp_monitor.http"):
            asyncio.run(_serving(_store(), body))
        accept_lines = [r.getMessage() for r in caplog.records if "accept" in r.getMessage()]
        assert len(accept_lines) == 2, accept_lines  # the first failure, and the recovery with the count
        assert "Too many open files" in accept_lines[0]
        assert "after 500 failed accepts" in accept_lines[1]
        assert not any(r.exc_info for r in caplog.records)
