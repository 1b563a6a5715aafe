"""monitor.runtime.agent's collection after starting: cycles left by starting are freed, not frozen, and it waits
until the agent is ready."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

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


class TestOnStarted:
    def test_it_runs_a_moment_after_the_agent_is_ready_and_not_after_a_stop(self, tmp_path: Path) -> None:
        from monitor.config.schema import Config
        from monitor.runtime import agent as agent_module

        config = Config.model_validate(
            {
                "agent": {"state_dir": str(tmp_path / "state"), "probe_process": False},
                "prometheus": {"listen": None},
                "status_page": {"enabled": False},
                "snmp": {"enabled": False},
            }
        )
        seen: list[bool] = []

        async def scenario(stop_after: float) -> None:
            agent = agent_module.Agent(tmp_path / "agent.yaml", config)
            serving = asyncio.create_task(agent.serve(on_started=lambda: seen.append(agent._started)))
            await asyncio.sleep(stop_after)
            agent._stopping.set()
            await serving

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(agent_module, "ON_STARTED_DELAY", 0.2)
            asyncio.run(scenario(stop_after=0.05))  # stopped before the delay: never called
            assert seen == []
            asyncio.run(scenario(stop_after=0.6))
            assert seen == [True]  # once, with the agent started (ready) before it
