"""Imported by every Python process started with bench/gc_trace on PYTHONPATH (the delivery section puts
it there for the agents it starts): appends each full collection of the cyclic GC, and any collection
of 20 ms or more, to $BENCH_GC_TRACE_DIR/gc-PID.jsonl. A full collection stops the process's event loop
for as long as it takes: this is how the bench tells a collection pause from other lateness."""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

_DIR = os.environ.get("BENCH_GC_TRACE_DIR", "")


def _role() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return "other"
    if b"monitor.runtime.probe_worker" in argv:
        return "probe process"
    if b"monitor" in argv and b"run" in argv:
        return "agent"
    return "other"


if _DIR:
    _ROLE = _role()
    _started = [0.0, 0.0]

    def _trace(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started[0], _started[1] = time.monotonic(), time.thread_time()
            return
        now = time.monotonic()
        seconds = now - _started[0]
        cpu = time.thread_time() - _started[1]  # below `seconds` when other processes held the CPU
        if info["generation"] == 2 or seconds >= 0.02:
            line = {
                "pid": os.getpid(),
                "role": _ROLE,
                "at": now,  # CLOCK_MONOTONIC: the same clock in every process of the machine
                "generation": info["generation"],
                "seconds": seconds,
                "cpu": cpu,
                "collected": info["collected"],
            }
            with open(os.path.join(_DIR, f"gc-{os.getpid()}.jsonl"), "a") as out:
                out.write(json.dumps(line) + "\n")

    gc.callbacks.append(_trace)
