"""promtool's verdict on an exposition with delivery probes (a histogram, info series, server-written hop
hosts) next to SMTP and MX probes: `promtool check metrics` finds nothing to complain about, through the
collector and the cached renderer alike. Sample by sample: tests/unit/test_delivery_metrics.py."""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest

from monitor.exporters.prometheus.metrics import ProbeExposition, build_registry
from monitor.state.health import AgentHealth
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
