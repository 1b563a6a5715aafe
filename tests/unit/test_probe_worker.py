"""monitor.runtime.probe_worker: how results and health travel from the probe process to the agent."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.process_collector import ProcessCollector

from monitor.model.results import SmtpResult
from monitor.runtime.probe_process import read_frame
from monitor.runtime.probe_worker import RESULTS_EVERY, RESULTS_MAX, Worker, process_facts

RESULTS = [SmtpResult(f"mx{i}.example", 25, "none", time.time(), True, total=0.01) for i in range(RESULTS_MAX * 3)]


async def frames_after(add: int, *, wait: float, stop: bool = False) -> list[Any]:
    """Frames the agent end reads after the worker got `add` results and `wait` seconds passed."""
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    reader, agent_writer = await asyncio.open_connection(sock=theirs)
    worker = Worker(writer)
    for i in range(add):
        worker.add_result(f"p{i}", RESULTS[i])
    await asyncio.sleep(wait)
    if stop:
        worker.send_results()
    writer.close()
    frames = []
    try:
        while True:
            frames.append(await asyncio.wait_for(read_frame(reader), 2))
    except asyncio.IncompleteReadError:
        pass
    agent_writer.close()
    return frames


class TestResultBatches:
    def test_results_finishing_together_travel_in_one_frame(self) -> None:
        frames = asyncio.run(frames_after(3, wait=RESULTS_EVERY * 3))
        assert [kind for kind, _ in frames] == ["results"]
        assert [name for name, _ in frames[0][1]] == ["p0", "p1", "p2"]
        assert [r for _, r in frames[0][1]] == RESULTS[:3]

    def test_a_batch_is_not_held_longer_than_results_every(self) -> None:
        frames = asyncio.run(frames_after(1, wait=RESULTS_EVERY * 3))
        assert len(frames) == 1

    def test_nothing_is_sent_before_the_batch_is_due(self) -> None:
        frames = asyncio.run(frames_after(1, wait=0.0))
        assert frames == []

    def test_stopping_sends_the_pending_results_at_once(self) -> None:
        frames = asyncio.run(frames_after(2, wait=0.0, stop=True))
        assert [name for name, _ in frames[0][1]] == ["p0", "p1"]

    def test_a_backlog_is_split_into_frames_of_at_most_results_max(self) -> None:
        frames = asyncio.run(frames_after(RESULTS_MAX * 2 + 5, wait=RESULTS_EVERY * 3))
        assert [len(batch) for _, batch in frames] == [RESULTS_MAX, RESULTS_MAX, 5]


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

        async def facts() -> dict[str, float]:
            return process_facts(collector)

        got = asyncio.run(facts())
        assert got == {
            "tasks": 1,  # the one running facts()
            "open_fds": 7,
            "rss_bytes": 1000 * resource.getpagesize(),
            "cpu_seconds": pytest.approx(300 / ticks),
        }

    def test_unreadable_figures_are_left_out(self, tmp_path: Path) -> None:
        collector = fake_proc(tmp_path, utime=1, stime=1, rss_pages=1, fds=1)
        shutil.rmtree(tmp_path / "42")

        async def facts() -> dict[str, float]:
            return process_facts(collector)

        assert asyncio.run(facts()) == {"tasks": 1}

    def test_this_process_figures_match_what_the_kernel_says(self) -> None:
        # the figures smtp_monitor_probe_process_* exported before they came from ProcessCollector
        async def facts() -> tuple[dict[str, float], os.times_result, int, int]:
            got = process_facts(ProcessCollector(registry=None))  # in the loop, as the worker calls it
            statm_pages = int(Path("/proc/self/statm").read_text().split()[1])
            return got, os.times(), statm_pages, len(os.listdir("/proc/self/fd"))

        got, times, statm_pages, fds = asyncio.run(facts())
        assert got["cpu_seconds"] == pytest.approx(times.user + times.system, abs=0.05)
        assert got["rss_bytes"] == pytest.approx(statm_pages * os.sysconf("SC_PAGE_SIZE"), rel=0.05)
        assert got["open_fds"] == fds
