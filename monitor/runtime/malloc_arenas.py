"""One glibc malloc arena for the agent process instead of one per thread that allocates.

glibc gives each thread that allocates an arena of its own and keeps what is freed in an arena for that
arena alone. The agent's worker threads (the /metrics render, the history writer, the status page) each
kept several MiB that the event loop could not reuse. At 10,000 probes the agent's RSS was 184-188 MiB
with an arena per thread, 180-181 MiB with one (bench/run.py --only scale, 8 and 9 runs in two sessions,
alternating, 2026-12-07; target 286 MiB for the agent and its probe process together). Its CPU did not
tell the two apart: 35-46 % of a core with one arena (mean 42), 32-50 % without (mean 40), and in the last
three alternating pairs the runs without were the higher. The probe process gained nothing measurable
(97-98 MiB either way), so it keeps glibc's default."""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc's malloc.h


def one_malloc_arena() -> bool:
    """Limit this process to one malloc arena; True if it now is. Call it before the process starts a
    thread: arenas already made stay. Nothing changes where the C library is not glibc, or where the
    operator chose a number with MALLOC_ARENA_MAX (glibc reads it at the first malloc)."""
    if "MALLOC_ARENA_MAX" in os.environ or not _glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # a C library that does not know the name: not glibc
        return False
