"""One account limit for every process of a Dask compute: grants in blocks from a coordinator.

Each partition's run keeps its own :class:`~pandas_llm._run.limiter.Limiter` (pacing, 429
pauses, token estimates) and, wrapped in a :class:`SharedLimiter`, also takes every
request from a block of grants handed out by one :class:`Coordinator` per account
(endpoint, model). On a distributed cluster the coordinator is a Dask actor; without
one (threads, the synchronous scheduler) it is an object in this process.

The coordinator paces blocks on the account's RPM/TPM (given, or the lowest any worker
learned from the headers) at ``headroom`` of the limit, GCRA style: a block of ``n``
requests takes the next ``n / rate`` seconds of the schedule, and its worker spaces them
``1 / rate`` apart within it, so the cluster as a whole sends at the paced rate without
bursts. A block is a tenth of a second's worth of the limit (at least one request), so the
workers ask about 10 times a second in all (~1 ms per ask, measured on a LocalCluster);
a partition that ends mid-block leaves the rest of it unused. Until some worker has learned whether the server
has limits, at most ``initial_burst`` requests go out cluster-wide; a 429 seen by any
worker pauses the grants for its wait.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .._run.learned import remembered_limits

__all__ = ["Coordinator", "SharedLimiter", "local_coordinator"]

#: A block is this many seconds' worth of the limit (at least one request).
BLOCK_SECONDS = 0.1
#: With no limits learned after this many seconds of asking, stop holding requests back.
UNKNOWN_FOR = 5.0


class Coordinator:
    """The account's budget for the cluster. Its methods are called one at a time (an actor)."""

    def __init__(self, *, initial_burst: int = 16, headroom: float = 0.97, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.headroom = headroom
        self.rpm: float | None = None
        self.tpm: float | None = None
        self.known = False
        self.burst_left = initial_burst
        self.first_ask: float | None = None
        now = clock()
        self.r_tat = self.t_tat = now
        self.paused_until = 0.0
        self.granted = 0

    def grant(self, tokens: int, rpm: float | None, tpm: float | None, known: bool) -> tuple[float, int, int, float]:
        """A block for a worker whose next request reserves ``tokens``; the worker says the
        limits it was told or learned (``known``: it has learned whether there are any).
        Returns ``(start, requests, tokens, spacing)``: the block's first request may go at
        ``start`` (wall-clock seconds: the hosts of a cluster keep their clocks in step), each
        next one ``spacing`` seconds after the previous."""
        now = self.clock()
        if self.first_ask is None:
            self.first_ask = now
        if rpm:
            self.rpm = min(self.rpm or math.inf, rpm)
        if tpm:
            self.tpm = min(self.tpm or math.inf, tpm)
        was_known = self.known
        self.known = self.known or known or bool(rpm or tpm) or now - self.first_ask > UNKNOWN_FOR
        if self.known and not was_known and self.rpm:
            # the initial burst is on the server's books: the schedule starts after it
            self.r_tat = max(self.r_tat, now) + self.granted * 60.0 / (self.rpm * self.headroom)
        if not self.known:
            if self.burst_left <= 0:
                return now + 0.05, 0, 0, 0.0  # ask again: some worker will have learned the limits
            self.burst_left -= 1
            self.granted += 1
            return now, 1, tokens, 0.0
        start = max(now, self.paused_until)
        if not (self.rpm or self.tpm):
            return start, 1000, 1000 * tokens, 0.0  # no limits: large blocks, rarely an ask
        # seconds one request takes of each budget at headroom; the block is BLOCK_SECONDS long
        per = max(
            60.0 / (self.rpm * self.headroom) if self.rpm else 0.0,
            60.0 * tokens / (self.tpm * self.headroom) if self.tpm else 0.0,
        )
        n = max(1, int(BLOCK_SECONDS / per)) if per > 0 else 1000
        if self.rpm:
            start = max(start, self.r_tat)
        if self.tpm:
            start = max(start, self.t_tat)
        if self.rpm:
            self.r_tat = start + n * 60.0 / (self.rpm * self.headroom)
        if self.tpm:
            self.t_tat = start + n * 60.0 * tokens / (self.tpm * self.headroom)
        self.granted += n
        return start, n, n * tokens, per

    def pause(self, seconds: float) -> None:
        """A worker got a 429 asking for ``seconds``: hold every grant until then."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)


_local: dict[Any, Coordinator] = {}
_local_lock = threading.Lock()


def local_coordinator(key: Any) -> tuple[Callable[..., tuple[float, int, int, float]], Callable[[float], None]]:
    """``(ask, pause)`` for the in-process coordinator of ``key`` (partitions run by threads)."""
    with _local_lock:
        coord = _local.setdefault(key, Coordinator())

    def ask(*args: Any) -> tuple[float, int, int, float]:
        with _local_lock:
            return coord.grant(*args)

    def pause(seconds: float) -> None:
        with _local_lock:
            coord.pause(seconds)

    return ask, pause


class SharedLimiter:
    """A run's Limiter that also spends a grant from the coordinator for each request.

    ``ask(tokens, rpm, tpm, known) -> (start, requests, tokens, spacing)`` and ``pause(seconds)``
    reach the coordinator (blocking calls: they run on a thread). Everything else is the
    inner limiter's."""

    def __init__(self, inner: Any, ask: Callable[..., tuple[float, int, int, float]], pause: Callable[[float], None],
                 *, rpm: float | None = None, tpm: float | None = None,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self._inner = inner
        self._clock = clock  # the coordinator's: wall-clock seconds
        self._ask = ask
        self._pause = pause
        self._rpm, self._tpm = rpm, tpm  # the user's
        self._requests = 0
        self._tokens = 0
        self._gate: asyncio.Lock | None = None
        self._next_at = 0.0  # when the block's next request may go (the inner limiter's clock)
        self._spacing = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def admit(self, body: bytes) -> tuple[int, int]:
        await self._take(self._inner.reserve(body))
        return await self._inner.admit(body)

    async def acquire(self, tokens: int = 0) -> int:
        await self._take(tokens)
        return await self._inner.acquire(tokens)

    def rate_limited(self, *args: Any, **kwargs: Any) -> float:
        wait = self._inner.rate_limited(*args, **kwargs)
        if wait > 0:
            asyncio.get_running_loop().run_in_executor(None, self._pause, wait)
        return wait

    def _skip_late(self) -> None:
        """Slots of the block already past (the reply came late, the loop was busy) are given
        up, not sent at once: a burst would fall into the next block's time."""
        spacing = self._spacing
        if spacing <= 0:
            return
        late = self._clock() - spacing
        while self._requests > 1 and self._next_at < late:  # the last one goes: a skewed clock still sends
            self._next_at += spacing
            self._requests -= 1

    async def _take(self, tokens: int) -> None:
        if self._gate is None:
            self._gate = asyncio.Lock()
        inner = self._inner
        async with self._gate:
            self._skip_late()
            while self._requests < 1 or self._tokens < tokens:
                key = inner.key
                learned = remembered_limits(*key) if key is not None else None
                rpm, tpm = self._rpm, self._tpm
                if learned is not None:
                    rpm = min(x for x in (rpm, learned[0]) if x) if (rpm or learned[0]) else None
                    tpm = min(x for x in (tpm, learned[1]) if x) if (tpm or learned[1]) else None
                start, n, t, spacing = await asyncio.to_thread(self._ask, tokens, rpm, tpm, learned is not None)
                if n == 0:
                    await inner.sleep(max(0.0, start - self._clock()))
                    continue
                self._next_at, self._spacing = start, spacing
                self._requests, self._tokens = n, t  # what is left of an earlier block is not used
                self._skip_late()
            wait = self._next_at - self._clock()
            if wait > 0:
                await inner.sleep(wait)
            self._next_at += self._spacing
            self._requests -= 1
            self._tokens -= tokens
