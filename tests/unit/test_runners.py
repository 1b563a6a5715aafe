"""monitor.probes.runners: the one dispatch from a config to its probe, and the pinned probe of /probe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from monitor.config.schema import DeliveryProbeConfig, DnsConfig, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import DeliveryPhase, DeliveryResult
from monitor.model.probe_result import ProbeResult
from monitor.model.results import MxResult, Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, build_resolver, runners
from tests.fakes.dns_server import ScriptedDnsServer, Silence

NAME = "mail.pinned.test"


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    with ScriptedDnsServer() as server:
        yield server


def env_for(dns: ScriptedDnsServer, timeout: float = 2.0) -> ProbeEnv:
    return ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[dns.nameserver], timeout=timeout)))


class TestRun:
    def test_every_probe_kind_has_its_runner(self) -> None:
        assert set(runners.RUNNERS) == {SmtpProbeConfig, MxCheckConfig, DeliveryProbeConfig}

    def test_a_delivery_config_runs_the_delivery_probe(self, dns: ScriptedDnsServer, refused_port: int) -> None:
        spec = DeliveryProbeConfig.model_validate(
            {
                "name": "d",
                "submit": {"host": "127.0.0.1", "port": refused_port, "tls": "none"},
                "from": "probe@example.test",
                "to": "probe@example.test",
                "mailbox": {"host": "127.0.0.1", "port": refused_port, "username": "u", "password": "p"},
                "timeouts": {"mailbox": 2},
            }
        )
        result = asyncio.run(runners.run(spec, env_for(dns)))
        assert isinstance(result, DeliveryResult)
        # The mailbox is opened first: nothing is sent that could not be read back.
        assert (result.phase, result.reason, result.token) == (DeliveryPhase.FETCH, Reason.REFUSED, "")

    def test_an_smtp_config_runs_the_smtp_probe(self, dns: ScriptedDnsServer, refused_port: int) -> None:
        spec = SmtpProbeConfig(name="s", host="127.0.0.1", port=refused_port, tls="none", timeout=2.0)
        result = asyncio.run(runners.run(spec, env_for(dns)))
        assert isinstance(result, SmtpResult)
        assert (result.phase, result.reason, result.error) == (Phase.CONNECT, Reason.REFUSED, "connection refused")

    def test_an_mx_config_runs_the_mx_check(self, dns: ScriptedDnsServer) -> None:
        result = asyncio.run(runners.run(MxCheckConfig(name="m", domain="gone.test", timeout=2.0), env_for(dns)))
        assert isinstance(result, MxResult)
        assert (result.phase, result.reason) == (Phase.MX, Reason.NXDOMAIN)

    def test_a_probe_that_raises_is_an_internal_failure_logged_once(
        self,
        monkeypatch: pytest.MonkeyPatch,
        dns: ScriptedDnsServer,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def crash(config: MxCheckConfig, env: ProbeEnv, pending: object) -> ProbeResult:
            raise KeyError("x")

        monkeypatch.setitem(runners.RUNNERS, MxCheckConfig, crash)
        with caplog.at_level(logging.ERROR):
            result = asyncio.run(runners.run(MxCheckConfig(name="m", domain="example.test"), env_for(dns)))
        assert isinstance(result, MxResult)
        assert (result.ok, result.phase, result.reason) == (False, Phase.INTERNAL, Reason.INTERNAL)
        assert result.error == "internal error: KeyError: 'x'"
        assert [r.getMessage() for r in caplog.records] == ["probe m raised instead of returning a result"]

    def test_cancellation_is_not_a_result(self, monkeypatch: pytest.MonkeyPatch, dns: ScriptedDnsServer) -> None:
        async def hang(config: MxCheckConfig, env: ProbeEnv, pending: object) -> ProbeResult:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

        monkeypatch.setitem(runners.RUNNERS, MxCheckConfig, hang)

        async def scenario() -> None:
            task = asyncio.create_task(runners.run(MxCheckConfig(name="m", domain="example.test"), env_for(dns)))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())


class TestRunPinned:
    def test_the_refusal_sees_every_address_and_a_refused_target_is_not_probed(
        self,
        dns: ScriptedDnsServer,
        refused_port: int,
    ) -> None:
        dns.records(NAME, "A", "127.0.0.1", "192.0.2.9")
        judged: list[tuple[str, list[str]]] = []

        def refusal(host: str, addresses: list[str]) -> str | None:
            judged.append((host, sorted(addresses)))
            return "outside the networks"

        spec = SmtpProbeConfig(name="adhoc", host=NAME, port=refused_port, tls="none")
        outcome = asyncio.run(runners.run_pinned(spec, env_for(dns), 2.0, refusal))
        assert outcome == runners.Refused("outside the networks")
        assert judged == [(NAME, ["127.0.0.1", "192.0.2.9"])]

    def test_an_allowed_name_is_probed_at_the_address_judged_and_reported_by_its_name(
        self,
        dns: ScriptedDnsServer,
        refused_port: int,
    ) -> None:
        dns.records(NAME, "A", "127.0.0.1")
        spec = SmtpProbeConfig(name="adhoc", host=NAME, port=refused_port, tls="none")
        result = asyncio.run(runners.run_pinned(spec, env_for(dns), 2.0, lambda host, addresses: None))
        assert isinstance(result, SmtpResult)
        assert (result.host, result.address, result.reason) == (NAME, "127.0.0.1", Reason.REFUSED)
        assert Phase.RESOLVE.value in result.timings
        assert len(dns.seen(NAME, "A")) == 1  # the probe did not look the name up again

    def test_a_name_that_does_not_resolve_fails_in_the_resolve_phase_as_dns(self, dns: ScriptedDnsServer) -> None:
        spec = SmtpProbeConfig(name="adhoc", host="gone.pinned.test", port=25, tls="none")
        result = asyncio.run(runners.run_pinned(spec, env_for(dns), 2.0, lambda host, addresses: None))
        assert isinstance(result, SmtpResult)
        assert (result.ok, result.phase, result.reason) == (False, Phase.RESOLVE, Reason.DNS)
        assert result.error == "gone.pinned.test: no such domain (NXDOMAIN)"
        assert set(result.timings) == {Phase.RESOLVE.value}

    def test_a_lookup_past_the_budget_is_a_timeout(self, dns: ScriptedDnsServer) -> None:
        dns.on(NAME, "A", Silence())
        dns.on(NAME, "AAAA", Silence())
        spec = SmtpProbeConfig(name="adhoc", host=NAME, port=25, tls="none")
        result = asyncio.run(runners.run_pinned(spec, env_for(dns, timeout=5.0), 0.3, lambda host, addresses: None))
        assert isinstance(result, SmtpResult)
        assert (result.phase, result.reason, result.error) == (Phase.RESOLVE, Reason.TIMEOUT, "no answer within 0.3s")

    def test_an_address_target_needs_no_lookup(self, dns: ScriptedDnsServer, refused_port: int) -> None:
        spec = SmtpProbeConfig(name="adhoc", host="127.0.0.1", port=refused_port, tls="none")
        result = asyncio.run(runners.run_pinned(spec, env_for(dns), 2.0, lambda host, addresses: "never asked"))
        assert isinstance(result, SmtpResult)
        assert result.reason is Reason.REFUSED
        assert dns.queries == []
