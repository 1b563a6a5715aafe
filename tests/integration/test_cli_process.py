"""`python -m monitor` as a process of its own: exit code and stderr of check-config as a shell sees them.

The in-process checks of the same command line are in tests/unit/test_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class TestCheckConfig:
    def test_subprocess_bad_config_exits_2_without_traceback(self, tmp_path: Path) -> None:
        path = tmp_path / "agent.yaml"
        path.write_text("smtp:\n  - {name: a, host: mail.example, port: 0}\n", encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "check-config", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.splitlines() == [
            f"smtp-monitor: {path}: smtp[0].port: Input should be greater than or equal to 1",
        ]
