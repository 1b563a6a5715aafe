"""The agent serves the status page: on the Prometheus server's `/` by default, on an address of its own with
`status_page.listen`, not at all with `status_page.enabled: false`; with the agent's History, or "history off"."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.config.schema import parse_config
from monitor.runtime.agent import Agent, StartupError
from tests.support.ports import free_tcp_port

PLAIN_INDEX = "smtp-monitor: see /metrics\n"


def _config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    return {
        "agent": {"state_dir": str(tmp_path / "state"), "probe_process": False},
        "prometheus": {"listen": f"127.0.0.1:{free_tcp_port()}"},
        "snmp": {"enabled": False},
        "smtp": [{"name": "closed", "host": "127.0.0.1", "port": 9, "interval": "1h"}],
        **sections,
    }


async def _fetch(port: int, *paths: str) -> list[tuple[int, str]]:
    out = []
    async with aiohttp.ClientSession() as session:
        for path in paths:
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                out.append((resp.status, await resp.text()))
    return out


def _serve(tmp_path: Path, document: dict[str, Any], *requests: tuple[str, str]) -> list[tuple[int, str]]:
    """Start the agent, make each (server, path) request (server: "metrics" or "page"), stop it."""

    async def body() -> list[tuple[int, str]]:
        agent = Agent(tmp_path / "agent.yaml", parse_config(document))
        await agent.start()
        try:
            assert agent.http is not None
            out = []
            for server, path in requests:
                if server == "metrics":
                    port = agent.http.port
                else:
                    assert agent.status_page is not None
                    port = agent.status_page.port
                out += await _fetch(port, path)
            return out
        finally:
            await agent.stop()

    return asyncio.run(body())


def test_by_default_the_page_is_the_prometheus_servers_index(tmp_path: Path) -> None:
    (index, status), (api, data), (metrics, _) = _serve(
        tmp_path, _config(tmp_path), ("metrics", "/"), ("metrics", "/api/probes"), ("metrics", "/metrics")
    )
    assert (index, api, metrics) == (200, 200, 200)
    assert 'data-probe="closed"' in status
    assert '"history": true' in data  # the agent's History reached the page


def test_on_its_own_address_the_page_leaves_the_metrics_server_alone(tmp_path: Path) -> None:
    document = _config(tmp_path, status_page={"listen": f"127.0.0.1:{free_tcp_port()}"})
    responses = _serve(tmp_path, document, ("page", "/"), ("page", "/probe/closed"), ("metrics", "/"))
    assert responses[0][0] == 200
    assert 'data-probe="closed"' in responses[0][1]
    assert responses[1][0] == 200
    assert responses[2] == (200, PLAIN_INDEX)


def test_switched_off_there_is_no_page(tmp_path: Path) -> None:
    document = _config(tmp_path, status_page={"enabled": False})
    responses = _serve(tmp_path, document, ("metrics", "/"), ("metrics", "/api/probes"), ("metrics", "/probe/closed"))
    assert responses[0] == (200, PLAIN_INDEX)
    assert [status for status, _ in responses[1:]] == [404, 404]


def test_with_history_off_the_page_says_so(tmp_path: Path) -> None:
    document = _config(tmp_path, history={"enabled": False})
    ((status, text),) = _serve(tmp_path, document, ("metrics", "/"))
    assert status == 200
    assert 'id="history-off"' in text


def test_an_address_in_use_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        document = _config(tmp_path, status_page={"listen": f"127.0.0.1:{port}"})

        async def body() -> None:
            agent = Agent(tmp_path / "agent.yaml", parse_config(document))
            try:
                with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port} for the status page"):
                    await agent.start()
            finally:
                await agent.stop()

        asyncio.run(body())


def test_an_installation_without_the_templates_runs_without_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from monitor.exporters.web import pages

    (tmp_path / "no-templates").mkdir()
    monkeypatch.setattr(pages, "TEMPLATE_ROOT", tmp_path / "no-templates")
    (index, metrics) = _serve(tmp_path, _config(tmp_path), ("metrics", "/"), ("metrics", "/metrics"))
    assert index == (200, PLAIN_INDEX)
    assert metrics[0] == 200
    assert "status page off: template overview.html is not installed" in caplog.text
