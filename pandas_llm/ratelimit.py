"""Rate limits as a shared budget: one limiter for requests and tokens per minute.

Every worker asks the limiter before sending; a 429 pauses all of them, not only the
one that got it. Clock and sleep are injected so tests run in milliseconds.

    >>> import asyncio
    >>> lim = Limiter(rpm=60)
    >>> asyncio.run(lim.acquire(10))
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Mapping

__all__ = ["Limiter"]


class _Bucket:
    """A token bucket refilled continuously at ``per_minute / 60`` per second."""

    def __init__(self, per_minute: float, now: float):
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


class Limiter:
    """Requests-per-minute and tokens-per-minute budget shared by all workers."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self.requests = _Bucket(rpm, now) if rpm else None
        self.tokens = _Bucket(tpm, now) if tpm else None
        self.paused_until = 0.0

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None or self.paused_until > 0

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of ``tokens`` tokens fits, then take it from the budget."""
        while True:
            now = self.clock()
            wait = self.paused_until - now
            if wait <= 0:
                wait = 0.0
                for bucket, amount in ((self.requests, 1), (self.tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    if self.requests is not None:
                        self.requests.level -= 1
                    if self.tokens is not None:
                        self.tokens.level -= tokens
                    return
            await self.sleep(wait)

    def settle(self, reserved: int, used: int) -> None:
        """Give back what a request reserved but did not use (or take what it overran)."""
        if self.tokens is not None:
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + reserved - used)

    def pause(self, seconds: float) -> None:
        """Stop every worker for ``seconds`` (after a 429)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Keep in step with the server's x-ratelimit-* headers (refined by the throughput work)."""
        return None
