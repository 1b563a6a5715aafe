"""monitor.runtime.malloc_arenas: the agent's threads share one glibc malloc arena."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter: threads that allocate, then glibc's own report of its arenas on stderr.
_THREADS_THEN_ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from monitor.runtime.malloc_arenas import one_malloc_arena
    if sys.argv[1] == "limit":
        print(one_malloc_arena(), flush=True)
    together = threading.Barrier(4)  # all four alive at once: none can take over another's arena
    def allocate():
        kept = [bytearray(2000) for _ in range(200)]  # above pymalloc's 512 octets: glibc's malloc
        together.wait()
        del kept
    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    ctypes.CDLL(None).malloc_stats()
    """
)

pytestmark = pytest.mark.skipif(
    not hasattr(os, "confstr") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's malloc only"
)


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_THEN_ARENAS, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env,
        check=True,
    )
    return done.stdout.strip(), len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


def test_threads_get_arenas_of_their_own_by_default() -> None:
    # The control: without the limit glibc made one for each thread, so the next test can tell.
    assert _arenas("default")[1] == 5


def test_after_the_limit_every_thread_allocates_from_the_one_arena() -> None:
    said, arenas = _arenas("limit")
    assert said == "True"
    assert arenas == 1


def test_an_operators_malloc_arena_max_is_left_as_chosen() -> None:
    said, arenas = _arenas("limit", MALLOC_ARENA_MAX="3")
    assert said == "False"
    assert arenas == 3
