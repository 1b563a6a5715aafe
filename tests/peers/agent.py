"""Runs the agent as a subprocess on a config of its own, for integration tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_tcp_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class AgentProcess:
    """One agent subprocess on a config file of its own; always stopped by the fixture."""

    def __init__(self, workdir: Path, config: dict[str, object], args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.args = args  # extra `run` arguments, e.g. ("--shard", "0/2")
        self.port = free_tcp_port()
        self.config = config
        self.config_file = workdir / "agent.yaml"
        self.log_file = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, config: dict[str, object]) -> None:
        config = dict(config)
        # prometheus_probe: True, or the /probe settings (allow, rate_limit, ...) to enable it with
        probe = config.pop("prometheus_probe", False)
        endpoint = {"enabled": True, **probe} if isinstance(probe, dict) else {"enabled": bool(probe)}
        prometheus: dict[str, object] = {"listen": f"127.0.0.1:{self.port}", "probe_endpoint": endpoint}
        if "prometheus_http" in config:  # prometheus.http: connection limits
            prometheus["http"] = config.pop("prometheus_http")
        full = {
            "agent": {"state_dir": str(self.workdir / "state")},
            "prometheus": prometheus,
            "snmp": {"enabled": False},
            **config,
        }
        self.config_file.write_text(yaml.safe_dump(full))

    def start(self) -> None:
        self.log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(self.config_file), *self.args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_until(lambda: self.get("/-/ready")[0] == 200, 15, "agent never became ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def samples(self) -> Samples:
        status, text = self.get("/metrics")
        assert status == 200
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{what}\n--- agent log ---\n{self.logs()[-3000:]}")
