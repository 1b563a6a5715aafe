"""A recording asyncio transport for driving protocols by hand, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any


class RecordingTransport(asyncio.Transport):
    """Keeps what is written and whether reading is paused; closing only flips flags."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = False
        self.pause_calls = 0
        self.resume_calls = 0
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise RuntimeError("write on a closed RecordingTransport")
        self.written += data

    def pause_reading(self) -> None:
        self.pause_calls += 1
        self.paused = True

    def resume_reading(self) -> None:
        self.resume_calls += 1
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused and not self.closed

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
