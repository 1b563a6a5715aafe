"""monitor.runtime.probe_process: the probe process's descriptors, memory and CPU time, read by the agent."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import pytest
from prometheus_client.process_collector import ProcessCollector

from monitor.runtime.probe_process import process_facts


def fake_proc(root: Path, *, utime: int, stime: int, rss_pages: int, fds: int) -> ProcessCollector:
    """A /proc with one process (pid 42) as client_python's ProcessCollector reads it."""
    (root / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    process = root / "42"
    (process / "fd").mkdir(parents=True)
    for fd in range(fds):
        (process / "fd" / str(fd)).touch()
    fields = ["S", *["0"] * 10, str(utime), str(stime), *["0"] * 6, "500", "123456789", str(rss_pages)]
    (process / "stat").write_text(f"42 (python3 (probes)) {' '.join(fields)} 0 0\n")
    (process / "limits").write_text("Max open files            1024                 4096                 files\n")
    return ProcessCollector(proc=str(root), pid=lambda: 42, registry=None)


class TestProcessFacts:
    def test_descriptors_memory_and_cpu_come_from_the_process_collector(self, tmp_path: Path) -> None:
        collector = fake_proc(tmp_path, utime=250, stime=50, rss_pages=1000, fds=7)
        ticks = os.sysconf("SC_CLK_TCK")

        assert process_facts(collector) == {
            "open_fds": 7,
            "rss_bytes": 1000 * resource.getpagesize(),
            "cpu_seconds": pytest.approx(300 / ticks),
        }

    def test_unreadable_figures_are_left_out(self, tmp_path: Path) -> None:
        collector = fake_proc(tmp_path, utime=1, stime=1, rss_pages=1, fds=1)
        shutil.rmtree(tmp_path / "42")

        assert process_facts(collector) == {}

    def test_a_process_figures_by_its_pid_match_what_the_kernel_says(self) -> None:
        # read by number, as the agent reads its probe process's; the figures smtp_monitor_probe_process_*
        # exported before they came from ProcessCollector
        got = process_facts(ProcessCollector(pid=os.getpid, registry=None))
        statm_pages = int(Path("/proc/self/statm").read_text().split()[1])
        times, fds = os.times(), len(os.listdir("/proc/self/fd"))
        assert got["cpu_seconds"] == pytest.approx(times.user + times.system, abs=0.05)
        assert got["rss_bytes"] == pytest.approx(statm_pages * os.sysconf("SC_PAGE_SIZE"), rel=0.05)
        assert got["open_fds"] == fds
