"""deploy/snmp_exporter: Debian's generator turns generator.yml into the committed snmp.yml, and Debian's
snmp_exporter with that file scrapes a live agent: probe states, latencies and the Unix-time columns, no -6.2e10."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.exporters.snmp import mib_oids
from tests.peers.agent import AgentProcess
from tests.peers.postfix import PostfixServer
from tests.support.ports import free_tcp_port, free_udp_port, wait_for_tcp_port
from tests.support.procs import terminate_tree

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "deploy" / "snmp_exporter"
GENERATOR = "/usr/bin/prometheus-snmp-generator"
EXPORTER = "/usr/bin/prometheus-snmp-exporter"
MODULE = "smtp_monitor"
COMMUNITY = "public"  # what generator.yml's module sends
REGENERATE = (
    "cd deploy/snmp_exporter && MIBDIRS=../../mibs:/usr/lib/erlang/lib/snmp-*/mibs "
    "prometheus-snmp-generator generate -o snmp.yml"
)

Sample = tuple[str, dict[str, str], float]


def _need(tool: str) -> None:
    if not os.access(tool, os.X_OK):
        pytest.fail(f"needs Debian's prometheus-snmp-exporter ({tool}), listed in scripts/test-deps.sh")


def generate(base_mibs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Debian's generator on a copy of generator.yml (it reads ./generator.yml), MIBs from mibs/ and base_mibs."""
    _need(GENERATOR)
    workdir = out.parent
    shutil.copy(MODULE_DIR / "generator.yml", workdir / "generator.yml")
    env = {key: value for key, value in os.environ.items() if key not in ("MIBS", "MIBDIRS", "SNMPCONFPATH")}
    env["MIBDIRS"] = f"{ROOT / 'mibs'}:{base_mibs}"
    return subprocess.run(
        [GENERATOR, "--fail-on-parse-errors", "generate", "-o", str(out)],
        cwd=workdir, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


class TestGenerator:
    def test_the_committed_snmp_yml_is_what_the_generator_makes_of_generator_yml(
        self, tmp_path: Path, base_mibs: Path
    ) -> None:
        out = tmp_path / "snmp.yml"
        result = generate(base_mibs, out)
        assert result.returncode == 0, result.stderr
        assert "level=error" not in result.stderr, result.stderr
        assert "level=warn" not in result.stderr, result.stderr
        committed = (MODULE_DIR / "snmp.yml").read_text()
        assert out.read_text() == committed, (
            f"deploy/snmp_exporter/snmp.yml is stale: regenerate it with `{REGENERATE}`"
        )

    def test_the_module_walks_every_table_and_drops_every_date_and_time(self) -> None:
        module = yaml.safe_load((MODULE_DIR / "snmp.yml").read_text())[MODULE]
        metrics = {metric["name"]: metric for metric in module["metrics"]}
        tables = {name: oid for name, oid in mib_oids.OID_BY_NAME.items() if name.endswith("Table")}
        walked = {
            name
            for name, oid in tables.items()
            if any(metric["oid"].startswith(".".join(map(str, oid)) + ".") for metric in metrics.values())
        }
        assert walked == set(tables)
        lines = (ROOT / "mibs" / "SMTP-MONITOR-MIB.txt").read_text().splitlines()
        date_and_time = {
            line.split()[0]
            for line, syntax in itertools.pairwise(lines)
            if line.endswith(" OBJECT-TYPE") and syntax.split() == ["SYNTAX", "DateAndTime"]
        }
        assert "smtpProbeLastSuccess" in date_and_time
        assert not date_and_time & set(metrics)  # snmp_exporter reads their "never" as -6.2e10
        assert metrics["smtpProbeStatus"]["type"] == "EnumAsStateSet"
        assert metrics["smtpProbeLastSuccessUnixTime"]["type"] == "gauge"


# -- a live scrape -----------------------------------------------------------------------------------


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[int]:
    """Debian's snmp_exporter with the committed snmp.yml on a free port; stopped after the test."""
    _need(EXPORTER)
    port = free_tcp_port()
    log = (tmp_path / "snmp_exporter.log").open("wb")
    proc = subprocess.Popen(
        [EXPORTER, f"--config.file={MODULE_DIR / 'snmp.yml'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_tcp_port(port, deadline=15.0)
        yield port
    finally:
        terminate_tree(proc.pid)
        proc.wait(10)
        log.close()


def scrape(exporter_port: int, snmp_port: int) -> list[Sample]:
    url = f"http://127.0.0.1:{exporter_port}/snmp?module={MODULE}&target=127.0.0.1:{snmp_port}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        pytest.fail(f"snmp_exporter answered {exc.code}: {exc.read().decode(errors='replace')}")
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def one(samples: list[Sample], name: str, **labels: str) -> float:
    found = [value for sample, have, value in samples if sample == name and labels.items() <= have.items()]
    assert len(found) == 1, (name, labels, [s for s in samples if s[0] == name])
    return found[0]


class TestLiveScrape:
    def test_snmp_exporter_scrapes_states_latencies_and_unix_times_of_a_live_agent(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
        exporter: int,
    ) -> None:
        snmp_port = free_udp_port()
        started = time.time()
        agent = agent_factory(
            {
                "defaults": {"interval": "1s", "timeout": "2s", "alert_after": 1},
                "snmp": {
                    "enabled": True,
                    "listen": [f"udp:127.0.0.1:{snmp_port}"],
                    "communities": [{"name": COMMUNITY, "allow": ["127.0.0.0/8"]}],
                },
                "smtp": [
                    {"name": "relay", "host": "127.0.0.1", "port": postfix.plain_port, "tls": "none"},
                    {"name": "closed", "host": "127.0.0.1", "port": free_tcp_port(), "tls": "none"},
                ],
            }
        )
        agent.wait_until(
            lambda: (
                agent.value("smtp_probe_status", probe="relay", status="ok") == 1.0
                and agent.value("smtp_probe_status", probe="closed", status="failed") == 1.0
            ),
            20,
            "probes never settled",
        )

        samples = scrape(exporter, snmp_port)

        assert one(samples, "snmp_scrape_pdus_returned") > 0
        relay, closed = {"smtpProbeIndexName": "relay"}, {"smtpProbeIndexName": "closed"}
        assert one(samples, "smtpProbeStatus", smtpProbeStatus="ok", **relay) == 1.0
        assert one(samples, "smtpProbeStatus", smtpProbeStatus="failed", **relay) == 0.0
        assert one(samples, "smtpProbeStatus", smtpProbeStatus="failed", **closed) == 1.0
        assert one(samples, "smtpProbeFailedReason_info", smtpProbeFailedReason="refused", **closed) == 1.0
        assert one(samples, "smtpProbeLatency", **relay) > 0  # milliseconds of a real handshake with Postfix
        assert one(samples, "smtpProbeRuns_total", **relay) >= 1  # Counter64: a counter (the parser adds _total)
        # The Unix-time columns: a real second for what happened, 0 for never.
        now = time.time()
        assert started - 1 <= one(samples, "smtpProbeLastSuccessUnixTime", **relay) <= now
        assert started - 1 <= one(samples, "smtpProbeLastChangeUnixTime", **closed) <= now
        assert one(samples, "smtpProbeLastSuccessUnixTime", **closed) == 0.0
        assert one(samples, "smtpProbeTlsSeenUnixTime", **relay) == 0.0  # tls none: never a handshake
        assert one(samples, "smtpProbeCertExpiryUnixTime", **relay) == 0.0
        assert started - 1 <= one(samples, "smtpMonitorConfigLoadUnixTime") <= now
        assert one(samples, "smtpMonitorProbeCount") == 2.0
        # snmp_exporter's reading of DateAndTime "never": none reaches Prometheus.
        negative = [sample for sample in samples if sample[2] < 0 or math.isnan(sample[2])]
        assert negative == []
        assert not any("LastSuccess" in name and not name.endswith("UnixTime") for name, _, _ in samples)
