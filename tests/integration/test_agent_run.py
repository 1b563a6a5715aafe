"""`smtp-monitor run` as a process: metrics over HTTP, failure and recovery of a real Postfix, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.peers import zone
from tests.peers.agent import AgentProcess
from tests.peers.net_snmp import tool_env
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.support.ports import free_tcp_port, free_udp_port


def smtp_probes(postfix: PostfixServer) -> list[dict[str, object]]:
    common = {"host": "127.0.0.1", "ca_file": str(postfix.ca_file), "servername": "mail.test"}
    return [
        {"name": "plain", "port": postfix.plain_port, "tls": "none", **common},
        {"name": "starttls", "port": postfix.plain_port, "tls": "starttls", **common},
        {"name": "smtps", "port": postfix.implicit_port, "tls": "implicit", **common},
        {"name": "submission", "port": postfix.submission_port, "tls": "starttls", **common},
    ]


class TestAgentMetrics:
    def test_probes_and_mx_checks_against_real_peers_show_up_ok(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
        dns_server: NsdServer,
    ) -> None:
        agent = agent_factory(
            {
                "defaults": {"interval": "1s", "timeout": "5s"},
                "dns": {"nameservers": [f"{dns_server.host}:{dns_server.port}"]},
                "smtp": smtp_probes(postfix),
                "mx": [{"name": "good", "domain": "good.test", "expect": ["mx1.good.test", "mx2.good.test"]}],
            }
        )
        names = ["plain", "starttls", "smtps", "submission"]
        agent.wait_until(
            lambda: (
                all(agent.value("smtp_probe_status", probe=n, status="ok") == 1.0 for n in names)
                and agent.value("mx_check_status", check="good", status="ok") == 1.0
            ),
            20,
            "probes never turned ok",
        )
        samples = agent.samples()
        assert samples[("smtp_tls_verified", frozenset({("probe", "starttls")}))] == 1.0
        assert samples[("mx_check_records", frozenset({("check", "good")}))] == len(zone.GOOD_MX)
        assert samples[("smtp_probe_phase_duration_seconds", frozenset({("probe", "smtps"), ("phase", "tls")}))] > 0
        assert samples[("smtp_tls_cert_not_after_timestamp_seconds", frozenset({("probe", "smtps")}))] > time.time()

    def test_live_exposition_passes_promtool(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory({"defaults": {"interval": "1s"}, "smtp": smtp_probes(postfix)})
        agent.wait_until(lambda: agent.value("smtp_probe_runs_total", probe="smtps") is not None, 15, "no runs")
        _, text = agent.get("/metrics")
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0
        assert check.stdout + check.stderr == ""

    def test_stopped_postfix_turns_probes_failed_then_ok_again(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory(
            {
                "defaults": {"interval": "0.5s", "timeout": "2s", "alert_after": 2},
                "smtp": smtp_probes(postfix)[:2],
            }
        )
        agent.wait_until(lambda: agent.value("smtp_probe_status", probe="plain", status="ok") == 1.0, 15, "not ok")
        postfix.pause()
        agent.wait_until(
            lambda: agent.value("smtp_probe_status", probe="plain", status="failed") == 1.0,
            15,
            "never failed",
        )
        assert (agent.value("smtp_probe_consecutive_failures", probe="plain") or 0) >= 2
        assert (agent.value("smtp_probe_failures_total", probe="plain", phase="connect", reason="refused") or 0) >= 2
        postfix.resume()
        agent.wait_until(
            lambda: agent.value("smtp_probe_status", probe="plain", status="ok") == 1.0,
            20,
            "never recovered",
        )
        log = agent.logs()
        assert "smtp plain status: ok -> failed" in log
        assert "smtp plain status: failed -> ok" in log


class TestEveryAddressOfAHost:
    def test_both_families_show_each_address_in_metrics_and_in_smtp_address_table(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
        dns_server: NsdServer,
        base_mibs: Path,
        tmp_path: Path,
    ) -> None:
        # mx2.good.test has 127.0.0.1 and ::1; Postfix listens on 127.0.0.1 only.
        snmp_port = free_udp_port()
        agent = agent_factory(
            {
                "defaults": {"interval": "1s", "timeout": "5s"},
                "dns": {"nameservers": [f"{dns_server.host}:{dns_server.port}"]},
                "snmp": {"listen": [f"udp:127.0.0.1:{snmp_port}"], "communities": [{"name": "public"}]},
                "smtp": [
                    {
                        "name": "both",
                        "host": zone.GOOD_MX2.rstrip("."),
                        "port": postfix.plain_port,
                        "tls": "none",
                        "address_family": "both",
                    }
                ],
            }
        )
        agent.wait_until(
            lambda: agent.value("smtp_probe_address_success", probe="both", address="::1") is not None,
            20,
            "no per-address samples",
        )
        assert agent.value("smtp_probe_address_success", probe="both", address="127.0.0.1") == 1.0
        assert agent.value("smtp_probe_address_success", probe="both", address="::1") == 0.0
        env = tool_env(tmp_path)
        mib_dirs = f"+{Path(__file__).resolve().parents[2] / 'mibs'}:{base_mibs}"
        table = subprocess.run(
            [
                "snmptable",
                "-v2c",
                "-c",
                "public",
                "-t",
                "3",
                "-r",
                "2",
                "-M",
                mib_dirs,
                "-m",
                "SMTP-MONITOR-MIB",
                "-Ci",
                "-Cf",
                "|",
                f"127.0.0.1:{snmp_port}",
                "SMTP-MONITOR-MIB::smtpAddressTable",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert (table.returncode, table.stderr) == (0, "")
        lines = [line.split("|") for line in table.stdout.splitlines() if "|" in line]
        header, rows = lines[0], lines[1:]
        assert header == [
            "index",
            "smtpAddressValue",
            "smtpAddressUp",
            "smtpAddressLastError",
            "smtpAddressFailedPhase",
            "smtpAddressFailedReason",
            "smtpAddressReplyCode",
            "smtpAddressLatency",
        ]
        by_address = {row[1]: row for row in rows}
        assert [row[0] for row in rows] == ['"both".1', '"both".2']
        assert by_address["127.0.0.1"][2:6] == ["up", "", "none", "none"]
        assert by_address["::1"][2] == "down"
        assert by_address["::1"][3] != ""
        assert by_address["::1"][4] == "connect"


class TestAgentLifecycle:
    def test_sighup_adds_and_removes_probes(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        probes = smtp_probes(postfix)
        agent = agent_factory({"defaults": {"interval": "0.5s"}, "smtp": probes[:1]})
        agent.wait_until(lambda: agent.value("smtp_probe_runs_total", probe="plain") is not None, 10, "no runs")
        agent.write_config({"defaults": {"interval": "0.5s"}, "smtp": probes[1:2]})
        agent.signal(signal.SIGHUP)
        agent.wait_until(
            lambda: (
                agent.value("smtp_probe_runs_total", probe="starttls") is not None
                and agent.value("smtp_probe_runs_total", probe="plain") is None
            ),
            10,
            "reload did not swap the probes",
        )
        assert agent.value("smtp_monitor_config_reloads_total", outcome="success") == 1.0

    def test_bad_config_on_reload_is_refused_and_old_probes_keep_running(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory({"defaults": {"interval": "0.5s"}, "smtp": smtp_probes(postfix)[:1]})
        agent.wait_until(lambda: agent.value("smtp_probe_runs_total", probe="plain") is not None, 10, "no runs")
        agent.config_file.write_text("smtp: [{name: broken, host: 127.0.0.1, port: 99999}]\n")
        agent.signal(signal.SIGHUP)
        agent.wait_until(
            lambda: agent.value("smtp_monitor_config_last_reload_successful") == 0.0, 10, "bad reload not reported"
        )
        before = agent.value("smtp_probe_runs_total", probe="plain") or 0
        agent.wait_until(
            lambda: (agent.value("smtp_probe_runs_total", probe="plain") or 0) > before, 10, "old probe stopped"
        )
        assert "reload refused" in agent.logs()
        assert "smtp[0].port" in agent.logs()

    def test_sigterm_exits_zero_within_five_seconds(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory({"defaults": {"interval": "0.5s"}, "smtp": smtp_probes(postfix)})
        agent.wait_until(lambda: agent.value("smtp_probe_runs_total", probe="plain") is not None, 10, "no runs")
        assert agent.proc is not None
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert agent.get("/-/healthy")[0] == 0  # the port is closed

    def test_kill_9_and_restart_resumes_failed_status_without_a_new_transition(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
    ) -> None:
        closed = free_tcp_port()  # nothing listens: every run fails in connect
        config: dict[str, object] = {
            # alert_after 8 at 0.3 s: a fresh agent would need over 2 s to call it failed again
            "defaults": {"interval": "0.3s", "alert_after": 8},
            "smtp": [{"name": "down", "host": "127.0.0.1", "port": closed, "tls": "none"}],
        }
        agent = agent_factory(config)
        agent.wait_until(
            lambda: agent.value("smtp_probe_status", probe="down", status="failed") == 1.0,
            10,
            "not failed",
        )
        saved_runs = 8  # at least the runs saved with the status change
        assert agent.proc is not None
        agent.proc.kill()  # SIGKILL: no shutdown path runs
        agent.proc.wait(10)
        agent.log.close()
        agent.start()
        assert agent.value("smtp_probe_status", probe="down", status="failed") == 1.0
        assert (agent.value("smtp_probe_runs_total", probe="down") or 0) >= saved_runs
        assert agent.logs().count("smtp down status: unknown -> failed") == 1
        assert "ok -> failed" not in agent.logs()

    def test_bad_config_at_start_exits_two_without_traceback(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text("defaults: {interval: soon}\n")
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "run", "-c", str(bad)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ},
        )
        assert proc.returncode == 2
        assert "defaults.interval" in proc.stderr
        assert str(bad) in proc.stderr
        assert "Traceback" not in proc.stderr


class TestOperationsSurface:
    def test_adhoc_probe_endpoint_returns_one_probes_metrics(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        allow = {"networks": ["127.0.0.0/8"], "ports": [postfix.plain_port]}
        agent = agent_factory({"prometheus_probe": {"allow": allow}, "smtp": []})
        status, text = agent.get(f"/probe?target=127.0.0.1:{postfix.plain_port}&tls=starttls&verify=false")
        assert status == 200
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        labels = frozenset(
            {("probe", "adhoc"), ("host", "127.0.0.1"), ("port", str(postfix.plain_port)), ("tls", "starttls")}
        )
        assert samples[("smtp_probe_success", labels)] == 1.0
        assert not any(name.startswith("smtp_monitor_") for name, _ in samples)
        assert agent.get("/probe")[0] == 400
        assert agent.value("smtp_probe_runs_total", probe="adhoc") is None  # never enters the store

    def test_probe_endpoint_is_off_unless_enabled(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
    ) -> None:
        agent = agent_factory({"smtp": []})
        assert agent.get("/probe?target=127.0.0.1:25")[0] == 404

    def test_status_command_lists_probes_from_the_state_database(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        closed = free_tcp_port()
        agent = agent_factory(
            {
                "defaults": {"interval": "0.3s", "alert_after": 1},
                "smtp": [
                    {"name": "up", "host": "127.0.0.1", "port": postfix.plain_port, "tls": "none"},
                    {"name": "down", "host": "127.0.0.1", "port": closed, "tls": "none"},
                ],
            }
        )
        agent.wait_until(lambda: agent.value("smtp_probe_status", probe="up", status="ok") == 1.0, 10, "not ok")
        agent.signal(signal.SIGTERM)  # the final flush writes every state
        assert agent.proc is not None
        agent.proc.wait(10)
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "status", "-c", str(agent.config_file)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2  # one probe is failed
        lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
        assert " ok " in lines["up"]
        assert " failed " in lines["down"]
        assert "connect/refused" in lines["down"]


def children(pid: int) -> list[int]:
    """PIDs of a process's children, from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, waiting for its parent to reap it
            return True
        time.sleep(0.05)
    return False


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class TestProbeProcess:
    def test_probes_run_in_a_child_process_that_stops_with_the_agent(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory({"defaults": {"interval": "0.5s"}, "smtp": smtp_probes(postfix)[:1]})
        agent.wait_until(lambda: agent.value("smtp_probe_runs_total", probe="plain") is not None, 10, "no runs")
        assert agent.proc is not None
        [child] = children(agent.proc.pid)
        assert "monitor.runtime.probe_worker" in Path(f"/proc/{child}/cmdline").read_text()
        agent.wait_until(
            lambda: (agent.value("smtp_monitor_probe_process_open_fds") or 0) > 0, 5, "no probe process health"
        )
        assert (agent.value("smtp_monitor_probe_process_tasks") or 0) >= 1
        # the agent reads the child's /proc entries (not its own): the exported descriptors are the child's
        agent.wait_until(
            lambda: agent.value("smtp_monitor_probe_process_open_fds") == open_fds(child), 5, "not the child's fds"
        )
        assert open_fds(agent.proc.pid) != open_fds(child)
        assert (agent.value("smtp_monitor_tasks") or 0) >= 1
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 0
        assert wait_gone(child, 5)

    def test_a_killed_probe_process_is_restarted_and_probing_goes_on(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory({"defaults": {"interval": "0.3s"}, "smtp": smtp_probes(postfix)[:1]})
        agent.wait_until(lambda: agent.value("smtp_probe_runs_total", probe="plain") is not None, 10, "no runs")
        assert agent.proc is not None
        [child] = children(agent.proc.pid)
        os.kill(child, signal.SIGKILL)
        assert wait_gone(child, 5)
        before = agent.value("smtp_probe_runs_total", probe="plain") or 0
        agent.wait_until(
            lambda: (agent.value("smtp_probe_runs_total", probe="plain") or 0) > before + 2, 15, "probing stopped"
        )
        assert "restarting the probe process" in agent.logs()
        assert children(agent.proc.pid) != [child]

    def test_probe_process_exits_when_the_agent_is_killed(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
    ) -> None:
        agent = agent_factory({"defaults": {"interval": "0.5s"}, "smtp": smtp_probes(postfix)[:1]})
        assert agent.proc is not None
        [child] = children(agent.proc.pid)
        agent.proc.kill()
        agent.proc.wait(10)
        assert wait_gone(child, 10)  # no orphan keeps probing
