"""Retries: which failures are sent again, how many times, and how long to wait between.

One policy for the engine's requests and the Batch API's calls: ``max_attempts`` sends,
a wait of ``retry-after`` when the server gave one (``retry-after-ms``, seconds or an
HTTP date: read by the backends), else an exponential backoff with jitter,
``min(cap, base * 2 ** (failures - 1)) * (1 - uniform(0, jitter))`` seconds: 0.375-0.5,
0.75-1, 1.5-2, 3-4 and 6-8 s for the default five retries. That is the OpenAI SDK's
schedule (0.5 s doubling, up to a quarter off at random), which stops growing at 8 s;
ours goes on to ``cap`` (30 s), for a ``max_attempts`` above 6 set to ride out a longer
outage. ``deadline`` (seconds from the start of a run) bounds the engine's retries. The
engine's loop (send.py) also waits for the limiter and pauses every worker on a 429 at
the account's limit, so it reads the policy itself; every other call goes through
:func:`retrying`, which is tenacity's ``AsyncRetrying`` with this policy's stop and wait.

In the engine the backoff doubles with a request's failures only while the server is
failing its other requests too (:class:`Health`): a 5xx or an overloaded 429 that strikes
one request among answers to the rest is bad luck, not load, and a doubling wait would
only keep the whole run waiting on that row (with 5% random faults, the unluckiest of
600 rows added its 0.5 + 1 + 2 + 4 s to the run). Every failure still counts toward
``max_attempts``, as in the OpenAI SDK and tenacity's ``stop_after_attempt``; only a
429 at the account's limit does not (it clears when the window refills: retried until
the deadline).

    >>> policy = RetryPolicy(jitter=0.0)
    >>> [policy.backoff(n, None) for n in (1, 2, 3, 8)]
    [0.5, 1.0, 2.0, 30.0]
    >>> policy.backoff(1, 7.5)  # the server's retry-after wins
    7.5
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from .._errors import RetryableError
from .stopping import quota_stop

__all__ = ["RetryPolicy", "Health", "retrying"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failure is sent again and how long to wait first (seconds)."""

    max_attempts: int = 6
    deadline: float | None = None  # seconds from start; bounds rate-limit retries
    base: float = 0.5  # the first backoff, seconds (doubled on each failure)
    cap: float = 30.0  # the longest backoff, seconds
    jitter: float = 0.25  # at most this share of the wait taken off at random, so workers do not retry in step

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after the ``attempt``-th failure; the server's ``retry_after`` if given."""
        if retry_after is not None:
            return retry_after
        return min(self.cap, self.base * 2.0 ** (attempt - 1)) * (1.0 - random.uniform(0.0, self.jitter))


class Health:
    """How the server has been answering the run: the share of failures among its latest
    outcomes, and from it the backoff level of a request that just failed.

    ``failing`` is an exponentially weighted share (each outcome weighs 1/16, so about
    the last 16-30 count) of retryable failures (5xx, timeouts, overloaded 429s, lost
    connections) among those and the answers. It starts at 1: until answers have shown
    the server serving, every failure counts as the server's. A request's backoff level
    (the ``attempt`` of :meth:`RetryPolicy.backoff`) goes up by one on each of its failures
    while ``failing`` is at least ``busy`` (a quarter), and stays where it is otherwise
    (at 1 after a first failure): a row that fails while most requests are answered is
    sent again after the first backoff, not after a doubling one.

        >>> h = Health()
        >>> [h.failed(n) for n in (0, 1, 2)]  # nothing answered yet: the server's failures
        [1, 2, 3]
        >>> for _ in range(40):
        ...     h.answered()
        >>> levels = [0]
        >>> for _ in range(6):  # then one row fails on its own, six times
        ...     levels.append(h.failed(levels[-1]))
        >>> levels[1:]
        [1, 1, 1, 2, 3, 4]
    """

    __slots__ = ("failing", "busy")

    WEIGHT = 1.0 / 16.0

    def __init__(self, busy: float = 0.25) -> None:
        self.failing = 1.0
        self.busy = busy

    def answered(self) -> None:
        """A request was answered (the server served it)."""
        self.failing -= self.failing * self.WEIGHT

    def failed(self, level: int) -> int:
        """A request at backoff ``level`` (0 before its first failure) failed: its new level."""
        self.failing += (1.0 - self.failing) * self.WEIGHT
        return level + 1 if level == 0 or self.failing >= self.busy else level


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    recover: Callable[[], Awaitable[T | None]] | None = None,
) -> T:
    """``await call()``, sent again on a RetryableError up to ``policy.max_attempts`` times.

    tenacity's ``AsyncRetrying`` drives the loop: it stops after ``max_attempts``, waits
    ``policy.backoff`` (the server's retry-after first) with the injected ``sleep``, and
    re-raises the last error. ``recover``, after each failure, may find the result another
    way (a batch the server created before the connection broke) and end the retries. A
    wait of hours (a quota, quota_stop) is never slept here: it raises at once.
    """
    failures = 0

    async def attempt() -> T:
        nonlocal failures
        try:
            return await call()
        except RetryableError as exc:
            failures += 1
            if recover is not None:
                found = await recover()
                if found is not None:
                    return found
            if failures < policy.max_attempts:
                stop = quota_stop(exc, 0.0, None)  # a retry-after of hours is a quota: never wait it here
                if stop is not None:
                    raise stop from exc
            raise

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return policy.backoff(state.attempt_number, getattr(exc, "retry_after", None))

    retry = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_exception_type(RetryableError),
        sleep=sleep,
        reraise=True,
    )
    return await retry(attempt)
