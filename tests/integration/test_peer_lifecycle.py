"""tests.peers.lifecycle.DaemonPeer: whatever happens while starting or stopping, no process of the peer is left.

The daemon here is a Python process that starts a grandchild, as NSD and Postfix do; it is never ready,
or ignores SIGTERM, so the template's failure paths run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from tests.peers.lifecycle import DaemonPeer
from tests.support.procs import descendants, pid_alive, read_pid_file

PYTHON = os.path.basename(os.path.realpath(sys.executable))

# The main process writes its PID and its grandchild's, then sleeps; with `deaf`, it ignores SIGTERM.
_DAEMON = """
import os, signal, subprocess, sys, time
if sys.argv[2] == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(60)
"""


class NeverReady(RuntimeError):
    pass


class ToyDaemon(DaemonPeer):
    executable = PYTHON
    error = NeverReady
    stop_deadline: ClassVar[float] = 1.0

    def __init__(self, root: Path, *, deaf: bool = False, ready: bool = True) -> None:
        self.root = root
        self.deaf = deaf
        self.ready = ready

    @property
    def pid_file(self) -> Path:
        return self.root / "toy.pid"

    def _prepare(self) -> None:
        self.pid_file.unlink(missing_ok=True)

    def _launch(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", _DAEMON, str(self.pid_file), "deaf" if self.deaf else "-"])

    def _wait_ready(self) -> None:
        # the PID file names both processes once the grandchild runs: only then is there a tree to leave
        end = time.monotonic() + 10.0
        while read_pid_file(self.pid_file) is None or len(self.pid_file.read_text().split()) < 2:
            if time.monotonic() >= end:
                raise NeverReady("the toy daemon wrote no PID file")
            time.sleep(0.02)
        if not self.ready:
            raise NeverReady("the toy daemon never answers")

    def pids(self) -> list[int]:
        return [int(word) for word in self.pid_file.read_text().split()]


def test_a_failed_start_leaves_neither_the_daemon_nor_its_child(tmp_path: Path) -> None:
    toy = ToyDaemon(tmp_path, ready=False)
    with pytest.raises(NeverReady):
        toy.start()
    main, child = toy.pids()
    assert not pid_alive(main)
    assert not pid_alive(child)
    assert not toy.running()


def test_stop_ends_the_daemon_and_the_children_it_started(tmp_path: Path) -> None:
    with ToyDaemon(tmp_path) as toy:
        main, child = toy.pids()
        assert read_pid_file(toy.pid_file) == main
        assert child in descendants(main)
        assert toy.running()
    assert not pid_alive(main)
    assert not pid_alive(child)


def test_a_daemon_deaf_to_sigterm_is_killed_after_the_stop_deadline(tmp_path: Path) -> None:
    toy = ToyDaemon(tmp_path, deaf=True)
    toy.start()
    main, child = toy.pids()
    toy.stop()
    assert not pid_alive(main)
    assert not pid_alive(child)


def test_starting_twice_is_refused_and_the_first_keeps_running(tmp_path: Path) -> None:
    with ToyDaemon(tmp_path) as toy:
        main, _ = toy.pids()
        with pytest.raises(NeverReady, match="already running"):
            toy.start()
        assert pid_alive(main)
