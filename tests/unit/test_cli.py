"""monitor.cli.main: exit codes (0 ok, 2 bad config or CRITICAL, 3 usage) and output of check-config and probe."""

from __future__ import annotations

import ast
import gc
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import __version__
from monitor.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agent.yaml"


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write(directory: Path, text: str) -> Path:
    path = directory / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def usage_exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


def modules_loaded_by(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules under `prefixes` that a fresh interpreter holds after `import sys, <imports>`."""
    code = f"import sys, {imports}; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = ast.literal_eval(proc.stdout)
    return loaded


class TestCheckConfig:
    def test_good_config_exits_0_with_a_summary(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check-config", "-c", str(EXAMPLE)]) == 0
        out, err = capsys.readouterr()
        assert out == f"{EXAMPLE}: ok (2 SMTP probes, 1 MX checks)\n"
        assert err == ""

    def test_bad_config_exits_2_with_one_line_per_problem(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write(tmp_path, "defaults: {interval: 5q}\nsmtp:\n  - {name: a, host: mail.example, bogus: 1}\n")
        assert main(["check-config", "-c", str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        lines = err.splitlines()
        assert lines == [
            f"smtp-monitor: {path}: defaults.interval: bad duration '5q': use seconds or a string like 30s, 5m, 1h",
            f"{path}: smtp[0].bogus: unknown key",
        ]

    def test_missing_config_file_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "absent.yaml"
        assert main(["check-config", "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"smtp-monitor: {path}: cannot read")
        assert len(err.splitlines()) == 1

    def test_invalid_yaml_exits_2_naming_the_line(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, "? [a]\n: 1\n")
        assert main(["check-config", "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert err == f"smtp-monitor: {path}: invalid YAML: line 1, column 3: found unhashable key\n"


class TestRun:
    def test_bad_config_exits_2_and_leaves_the_collector_on(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write(tmp_path, "smtp:\n  - {name: a, host: mail.example, port: 0}\n")
        assert main(["run", "-c", str(path)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"smtp-monitor: {path}: smtp[0].port: Input should be greater than or equal to 1",
        ]
        assert gc.isenabled()

    def test_command_line_forks_the_config_reader_before_the_models_load(self) -> None:
        loaded = modules_loaded_by("monitor.cli.main", ("pydantic", "monitor.config"))
        assert loaded == ["monitor.config", "monitor.config.document", "monitor.config.reader"]

    def test_agent_modules_leave_the_probes_to_the_probe_process(self) -> None:
        imports = "monitor.cli.main, monitor.runtime.agent, monitor.exporters.snmp.agent, monitor.exporters.snmp.notify"
        assert modules_loaded_by(imports, ("monitor.probes", "monitor.runtime.scheduler", "dns.")) == []


class TestUsageErrors:
    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["frobnicate"],
            ["probe"],
            ["probe", "127.0.0.1:25", "--tls", "ssl"],
            ["probe", "127.0.0.1:25", "--timeout", "5q"],
            ["probe", "127.0.0.1:25", "--cert-warn-days", "soon"],
            ["check-config"],
            ["mx"],
        ],
    )
    def test_argparse_errors_exit_3(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        assert usage_exit(argv) == 3
        err = capsys.readouterr().err
        assert "usage:" in err
        assert "error:" in err

    def test_bad_target_port_exits_3(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["probe", "127.0.0.1:99999"]) == 3
        assert capsys.readouterr().err == "smtp-monitor: bad port in '127.0.0.1:99999': use 1-65535\n"

    def test_bad_target_host_exits_3_naming_the_field(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["probe", "bad host"]) == 3
        assert capsys.readouterr().err == "smtp-monitor: host: bad host name 'bad host'\n"

    def test_version_exits_0(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert usage_exit(["--version"]) == 0
        assert capsys.readouterr().out == f"smtp-monitor {__version__}\n"


class TestProbeCommand:
    def test_closed_port_is_critical_in_connect_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        port = closed_port()
        assert main(["probe", f"127.0.0.1:{port}", "--timeout", "5s"]) == 2
        out = capsys.readouterr().out
        assert out.startswith(f"SMTP CRITICAL - 127.0.0.1:{port} failed in connect: refused: connection refused | ")
        assert "total=" in out
        assert len(out.splitlines()) == 1

    def test_json_output_has_the_result_keys(self, capsys: pytest.CaptureFixture[str]) -> None:
        port = closed_port()
        assert main(["probe", f"127.0.0.1:{port}", "--tls", "none", "--json"]) == 2
        result = json.loads(capsys.readouterr().out)
        assert {"status", "phase", "reason", "error", "timings", "banner", "extensions", "tls"} <= result.keys()
        assert result["status"] == "failed"
        assert result["phase"] == "connect"
        assert result["reason"] == "refused"
        assert result["port"] == port
        assert result["tls_mode"] == "none"
        assert result["tls"] is None
        assert result["extensions"] == {}
        assert result["timings"]["total"] > 0
