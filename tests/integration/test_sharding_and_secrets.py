"""Shards split the probes of one config; credentials never show in logs, metrics, MIB walks or status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monitor.runtime.sharding import owner
from tests.peers.agent import AgentProcess
from tests.peers.postfix_sasl import PostfixSaslServer
from tests.support.ports import free_tcp_port, free_udp_port

PROBES = 40


def start(workdir: Path, config: dict[str, object], *args: str) -> AgentProcess:
    workdir.mkdir()
    agent = AgentProcess(workdir, config, args)
    agent.start()
    return agent


class TestShards:
    def test_two_shards_split_the_probes_without_overlap_or_gap(self, tmp_path: Path) -> None:
        closed = free_tcp_port()
        names = [f"probe-{i}" for i in range(PROBES)]
        config: dict[str, object] = {
            "defaults": {"interval": "0.5s"},
            "smtp": [{"name": n, "host": "127.0.0.1", "port": closed, "tls": "none"} for n in names],
        }
        agents = [start(tmp_path / f"shard{i}", config, "--shard", f"{i}/2") for i in range(2)]
        try:
            owned = []
            for agent in agents:

                def has_runs(a: AgentProcess = agent) -> bool:
                    return sum(1 for (n, _) in a.samples() if n == "smtp_probe_runs_total") > 0

                agent.wait_until(has_runs, 10, "no runs")
                owned.append(
                    {dict(labels)["probe"] for (name, labels) in agent.samples() if name == "smtp_probe_status"}
                )
        finally:
            for agent in agents:
                agent.stop()
        assert owned[0] | owned[1] == set(names)
        assert owned[0] & owned[1] == set()
        assert owned[0] == {n for n in names if owner(n, 2) == 0}
        assert len(owned[0]) > PROBES // 4  # both shards get a fair part


class TestSecretsStayHidden:
    def test_auth_password_and_community_never_appear_in_any_output(
        self,
        tmp_path: Path,
        postfix_sasl: PostfixSaslServer,
        base_mibs: Path,
    ) -> None:
        wrong_password = "Wr0ng-Secret-Passphrase-4711"
        community = "c0mmunity-Secret-9876"
        (tmp_path / "pw").write_text(wrong_password)
        snmp_port = free_udp_port()
        config: dict[str, object] = {
            "defaults": {"interval": "0.5s", "alert_after": 1},
            "snmp": {"listen": [f"udp:127.0.0.1:{snmp_port}"], "communities": [{"name": community}]},
            "smtp": [
                {
                    "name": "auth",
                    "host": "127.0.0.1",
                    "port": postfix_sasl.submission_port,
                    "tls": "starttls",
                    "ca_file": str(postfix_sasl.ca_file),
                    "servername": "mail.test",
                    "auth": {"username": postfix_sasl.username, "password": {"file": str(tmp_path / "pw")}},
                }
            ],
        }
        agent = start(tmp_path / "agent", config, "--log-level", "debug")
        try:
            agent.wait_until(
                lambda: (
                    agent.value("smtp_probe_failures_total", probe="auth", phase="auth", reason="auth_failed")
                    is not None
                ),
                15,
                "the AUTH test never failed",
            )
            _, metrics = agent.get("/metrics")
            walk = subprocess.run(
                [
                    "snmpwalk",
                    "-v2c",
                    "-c",
                    community,
                    "-On",
                    "-Ox",
                    "-M",
                    f"+{base_mibs}",
                    "-m",
                    "",
                    f"127.0.0.1:{snmp_port}",
                    "1.3.6.1",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert walk.returncode == 0, walk.stderr
            walk_text = subprocess.run(
                ["snmpwalk", "-v2c", "-c", community, "-On", f"127.0.0.1:{snmp_port}", "1.3.6.1"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
        finally:
            agent.stop()
        status = subprocess.run(
            [sys.executable, "-m", "monitor", "status", "-c", str(agent.config_file), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "auth_failed" in status.stdout
        outputs = {
            "log": agent.logs(),
            "metrics": metrics,
            "snmp": walk_text,
            "snmp hex": walk.stdout,
            "status": status.stdout + status.stderr,
        }
        for secret in (wrong_password, community):
            for where, text in outputs.items():
                assert secret not in text, f"{secret!r} leaked into {where}"
                assert secret.encode().hex() not in text.replace(" ", "").lower(), f"hex of {secret!r} in {where}"
