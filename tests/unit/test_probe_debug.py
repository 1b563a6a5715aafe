"""/probe?...&debug=true: like blackbox_exporter's debug output, a text/plain page with the probe's transcript,
the metrics it produced and its configuration; the allow-list, rate limit and bounds hold for it too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from monitor.config.schema import DnsConfig, ProbeEndpointConfig
from monitor.exporters.prometheus.http import AdhocProber, MetricsServer
from monitor.exporters.prometheus.metrics import build_agent_registry
from monitor.probes import ProbeEnv, build_resolver
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.fakes.smtp_servers import QUIT, ScriptedSmtpServer, Step

HOSTILE = b"554 5.7.1 <script>alert('banner')</script> go away\r\n"


def prober(port: int, **settings: Any) -> AdhocProber:
    endpoint = ProbeEndpointConfig.model_validate(
        {"enabled": True, "allow": {"networks": ["127.0.0.0/8"], "ports": [port]}, **settings}
    )
    return AdhocProber(ProbeEnv(resolver=build_resolver(DnsConfig())), endpoint)


def serve(
    script: list[Step], body: Callable[[aiohttp.ClientSession, str, int], Awaitable[None]], **settings: Any
) -> None:
    async def main() -> None:
        async with ScriptedSmtpServer(script) as smtp:
            health = AgentHealth()
            server = MetricsServer(
                "127.0.0.1",
                0,
                build_agent_registry(health),
                ResultsStore(announce=False),
                ready=lambda: True,
                adhoc=prober(smtp.port, **settings),
                health=health,
            )
            await server.start()
            try:
                async with aiohttp.ClientSession() as session:
                    await body(session, f"http://127.0.0.1:{server.port}/probe", smtp.port)
            finally:
                await server.stop()

    asyncio.run(main())


def test_debug_shows_transcript_metrics_and_configuration_as_plain_text() -> None:
    async def body(session: aiohttp.ClientSession, url: str, port: int) -> None:
        query = {"target": f"127.0.0.1:{port}", "tls": "none", "timeout": "3s", "debug": "true"}
        async with session.get(url, params=query) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            page = await response.text()
        transcript, rest = page.split("\n\nMetrics that would have been returned:\n")
        metrics, config = rest.split("\nProbe configuration:\n")
        assert transcript.startswith("Transcript of the probe (failed in banner: reply: 554 5.7.1 <script>")
        assert f"-- trying 127.0.0.1 port {port}" in transcript
        assert "S 554 5.7.1 <script>alert('banner')</script> go away" in transcript
        assert "C QUIT" in transcript
        assert "smtp_probe_success{" in metrics
        assert "# TYPE smtp_probe_success gauge" in metrics
        assert f"host: 127.0.0.1\nport: {port}\ntls: none\n" in config
        assert "name: adhoc" in config

        # without debug: the exposition only, as before
        async with session.get(url, params={**query, "debug": "false"}) as response:
            plain = await response.text()
        assert "Transcript" not in plain
        assert "smtp_probe_success{" in plain

    serve([Step(None, HOSTILE), QUIT], body)


def test_debug_keeps_the_allow_list_and_the_rate_limit() -> None:
    async def body(session: aiohttp.ClientSession, url: str, port: int) -> None:
        outside = {"target": f"127.0.0.1:{port + 1}", "tls": "none", "debug": "true"}
        async with session.get(url, params=outside) as response:
            assert response.status == 403
            assert "Transcript" not in await response.text()
        query = {"target": f"127.0.0.1:{port}", "tls": "none", "timeout": "3s", "debug": "true"}
        async with session.get(url, params=query) as response:
            assert response.status == 200
        async with session.get(url, params=query) as response:
            assert response.status == 429

    serve(
        [Step(None, b"220 mail.test\r\n"), Step(b"EHLO", b"250 mail.test\r\n"), QUIT],
        body,
        rate_limit={"rate": 0.01, "burst": 1},
    )
