"""Split probes between agent instances by rendezvous hashing of their names."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line imports this before the models (see config_file)
    from monitor.config.schema import Config


@dataclass(frozen=True, slots=True)
class Shard:
    """This instance's place among `count` instances (index counts from 0)."""

    index: int
    count: int

    def owns(self, name: str) -> bool:
        return owner(name, self.count) == self.index

    def apply(self, config: Config) -> Config:
        """The config with only the probes this shard runs."""
        if self.count == 1:
            return config
        return config.model_copy(
            update={
                "smtp": [p for p in config.smtp if self.owns(p.name)],
                "mx": [p for p in config.mx if self.owns(p.name)],
                "delivery": [p for p in config.delivery if self.owns(p.name)],
            }
        )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def owner(name: str, count: int) -> int:
    """Rendezvous (highest random weight) hashing: going from N to N+1 shards moves only
    the probes the new shard wins, about 1/(N+1) of them; nothing moves between old shards."""

    def weight(shard: int) -> bytes:
        return hashlib.blake2b(f"{shard}\0{name}".encode(), digest_size=8).digest()

    return max(range(count), key=weight)


def parse_shard(text: str) -> Shard:
    """`INDEX/COUNT` (0 <= INDEX < COUNT), or `auto/COUNT` for the pod ordinal."""
    m = re.fullmatch(r"\s*(\d+|auto)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"bad shard {text!r}: use INDEX/COUNT, e.g. 0/3, or auto/COUNT")
    count = int(m.group(2))
    index = ordinal_from_environment() if m.group(1) == "auto" else int(m.group(1))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"bad shard {text!r}: INDEX must be 0 to COUNT-1")
    return Shard(index, count)


def ordinal_from_environment() -> int:
    """A StatefulSet pod's ordinal: POD_ORDINAL if set, else the hostname's -N suffix."""
    value = os.environ.get("POD_ORDINAL")
    if value is None:
        m = re.search(r"-(\d+)$", socket.gethostname())
        if m is None:
            raise ValueError("auto shard: set POD_ORDINAL or run with a hostname ending in -N")
        value = m.group(1)
    if not value.isdigit():
        raise ValueError(f"auto shard: POD_ORDINAL {value!r} is not a number")
    return int(value)
