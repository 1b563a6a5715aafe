"""An SnmpAgent served from its own event loop in a background thread, for tests that run net-snmp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from monitor.exporters.snmp.agent import SnmpAgent

T = TypeVar("T")


class AgentThread:
    """An SnmpAgent serving from its own event loop in a background thread (net-snmp runs in ours)."""

    def __init__(self, agent: SnmpAgent) -> None:
        self.agent = agent
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="snmp-agent", daemon=True)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __enter__(self) -> AgentThread:
        self._thread.start()
        try:
            self.call(self.agent.start())
        except BaseException:
            self._close_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.agent.stop())
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
