"""monitor.runtime.probe_worker: how results and health travel from the probe process to the agent."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from monitor.model.results import SmtpResult
from monitor.runtime.frames import read_frame
from monitor.runtime.probe_worker import RESULTS_EVERY, RESULTS_MAX, Worker

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
