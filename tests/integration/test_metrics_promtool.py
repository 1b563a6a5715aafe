"""promtool's verdict on the exposition the agent serves: `promtool check metrics` finds nothing to complain about.

The text comes from the collector and the cached renderer that tests/unit/test_metrics.py checks sample by sample.
"""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest

from monitor.exporters.prometheus.metrics import ProbeExposition, build_registry
from monitor.state.health import AgentHealth
from tests.unit.test_metrics import populated_store

PROMTOOL = "/usr/bin/promtool"


class TestExposition:
    def test_promtool_finds_nothing_to_complain_about(self) -> None:
        health = AgentHealth()
        health.lateness.observe(0.02)
        health.notifications[("nms", "sent")] += 1
        exposition = generate_latest(build_registry(populated_store(), health))
        assert b"smtp_probe_success{" in exposition
        assert b"process_cpu_seconds_total" in exposition
        proc = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


class TestProbeExposition:
    def test_promtool_accepts_the_rendered_text(self) -> None:
        text = ProbeExposition().render(populated_store().snapshot().states.values()).decode()
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False, timeout=60
        )
        assert check.returncode == 0
        assert check.stdout + check.stderr == ""
