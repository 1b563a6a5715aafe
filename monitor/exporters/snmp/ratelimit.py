"""Token buckets for what the SNMP agent sends unasked (Reports) and for the time it gives pysnmp."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens a second up to `burst`: `take` spends a whole token, `charge` spends a measured cost.

    As a time budget (tokens are seconds), `allows` asks before the work and `charge` pays after it
    with what the work took: the bucket may go negative once, then it refuses until it refilled."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens = tokens
        return tokens

    def take(self) -> bool:
        """Spend one token if there is one."""
        if self._refill() < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def allows(self) -> bool:
        """Whether anything is left to spend (for `charge` after the work)."""
        return self._refill() > 0.0

    def charge(self, cost: float) -> None:
        self._tokens -= cost
