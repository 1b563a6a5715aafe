"""Process bookkeeping by PID: liveness, descendants, and stop-and-wait with escalation."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def read_pid_file(path: Path) -> int | None:
    """The PID in `path` (first number in the file), or None if absent or unreadable."""
    try:
        text = path.read_text().split()
    except OSError:
        return None
    if not text or not text[0].isdigit():
        return None
    return int(text[0])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may contain spaces: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a running process; zombies count as dead (PID 1 here may not reap)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def pid_runs(pid: int, executable: str) -> bool:
    """Whether `pid` is alive and runs a program whose file name is `executable` (guards PID reuse)."""
    if not pid_alive(pid):
        return False
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == executable
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """All live descendants of `pid` now (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if pid_alive(p)}


def wait_gone(pids: Iterable[int], deadline: float) -> set[int]:
    """Wait up to `deadline` seconds for all `pids` to exit; return those still alive."""
    remaining = set(pids)
    end = time.monotonic() + deadline
    while True:
        remaining = {p for p in remaining if pid_alive(p)}
        if not remaining or time.monotonic() >= end:
            return remaining
        time.sleep(0.05)


def kill_quietly(pid: int, sig: int) -> None:
    """Send `sig` to `pid`, ignoring a process that has already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def terminate_tree(pid: int, deadline: float = 10.0) -> None:
    """SIGTERM `pid`, wait for it and its descendants, SIGKILL whatever outlives `deadline`."""
    tree = {pid} | descendants(pid)  # collect first: children reparent once the parent dies
    kill_quietly(pid, signal.SIGTERM)
    survivors = wait_gone(tree, deadline)
    for p in survivors:
        kill_quietly(p, signal.SIGKILL)
    if wait_gone(survivors, 5.0):
        raise RuntimeError(f"processes {sorted(survivors)} survived SIGKILL")
