"""A token bucket that spaces sends to at most `rate` per second."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class TokenBucket:
    """Grants permits at `rate` per second with bursts of at most `burst`, in request order.

    Implemented as the generic cell rate algorithm: each permit reserves
    the next slot on a schedule, so concurrent callers are spaced evenly
    without a lock. One bucket is shared by every delivery worker of a
    process, which makes `email.max_per_second` a per-process limit.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.interval = 1.0 / rate
        self.burst = burst
        self._monotonic = monotonic
        self._sleep = sleep
        # The time at which the bucket would be full again: the "theoretical
        # arrival time" of the algorithm.
        self._full_at = monotonic()

    def reserve(self) -> float:
        """Take the next permit and return how many seconds to wait before using it."""
        now = self._monotonic()
        full_at = max(self._full_at, now)
        allowed_at = full_at - (self.burst - 1) * self.interval
        self._full_at = full_at + self.interval
        return max(0.0, allowed_at - now)

    async def acquire(self) -> None:
        """Wait until a permit is free."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
