"""py-spy profiles of the agent: collapsed stacks on disk and a top-N summary by self and total time."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from bench.common import log
from bench.peers import ensure_py_spy


def record(pid: int, seconds: float, out: Path) -> Path | None:
    """Sample `pid` and its subprocesses for `seconds` (idle frames excluded) into collapsed stacks.

    py-spy samples wall time of threads it thinks busy: a thread preempted by other load still
    counts, so syscalls that wake another process (sendto on loopback) look heavier than they are."""
    py_spy = ensure_py_spy()
    if py_spy is None:
        return None
    raw = out.with_suffix(".txt")
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(raw),
        "--nonblocking",
        "--subprocesses",  # the agent runs its probes in a child process
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0 or not raw.exists():
        log(f"py-spy failed ({proc.returncode}): {proc.stderr[-500:]}")
        return None
    return raw  # collapsed stacks: flamegraph.pl and speedscope read them


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)": lines of one function count together
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def sample_counts(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """(samples per function on top of the stack, samples per function anywhere in it, all samples).

    py-spy's --subprocesses puts a "process PID:..." frame on top of each stack: not a function, left out."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        total += count
        if frames:
            self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    return self_counts, total_counts, total


def summarize(raw: Path, top: int = 15) -> str:
    """Top functions by self samples and by inclusive samples, as text lines."""
    self_counts, total_counts, total = sample_counts(raw)
    if total == 0:
        return "(no samples)"
    lines = [f"{total} samples; top by self time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_counts.most_common(top)]
    lines.append("top by inclusive time:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in total_counts.most_common(top + 10)]
    return "\n".join(lines)


def profile_to_file(pid: int, seconds: float, out: Path) -> str:
    """Record and summarize; the summary also goes next to the raw stacks as *.summary."""
    raw = record(pid, seconds, out)
    if raw is None:
        return "(no profile)"
    text = summarize(raw)
    out.with_suffix(".summary").write_text(text + "\n")
    log(f"profile written to {raw} (collapsed stacks) and {out.with_suffix('.summary')}")
    return text
