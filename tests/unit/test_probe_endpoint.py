"""/probe: the allow-list of targets, the rate limit, DNS pinning and no status-change log for ad-hoc probes.

The SMTP server and the DNS server are in-process fakes: what they saw says whether a refused
probe caused any lookup or connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from monitor.config.schema import ConfigError, DnsConfig, ProbeAllow, ProbeEndpointConfig, SmtpProbeConfig, parse_config
from monitor.exporters.prometheus.http import (
    AdhocProber,
    MetricsServer,
    ProbeRateLimited,
    ProbeRefused,
    TargetPolicy,
    TokenBucket,
)
from monitor.exporters.prometheus.metrics import build_agent_registry
from monitor.probes import ProbeEnv, build_resolver
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.fakes.dns_server import Records, ScriptedDnsServer
from tests.fakes.smtp_servers import ScriptedSmtpServer, healthy

NAME = "mail.allowed.test"


def _endpoint(**settings: Any) -> ProbeEndpointConfig:
    return ProbeEndpointConfig.model_validate({"enabled": True, **settings})


def _policy(**allow: Any) -> TargetPolicy:
    return TargetPolicy(ProbeAllow.model_validate(allow))


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    with ScriptedDnsServer() as server:
        yield server


def _prober(dns: ScriptedDnsServer, **settings: Any) -> AdhocProber:
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[dns.nameserver], timeout=2.0)))
    return AdhocProber(env, _endpoint(**settings))


def _with_smtp(body: Callable[[ScriptedSmtpServer], Awaitable[None]]) -> None:
    async def main() -> None:
        async with healthy() as server:
            await body(server)

    asyncio.run(main())


def _query(target: str, **more: str) -> dict[str, str]:
    return {"target": target, "tls": "none", "timeout": "3s", **more}


class TestTargetPolicy:
    @pytest.mark.parametrize(
        ("host", "port", "allowed"),
        [
            ("192.0.2.7", 25, True),
            ("192.0.2.7", 2525, False),  # port not listed
            ("198.51.100.1", 25, False),  # address outside the networks
            ("127.0.0.1", 25, False),
            ("::ffff:127.0.0.1", 25, False),  # an IPv4-mapped IPv6 address is its IPv4 address
            ("::ffff:192.0.2.9", 25, True),
            ("2001:db8::25", 587, True),
            ("mail.example.org", 25, True),  # exact name
            ("MAIL.Example.org.", 25, True),  # case and the final dot do not matter
            ("mx1.relay.example.net", 465, True),  # below .relay.example.net
            ("relay.example.net", 25, False),  # `.relay.example.net` is the names below it, not itself
            ("evilrelay.example.net", 25, False),
            ("other.example.org", 25, False),
            ("localhost", 25, False),
        ],
    )
    def test_targets(self, host: str, port: int, allowed: bool) -> None:
        policy = _policy(
            networks=["192.0.2.0/24", "2001:db8::/32"],
            hosts=["mail.example.org", ".relay.example.net"],
            ports=[25, 465, 587],
        )
        assert (policy.refusal(SmtpProbeConfig(name="adhoc", host=host, port=port)) is None) is allowed

    def test_every_resolved_address_must_lie_in_the_networks(self) -> None:
        policy = _policy(networks=["192.0.2.0/24"], hosts=["mail.example.org"])
        assert policy.address_refusal("mail.example.org", ["192.0.2.1", "192.0.2.2"]) is None
        assert policy.address_refusal("mail.example.org", ["192.0.2.1", "127.0.0.1"]) is not None
        assert policy.address_refusal("mail.example.org", ["::ffff:127.0.0.1"]) is not None

    def test_without_networks_an_allowed_name_may_resolve_anywhere(self) -> None:
        assert _policy(hosts=["mail.example.org"]).address_refusal("mail.example.org", ["127.0.0.1"]) is None


class TestConfig:
    def test_an_enabled_endpoint_needs_an_allow_list(self) -> None:
        with pytest.raises(ConfigError, match=r"prometheus\.probe_endpoint: an enabled /probe needs allow"):
            parse_config({"prometheus": {"probe_endpoint": {"enabled": True}}})

    def test_off_by_default(self) -> None:
        assert not parse_config({}).prometheus.probe_endpoint.enabled

    @pytest.mark.parametrize(
        ("allow", "key", "problem"),
        [
            ({"hosts": ["127.0.0.1"]}, "allow.hosts[0]", "is an address: list it under networks"),
            ({"hosts": ["bad_name!"]}, "allow.hosts[0]", "bad host name"),
            ({"networks": ["10.0.0.1/8"]}, "allow.networks[0]", "not a valid"),
            ({"hosts": ["a.test"], "ports": [0]}, "allow.ports[0]", "greater than or equal to 1"),
            ({"hosts": ["a.test"], "ports": []}, "allow.ports", "at least 1 item"),
        ],
    )
    def test_bad_allow_entries_name_the_key(self, allow: dict[str, Any], key: str, problem: str) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_config({"prometheus": {"probe_endpoint": {"enabled": True, "allow": allow}}}, "agent.yaml")
        assert f"agent.yaml: prometheus.probe_endpoint.{key}: " in str(caught.value)
        assert problem in str(caught.value)


class TestTokenBucket:
    def test_a_burst_then_the_rate(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
        assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
        assert not bucket.take(0.4)
        assert bucket.take(0.5)  # one token per 0.5 s
        assert not bucket.take(0.5)
        assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


class TestAdhocProber:
    def test_a_name_outside_the_hosts_is_refused_before_any_lookup_or_connection(self, dns: ScriptedDnsServer) -> None:
        dns.records("elsewhere.test", "A", "127.0.0.1")

        async def body(server: ScriptedSmtpServer) -> None:
            prober = _prober(dns, allow={"hosts": [NAME], "ports": [server.port]})
            with pytest.raises(ProbeRefused, match=re.escape("elsewhere.test is not in allow.hosts")):
                await prober.probe(_query(f"elsewhere.test:{server.port}"))
            assert server.accepted == 0

        _with_smtp(body)
        assert dns.queries == []

    def test_an_address_or_port_outside_the_list_is_refused_without_connecting(self, dns: ScriptedDnsServer) -> None:
        async def body(server: ScriptedSmtpServer) -> None:
            prober = _prober(dns, allow={"networks": ["192.0.2.0/24"], "ports": [server.port]})
            with pytest.raises(ProbeRefused, match=re.escape("address 127.0.0.1 is not in allow.networks")):
                await prober.probe(_query(f"127.0.0.1:{server.port}"))
            prober = _prober(dns, allow={"networks": ["127.0.0.0/8"], "ports": [25]})
            with pytest.raises(ProbeRefused, match=f"port {server.port} is not in allow.ports"):
                await prober.probe(_query(f"127.0.0.1:{server.port}"))
            assert server.accepted == 0

        _with_smtp(body)

    def test_an_allowed_name_that_resolves_outside_the_networks_is_refused(self, dns: ScriptedDnsServer) -> None:
        dns.records(NAME, "A", "192.0.2.10", "127.0.0.1")

        async def body(server: ScriptedSmtpServer) -> None:
            prober = _prober(dns, allow={"hosts": [NAME], "networks": ["192.0.2.0/24"], "ports": [server.port]})
            with pytest.raises(ProbeRefused, match=re.escape("resolves to an address outside allow.networks")):
                await prober.probe(_query(f"{NAME}:{server.port}"))
            assert server.accepted == 0

        _with_smtp(body)

    def test_the_probe_connects_to_the_address_that_was_checked(self, dns: ScriptedDnsServer) -> None:
        # DNS rebinding: the first answer passes the check, a second lookup would get another address.
        dns.on(NAME, "A", Records("127.0.0.1", ttl=0), Records("192.0.2.66", ttl=0))

        async def body(server: ScriptedSmtpServer) -> None:
            prober = _prober(dns, allow={"hosts": [NAME], "networks": ["127.0.0.0/8"], "ports": [server.port]})
            text = generate_latest(await prober.probe(_query(f"{NAME}:{server.port}"))).decode()
            assert f'smtp_probe_success{{host="{NAME}",port="{server.port}",probe="adhoc",tls="none"}} 1.0' in text
            assert 'smtp_probe_phase_duration_seconds{phase="resolve",probe="adhoc"}' in text
            assert server.accepted == 1

        _with_smtp(body)
        assert len(dns.seen(NAME, "A")) == 1

    def test_an_adhoc_failure_logs_no_status_change(
        self,
        dns: ScriptedDnsServer,
        refused_port: int,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        prober = _prober(dns, allow={"networks": ["127.0.0.0/8"], "ports": [refused_port]})
        with caplog.at_level(logging.DEBUG):
            text = generate_latest(asyncio.run(prober.probe(_query(f"127.0.0.1:{refused_port}")))).decode()
        assert 'smtp_probe_success{host="127.0.0.1"' in text
        assert "} 0.0" in text.split("smtp_probe_success{", 1)[1].split("\n", 1)[0]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []

    def test_the_rate_limit_counts_probes_that_pass_the_allow_list(self, dns: ScriptedDnsServer) -> None:
        async def body(server: ScriptedSmtpServer) -> None:
            prober = _prober(
                dns,
                allow={"networks": ["127.0.0.0/8"], "ports": [server.port]},
                rate_limit={"rate": 0.01, "burst": 2},
            )
            for _ in range(5):  # refused ones spend nothing
                with pytest.raises(ProbeRefused):
                    await prober.probe(_query("127.0.0.1:25"))
            await prober.probe(_query(f"127.0.0.1:{server.port}"))
            await prober.probe(_query(f"127.0.0.1:{server.port}"))
            with pytest.raises(ProbeRateLimited):
                await prober.probe(_query(f"127.0.0.1:{server.port}"))
            assert server.accepted == 2

        _with_smtp(body)

    def test_an_mx_check_needs_its_domain_in_the_hosts(self, dns: ScriptedDnsServer) -> None:
        dns.records("allowed.test", "MX", "10 mail.allowed.test.")
        dns.records(NAME, "A", "127.0.0.1")
        prober = _prober(dns, allow={"hosts": [".allowed.test", "allowed.test"]})
        with pytest.raises(ProbeRefused, match=re.escape("domain other.test is not in allow.hosts")):
            asyncio.run(prober.probe({"module": "mx", "target": "other.test"}))
        assert dns.queries == []
        text = generate_latest(asyncio.run(prober.probe({"module": "mx", "target": "allowed.test"}))).decode()
        assert 'mx_check_success{check="adhoc",domain="allowed.test"} 1.0' in text


class TestProbeHandler:
    def _serve(self, prober: AdhocProber, body: Callable[[aiohttp.ClientSession, str], Awaitable[None]]) -> None:
        async def main() -> None:
            health = AgentHealth()
            server = MetricsServer(
                "127.0.0.1",
                0,
                build_agent_registry(health),
                ResultsStore(announce=False),
                ready=lambda: True,
                adhoc=prober,
                health=health,
            )
            await server.start()
            try:
                async with aiohttp.ClientSession() as session:
                    await body(session, f"http://127.0.0.1:{server.port}/probe")
            finally:
                await server.stop()

        asyncio.run(main())

    def test_refusals_are_403_429_with_a_short_reason(self, dns: ScriptedDnsServer, refused_port: int) -> None:
        prober = _prober(
            dns,
            allow={"networks": ["127.0.0.0/8"], "ports": [refused_port]},
            rate_limit={"rate": 0.01, "burst": 1},
        )

        async def body(session: aiohttp.ClientSession, url: str) -> None:
            async with session.get(url, params={"target": "10.1.2.3:25"}) as resp:
                assert resp.status == 403
                assert await resp.text() == "refused: port 25 is not in allow.ports\n"
                assert resp.content_type == "text/plain"
            target = {"target": f"127.0.0.1:{refused_port}"}
            async with session.get(url, params=target, headers={"Sec-Fetch-Site": "cross-site"}) as resp:
                assert resp.status == 403  # a web page of another site, through the user's browser
            async with session.get(url, params=target) as resp:
                assert resp.status == 200
            async with session.get(url, params=target) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "1"

        self._serve(prober, body)
