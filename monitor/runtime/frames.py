"""The frames between the agent and its probe process: a 4-byte length and a pickle, over the socket pair
the agent hands the probe process at its start (both ends are this project's code).

Agent -> probes: ("config", Config, pending), ("stop", grace); pending maps delivery probes to the messages
they wait for, taken from the store for a new probe process only (a running one knows better: the store
may not have its latest results).
Probes -> agent: ("results", [(name, result), ...]), ("health", dict), ("stopped", None).

A module of its own so that each end imports only this of the other's: the probe process does not load
prometheus_client, which only the agent's side needs (it reads the probe process's /proc entries).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024  # a config of many thousand probes is a few MB; anything beyond is a bug


async def read_frame(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    return pickle.loads(await reader.readexactly(length))  # noqa: S301 - our own child, over a socketpair


def frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data
