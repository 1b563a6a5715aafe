"""The agent's HTTP side attacked as an outsider would, on loopback: half-open connection floods,
connections beyond the bound, malformed requests, version disclosure, and /probe as a port scanner.

Each test runs a real agent process (tests.peers.agent) and raw sockets against it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import schema as config
from tests.peers.agent import AgentProcess
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.support.ports import HOST, free_tcp_port

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: agent\r\n"  # the blank line that ends the headers never comes
MALFORMED = b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"
DESCRIPTOR_LIMIT = 256  # the agent's RLIMIT_NOFILE in the flood test: the flood is larger


class LimitedAgent(AgentProcess):
    """An agent started with few descriptors, so that a flood reaches the limit (as in production at 1024)."""

    def start(self) -> None:
        self.log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(self.config_file), *self.args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT)),
        )
        self.wait_until(lambda: self.get("/-/ready")[0] == 200, 15, "agent never became ready")


@pytest.fixture
def limited_agent(tmp_path: Path) -> Iterator[LimitedAgent]:
    agent = LimitedAgent(tmp_path, {"smtp": []})
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


def open_half_requests(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each send the start of a request and never finish it."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)  # an agent that stopped accepting must not hang the test
        sock.connect_ex((HOST, port))
        socks.append(sock)
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_WRITE)
        pending, deadline = len(socks), time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                selector.unregister(ready)
                pending -= 1
                if ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    with contextlib.suppress(OSError):
                        ready.send(HALF_REQUEST)
    return socks


def still_open_after(socks: list[socket.socket], seconds: float) -> int:
    """How many of `socks` the server has not closed (EOF or reset) within `seconds`."""
    open_socks = set(socks)
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + seconds
        while open_socks and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(ready)
                    open_socks.discard(ready)
    return len(open_socks)


def descriptors(agent: AgentProcess) -> int:
    assert agent.proc is not None
    return len(os.listdir(f"/proc/{agent.proc.pid}/fd"))


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def timed_scrape(agent: AgentProcess) -> float:
    started = time.monotonic()
    status, _ = agent.get("/metrics")
    elapsed = time.monotonic() - started
    assert status == 200, f"/metrics unanswered after {elapsed:.1f} s\n{agent.logs()[-2000:]}"
    return elapsed


def log_lines(agent: AgentProcess) -> int:
    return len(agent.logs().splitlines())


class TestConnectionFloods:
    def test_300_half_open_connections_at_the_descriptor_limit(self, limited_agent: LimitedAgent) -> None:
        agent = limited_agent
        lines_before, fds_before = log_lines(agent), descriptors(agent)
        flood = open_half_requests(agent.port, 300)
        try:
            assert timed_scrape(agent) < 1.0
            agent.signal(signal.SIGHUP)  # a reload needs a descriptor to read the config file
            agent.wait_until(lambda: "reloaded " in agent.logs(), 5, "SIGHUP reload failed during the flood")
            # 10 s: the default header_timeout; those that were displaced went at once
            assert still_open_after(flood, 10 + 5) == 0
        finally:
            for sock in flood:
                sock.close()
        assert timed_scrape(agent) < 1.0
        assert descriptors(agent) <= fds_before + 2
        new_lines = agent.logs().splitlines()[lines_before:]
        assert len(new_lines) < 20, new_lines[:40]
        assert "Traceback" not in agent.logs()

    def test_connections_beyond_max_connections_leave_metrics_answering(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
    ) -> None:
        agent = agent_factory(
            {
                "smtp": [],
                "prometheus_http": {"max_connections": 20, "header_timeout": "2s", "idle_timeout": "2s"},
            }
        )
        fds_before = descriptors(agent)
        idle: list[socket.socket] = []
        for _ in range(30):  # finished a request, then idle on keep-alive
            sock = socket.create_connection((HOST, agent.port), timeout=5)
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: agent\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            idle.append(sock)
        half_open = open_half_requests(agent.port, 30)
        try:
            assert timed_scrape(agent) < 1.0
            assert descriptors(agent) <= fds_before + 20
            assert still_open_after(idle + half_open, 0.5) <= 20  # the oldest were displaced at once
            assert still_open_after(idle + half_open, 2 + 3) == 0
        finally:
            for sock in idle + half_open:
                sock.close()
        assert timed_scrape(agent) < 1.0

    def test_malformed_requests_neither_flood_the_log_nor_name_versions(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
    ) -> None:
        agent = agent_factory({"smtp": []})
        lines_before = log_lines(agent)
        for _ in range(200):
            with socket.create_connection((HOST, agent.port), timeout=5) as sock:
                sock.sendall(MALFORMED)
                head = sock.recv(4096)
                assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400")
                assert b"\r\nServer: smtp-monitor\r\n" in head, head
        new_lines = agent.logs().splitlines()[lines_before:]
        assert len(new_lines) <= 2, new_lines[:20]
        for path in ("/metrics", "/-/ready", "/missing"):
            _, headers, _ = get(agent.port, path)
            assert headers["Server"] == "smtp-monitor"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class TestProbeEndpoint:
    def test_only_allowed_targets_are_probed(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
        dns_server: NsdServer,
    ) -> None:
        closed = free_tcp_port()
        agent = agent_factory(
            {
                "smtp": [],
                "dns": {"nameservers": [f"{dns_server.host}:{dns_server.port}"]},
                # mail.test has 127.0.0.1 only; mx2.good.test has 127.0.0.1 and ::1
                "prometheus_probe": {
                    "allow": {
                        "networks": ["127.0.0.1/32"],
                        "hosts": ["mail.test", "mx2.good.test"],
                        "ports": [postfix.plain_port, closed],
                    }
                },
            }
        )
        port = postfix.plain_port
        refused = {
            f"10.1.2.3:{port}": "address 10.1.2.3 is not in allow.networks",
            "127.0.0.1:22": "port 22 is not in allow.ports",
            f"[::ffff:127.0.0.2]:{port}": "address ::ffff:127.0.0.2 is not in allow.networks",
            f"good.test:{port}": "host good.test is not in allow.hosts",
            f"mx2.good.test:{port}": "host mx2.good.test resolves to an address outside allow.networks",
        }
        for target, reason in refused.items():
            status, _, text = get(agent.port, f"/probe?target={target}&tls=none")
            assert (status, text) == (403, f"refused: {reason}\n"), target
        status, _, _ = get(agent.port, f"/probe?target=mail.test:{port}", {"Sec-Fetch-Site": "cross-site"})
        assert status == 403

        status, _, text = get(agent.port, f"/probe?target=mail.test:{port}&tls=starttls&verify=false")
        assert status == 200
        labels = frozenset({("probe", "adhoc"), ("host", "mail.test"), ("port", str(port)), ("tls", "starttls")})
        assert samples(text)[("smtp_probe_success", labels)] == 1.0

        status, _, text = get(agent.port, f"/probe?target=127.0.0.1:{closed}&tls=none")
        assert status == 200
        labels = frozenset({("probe", "adhoc"), ("host", "127.0.0.1"), ("port", str(closed)), ("tls", "none")})
        assert samples(text)[("smtp_probe_success", labels)] == 0.0
        assert "adhoc" not in agent.logs()  # no status change logged for an ad-hoc probe

    def test_the_rate_limit_answers_429(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
    ) -> None:
        closed = free_tcp_port()
        agent = agent_factory(
            {
                "smtp": [],
                "prometheus_probe": {
                    "allow": {"networks": ["127.0.0.0/8"], "ports": [closed]},
                    "rate_limit": {"rate": 0.1, "burst": 3},
                },
            }
        )
        statuses = [get(agent.port, f"/probe?target=127.0.0.1:{closed}&tls=none")[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]

    def test_check_config_refuses_an_enabled_probe_without_an_allow_list(self, tmp_path: Path) -> None:
        path = tmp_path / "agent.yaml"
        config = {"prometheus": {"probe_endpoint": {"enabled": True}}, "snmp": {"enabled": False}}
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "check-config", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2
        problem = "prometheus.probe_endpoint: an enabled /probe needs allow.networks or allow.hosts"
        assert f"{path}: {problem}" in proc.stderr


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


class TestDeployCarriesTheLimits:
    def test_the_systemd_unit_raises_the_descriptor_limit_well_above_the_http_bound(self) -> None:
        values = [
            line.split("=", 1)[1]
            for line in (DEPLOY / "systemd/smtp-monitor.service").read_text().splitlines()
            if line.startswith("LimitNOFILE=")
        ]
        assert len(values) == 1
        # HTTP takes at most half; the probe process needs about 2 per probe in flight (500 by default)
        limits, defaults = config.HttpLimits(), config.Defaults()
        assert int(values[0]) >= max(2 * limits.max_connections, 2 * defaults.max_concurrency) * 2

    def test_the_kubernetes_config_spells_out_the_http_bounds_and_keeps_probe_off(
        self,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("SNMP_COMMUNITY", "from-a-secret")  # the StatefulSet's secretKeyRef
        configmap = yaml.safe_load((DEPLOY / "kubernetes/configmap.yaml").read_text())
        document = yaml.safe_load(configmap["data"]["config.yaml"])
        limits = config.HttpLimits
        assert set(document["prometheus"]["http"]) == set(limits.model_fields)
        parsed = config.parse_config(document, "configmap.yaml")
        assert parsed.prometheus.http == limits()
        assert not parsed.prometheus.probe_endpoint.enabled
