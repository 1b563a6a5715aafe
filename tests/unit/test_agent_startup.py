"""monitor.runtime.agent's collection at the end of starting: cycles left by starting are freed, not frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from monitor.runtime.agent import _collect_from_now_on


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Starting runs with the collector off, as run_agent does; afterwards the test leaves gc as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        else:
            gc.disable()


class TestCollectFromNowOn:
    @pytest.mark.usefixtures("collector_off")
    def test_cycles_left_by_starting_are_freed_before_the_survivors_are_frozen(self) -> None:
        garbage = weakref.ref(_Node())
        kept = _Node()
        assert garbage() is not None  # nothing collected it while the collector was off
        _collect_from_now_on()
        assert garbage() is None
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert kept.me is kept
