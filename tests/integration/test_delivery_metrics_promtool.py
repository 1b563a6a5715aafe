"""promtool's verdict on an exposition with delivery probes (a histogram, info series, server-written hop
hosts) next to SMTP and MX probes: `promtool check metrics` finds nothing to complain about, through the
collector and the cached renderer alike, and from a live agent whose delivery probe ran through the real
chain (tests.peers.mail_chain), where every delivery series the rules and the dashboard read exists.
Sample by sample: tests/unit/test_delivery_metrics.py."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.exporters.prometheus.metrics import ProbeExposition, build_registry
from monitor.state.health import AgentHealth
from tests.integration.test_deploy import dashboard, dashboard_expressions, promql_metric_names, rules_metric_names
from tests.peers.agent import AgentProcess
from tests.peers.mail_chain import MailChain
from tests.unit.test_delivery_metrics import mixed_store

PROMTOOL = "/usr/bin/promtool"


def promtool_check(exposition: bytes) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


class TestDeliveryExposition:
    def test_collector_exposition_with_delivery_probes_is_clean(self) -> None:
        exposition = generate_latest(build_registry(mixed_store(), AgentHealth()))
        assert b'delivery_probe_latency_seconds_bucket{le="+Inf",probe="loop"} 2.0' in exposition
        assert b"delivery_probe_hop_delay_seconds{" in exposition
        assert b"smtp_probe_success{" in exposition
        assert promtool_check(exposition) == (0, b"", b"")

    def test_rendered_exposition_with_delivery_probes_is_clean(self) -> None:
        exposition = ProbeExposition().render(mixed_store().snapshot().states.values())
        assert b'delivery_probe_latency_seconds_bucket{probe="loop",le="+Inf"} 2.0' in exposition
        assert b"delivery_probe_auth_info{" in exposition
        assert promtool_check(exposition) == (0, b"", b"")


def delivery_probe(chain: MailChain) -> dict[str, object]:
    """The chain's submission (STARTTLS, AUTH) to its IMAP mailbox, every few seconds."""
    return chain.delivery_probe(interval="3s", deliver_within="20s")


class TestLiveAgent:
    def test_a_delivery_run_through_the_chain_gives_every_series_the_rules_and_dashboard_read(
        self, mail_chain: MailChain, agent_factory: Callable[[dict[str, object]], AgentProcess]
    ) -> None:
        agent = agent_factory({"delivery": [delivery_probe(mail_chain)]})
        probe = {"probe": "chain"}
        agent.wait_until(
            lambda: (agent.value("delivery_probe_runs_total", **probe) or 0) >= 1, 60, "no delivery run finished"
        )
        status, exposition = agent.get("/metrics")
        assert status == 200
        assert promtool_check(exposition.encode()) == (0, b"", b"")
        sampled = {
            (s.name, s.labels.get("probe")) for f in text_string_to_metric_families(exposition) for s in f.samples
        }
        used = rules_metric_names() | {n for e in dashboard_expressions(dashboard()) for n in promql_metric_names(e)}
        # A run that succeeded leaves no series of failures; every other family the rules and panels read has one.
        failure_only = {"delivery_probe_failures_total", "delivery_probe_last_failure_info"}
        # The relays' DNSBL series exist only with `dnsbl:` zones (this chain's relays are on loopback, never
        # asked): tests/integration/test_delivery_dnsbl.py checks them.
        dnsbl_only = {name for name in used if name.startswith("delivery_probe_dnsbl_")}
        wanted = {name for name in used if name.startswith("delivery_probe_")} - failure_only - dnsbl_only
        assert agent.value("delivery_probe_status", probe="chain", status="ok") == 1.0, agent.logs()[-3000:]
        assert {(name, "chain") for name in wanted} <= sampled
        assert agent.value("delivery_probe_folder_info", probe="chain", folder="inbox") == 1.0
        latency = agent.value("delivery_probe_last_latency_seconds", **probe)
        assert latency is not None
        assert 0 < latency < 20
        assert (agent.value("delivery_probe_latency_seconds_count", **probe) or 0) >= 1
        for secret in (mail_chain.mailbox.password, mail_chain.submitter.password):
            assert secret not in exposition
