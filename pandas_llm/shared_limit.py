"""One account limit for every process of a Dask compute: grants in blocks from a coordinator.

Each partition's run keeps its own :class:`~pandas_llm.ratelimit.Limiter` (pacing, 429
pauses, token estimates) and, wrapped in a :class:`SharedLimiter`, also takes every
request from a block of grants handed out by one :class:`Coordinator` per account
(endpoint, model). On a distributed cluster the coordinator is a Dask actor; without
one (threads, the synchronous scheduler) it is an object in this process.

The coordinator paces blocks on the account's RPM/TPM (given, or the lowest any worker
learned from the headers) at ``headroom`` of the limit, GCRA style: a block of ``n``
requests moves the schedule on by ``n / rate``, so any interval of ``t`` seconds holds at
most ``rate * t + n`` requests. Blocks are ~2% of a second's worth of the limit (at least
one request), so a worker asks about 50 times a second across the cluster at most (~1 ms
per ask, measured on a LocalCluster). Until some worker has learned whether the server
has limits, at most ``initial_burst`` requests go out cluster-wide; a 429 seen by any
worker pauses the grants for its wait.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Callable

from .ratelimit_headers import remembered_limits

__all__ = ["Coordinator", "SharedLimiter", "local_coordinator"]

#: A block is this many seconds' worth of the limit (at least one request).
BLOCK_SECONDS = 0.02
#: With no limits learned after this many seconds of asking, stop holding requests back.
UNKNOWN_FOR = 5.0


class Coordinator:
    """The account's budget for the cluster. Its methods are called one at a time (an actor)."""

    def __init__(self, *, initial_burst: int = 16, headroom: float = 0.97, clock: Callable[[], float] = time.monotonic):
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

    def grant(self, tokens: int, rpm: float | None, tpm: float | None, known: bool) -> tuple[float, int, int]:
        """A block for a worker whose next request reserves ``tokens``; the worker says the
        limits it was told or learned (``known``: it has learned whether there are any).
        Returns ``(delay, requests, tokens)``: the block may be spent ``delay`` seconds from now."""
        now = self.clock()
        if self.first_ask is None:
            self.first_ask = now
        if rpm:
            self.rpm = min(self.rpm or math.inf, rpm)
        if tpm:
            self.tpm = min(self.tpm or math.inf, tpm)
        self.known = self.known or known or bool(rpm or tpm) or now - self.first_ask > UNKNOWN_FOR
        if not self.known:
            if self.burst_left <= 0:
                return 0.05, 0, 0  # ask again: some worker will have learned the limits
            self.burst_left -= 1
            self.granted += 1
            return 0.0, 1, tokens
        start = max(now, self.paused_until)
        if not (self.rpm or self.tpm):
            return start - now, 1000, 1000 * tokens  # no limits: large blocks, rarely an ask
        n = math.inf
        if self.rpm:
            n = min(n, self.rpm / 60.0 * self.headroom * BLOCK_SECONDS)
            start = max(start, self.r_tat)
        if self.tpm:
            n = min(n, self.tpm / 60.0 * self.headroom * BLOCK_SECONDS / max(tokens, 1))
            start = max(start, self.t_tat)
        n = max(1, int(n))
        if self.rpm:
            self.r_tat = start + n / (self.rpm / 60.0 * self.headroom)
        if self.tpm:
            self.t_tat = start + n * tokens / (self.tpm / 60.0 * self.headroom)
        self.granted += n
        return start - now, n, n * tokens

    def pause(self, seconds: float) -> None:
        """A worker got a 429 asking for ``seconds``: hold every grant until then."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)


_local: dict[Any, Coordinator] = {}
_local_lock = threading.Lock()


def local_coordinator(key: Any) -> tuple[Callable[..., tuple[float, int, int]], Callable[[float], None]]:
    """``(ask, pause)`` for the in-process coordinator of ``key`` (partitions run by threads)."""
    with _local_lock:
        coord = _local.setdefault(key, Coordinator())

    def ask(*args: Any) -> tuple[float, int, int]:
        with _local_lock:
            return coord.grant(*args)

    def pause(seconds: float) -> None:
        with _local_lock:
            coord.pause(seconds)

    return ask, pause


class SharedLimiter:
    """A run's Limiter that also spends a grant from the coordinator for each request.

    ``ask(tokens, rpm, tpm, known) -> (delay, requests, tokens)`` and ``pause(seconds)``
    reach the coordinator (blocking calls: they run on a thread). Everything else is the
    inner limiter's."""

    def __init__(self, inner: Any, ask: Callable[..., tuple[float, int, int]], pause: Callable[[float], None],
                 *, rpm: float | None = None, tpm: float | None = None):  # fmt: skip
        self._inner = inner
        self._ask = ask
        self._pause = pause
        self._rpm, self._tpm = rpm, tpm  # the user's
        self._requests = 0
        self._tokens = 0
        self._gate: asyncio.Lock | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def admit(self, body: bytes) -> tuple[int, int]:
        await self._take(self._inner.reserve(body))
        return await self._inner.admit(body)

    async def acquire(self, tokens: int = 0) -> int:
        await self._take(tokens)
        return await self._inner.acquire(tokens)

    def rate_limited(self, ticket: int, retry_after: float | None, headers: Any = None) -> float:
        wait = self._inner.rate_limited(ticket, retry_after, headers)
        if wait > 0:
            asyncio.get_running_loop().run_in_executor(None, self._pause, wait)
        return wait

    async def _take(self, tokens: int) -> None:
        if self._gate is None:
            self._gate = asyncio.Lock()
        async with self._gate:
            while self._requests < 1 or self._tokens < tokens:
                key = self._inner.key
                learned = remembered_limits(*key) if key is not None else None
                rpm, tpm = self._rpm, self._tpm
                if learned is not None:
                    rpm = min(x for x in (rpm, learned[0]) if x) if (rpm or learned[0]) else None
                    tpm = min(x for x in (tpm, learned[1]) if x) if (tpm or learned[1]) else None
                delay, n, t = await asyncio.to_thread(self._ask, tokens, rpm, tpm, learned is not None)
                if delay > 0:
                    await self._inner.sleep(delay)
                self._requests += n
                self._tokens += t
            self._requests -= 1
            self._tokens -= tokens
