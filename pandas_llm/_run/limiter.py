"""Rate limits as a shared budget: one limiter for requests and tokens per minute.

Every worker asks the limiter before sending. The limiter paces requests smoothly
(GCRA: a budget is next free at its ``tat``, which each request moves on by its cost at
``limit * headroom`` per second; one request at a time waits for it, in arrival order,
so there are no bursts for a sliding-window server to reject) on two budgets at once:

- requests per minute: one per request;
- tokens per minute: the prompt plus the answer, estimated (token_estimate.py). When the
  answer arrives the reservation is corrected to what the server charged: the real
  prompt tokens plus ``max_tokens`` if set (OpenAI counts it when admitting the
  request), else the real completion tokens.

The limiter is made of three parts: this pacing, the token estimates (token_estimate.py) and
the limits learned from the server (learning.py reads the headers and 429 messages that
limits.py parses; window.py decides when ``x-ratelimit-remaining-requests`` is credit that
may go at once, ahead of the even pace: slowly at first, more while answers show a window
of a minute, never again once the window shows itself quantized).

Limits come from ``rpm=``/``tpm=`` or from the server (the lower wins). Until an
answer says what the limits are (in this run, or one before it for the same endpoint, model
and account: learned.py), at most ``initial_burst`` requests go out (a first call ever
spends that round trip: ~0.1 s, 2-4% of a 5,000-row run at 100 ms latency, concurrency 200).
Sending more blind does not pay: a whole wave of ``concurrency`` draws ~100 429s from a
server counting 100 a second, and even 1,000 more a second until the first answer drew
32-38 (1.1-1.3% of 3,000 rows, 91-94% of the limit); 500 a second kept that clean but
saves at most ~20 ms at 100 ms latency, under the noise of the measure. A 429 pauses
every worker for its ``retry-after`` (or a doubling backoff) when it is about the limit
(:meth:`Limiter.is_limit`: a 429 whose headers show room left, or that says the server
is overloaded, is retried by the engine for that request alone), then sending resumes on a ramp
from ``ramp_floor`` of the limit to all of it, not as a burst: over ten times the pause,
at least 0.25 s and at most ``ramp_seconds``. Each such pause at a known limit also
keeps 2% more margin (at most 15%, given back 1% per quiet 10 s): a server whose
window is less regular than our pacing stops rejecting. With no limits known at all, a
429 sets a provisional limit just under the rate that hit it, raised by 10% for every
quiet ``ramp_seconds``.

Clock and sleep are injected, so tests run in milliseconds and see exact waits::

    >>> import asyncio
    >>> t, waits = [0.0], []
    >>> async def sleep(dt):
    ...     waits.append(dt); t[0] += dt
    >>> lim = Limiter(rpm=60, headroom=1.0, clock=lambda: t[0], sleep=sleep)
    >>> async def three():
    ...     for _ in range(3):
    ...         await lim.acquire()
    >>> asyncio.run(three()); waits
    [1.0, 1.0]
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .learned import account, remembered_limits
from .learning import LimitLearning, Pace
from .token_estimate import TokenEstimate
from .window import Credit

__all__ = ["Limiter"]


class Limiter(LimitLearning):
    """Requests-per-minute and tokens-per-minute budget shared by all workers of a run."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        max_tokens: int | None = None,
        learn: bool = True,
        initial_burst: int = 16,
        headroom: float = 0.97,
        ramp_seconds: float = 2.0,
        ramp_floor: float = 0.5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        observe_every: float = 0.01,
        tolerance: float = 0.005,
        key: tuple[str, ...] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self.clock, self.sleep = clock, sleep
        now = clock()
        self.requests = Pace(rpm, True, now) if rpm else None
        self.tokens = Pace(tpm, True, now) if tpm else None
        self.max_tokens = max_tokens
        self.headroom, self.ramp_seconds, self.ramp_floor = headroom, ramp_seconds, ramp_floor
        self.backoff, self.max_backoff = backoff, max_backoff
        self.key = key
        self.observe_every = observe_every
        self._next_look = -math.inf
        self.paused_until = 0.0
        self.pauses = 0  # 429 pauses so far
        self._epoch = 0  # bumped by every pause: tells a 429 sent before it from one after
        self._gate = asyncio.Lock()
        self._nudge: asyncio.Event | None = None  # wakes the request waiting at the gate
        self.tolerance = tolerance
        self._level = 0  # consecutive pauses without a success in between
        self._ramp_from = self._ramp_to = -math.inf
        self._provisional = False  # the request limit was guessed from a 429, not told
        self._slack, self._calm_from = 1.0, -math.inf  # extra margin after 429s at a known limit
        # budgets whose x-ratelimit-limit-* header is not a per-minute figure (a per-day one)
        self._not_per_minute: set[str] = set()
        self._heard: dict[str, float | None] = {}  # what the server said of each budget (learning.py)
        self.credit = Credit()  # requests the headers allow beyond the even pace
        # Until some answer shows whether the server has limits, send at most initial_burst.
        self._unknown = learn and rpm is None and tpm is None
        self._burst_left = initial_burst
        self._first_sent: float | None = None
        self._sent_unknown = 0
        self._known: asyncio.Event | None = None
        self.estimate = TokenEstimate()  # prompt tokens per body byte, and the answer's length
        # admissions per second, for a provisional limit when a 429 comes with no figures
        self._count, self._count_from, self._last_rate = 0, now, 0.0

    @classmethod
    def for_settings(cls, settings: Any, **options: Any) -> Limiter:
        """The limiter for a run: the user's ``rpm``/``tpm``, else what was learned for this
        endpoint, model and account (by this process or an earlier one: learned.py)."""
        params = settings.params
        max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
        client = settings.client
        if client is not None and not hasattr(client, "base_url"):
            options.setdefault("learn", False)  # a plain function sends no headers
        who = account(settings)
        key = (settings.endpoint, settings.model, who) if who else (settings.endpoint, settings.model)
        lim = cls(settings.rpm, settings.tpm, max_tokens=max_tokens, key=key, **options)
        known = remembered_limits(*key)
        if known is not None:
            rpm, tpm = known
            now = lim.clock()
            if rpm and lim.requests is None:
                lim.requests = Pace(rpm, False, now)
            if tpm and lim.tokens is None:
                lim.tokens = Pace(tpm, False, now)
            lim._unknown = False
        return lim

    # -- before sending --------------------------------------------------------------
    def reserve(self, body: bytes) -> int:
        """Tokens to book for a request with this body (0 when no token limit is known)."""
        if self.tokens is None:
            return 0
        return self.estimate.tokens(len(body), self.max_tokens)

    async def acquire(self, tokens: int = 0) -> int:
        """Wait until a request of ``tokens`` tokens fits every budget and take it; returns
        a ticket for :meth:`rate_limited` (the pause epoch the request was sent in)."""
        return (await self._admit(None, tokens))[0]

    async def admit(self, body: bytes) -> tuple[int, int]:
        """:meth:`acquire` for a request body: ``(ticket, tokens reserved)``. The
        reservation is sized after any wait for the first answer, which may have
        brought a token limit with it."""
        return await self._admit(body, 0)

    async def _admit(self, body: bytes | None, tokens: int) -> tuple[int, int]:
        if self._unknown:
            await self._first_answer()
        if body is not None:
            tokens = self.reserve(body)
        now = self.clock()
        self._count += 1
        if now - self._count_from >= 1.0:
            self._last_rate = self._count / (now - self._count_from)
            self._count, self._count_from = 0, now
        if self.requests is None and (self.tokens is None or not tokens) and self.paused_until <= now:
            self.credit.admitted(False)
            return self._epoch, tokens
        # One request at a time waits for the budget, in arrival order; nobody books a slot
        # in the future, so a correction (a refund, a pause) counts for the very next one.
        async with self._gate:
            while True:
                now = self.clock()
                req, tok = self.requests, self.tokens if tokens else None
                slot = now if now > self.paused_until else self.paused_until
                if req is not None and req.tat > slot:
                    slot = req.tat
                if tok is not None and tok.tat > slot:
                    slot = tok.tat
                if slot <= now:
                    on_credit = False
                    break
                if self._may_use_credit(req, tok, now):
                    on_credit = True  # the headers say it may go now: ahead of the pace
                    break
                await self._nap(slot - now)
            factor = self._factor(now)
            # a wake-up a little late keeps its place: the schedule does not drift
            start = now - self.tolerance
            if req is not None:
                req.tat = max(req.tat, start) + (0.0 if on_credit else 1.0 / (req.rate * factor))
            if tok is not None:
                tok.tat = max(tok.tat, start) + tokens / (tok.rate * factor)
            self.credit.admitted(on_credit)
            return self._epoch, tokens

    def _may_use_credit(self, req: Pace | None, tok: Pace | None, now: float) -> bool:
        return (
            req is not None and not req.user and not self._provisional and self.paused_until <= now
            and (tok is None or tok.tat <= now) and now >= self._ramp_to and self.credit.may_send(now)
        )  # fmt: skip

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a refund frees the budget sooner (see settle)."""
        nudge = self._nudge = asyncio.Event()
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        poke = asyncio.ensure_future(nudge.wait())
        try:
            await asyncio.wait((sleeper, poke), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            poke.cancel()
            self._nudge = None

    async def _first_answer(self) -> None:
        """Before any answer has shown the limits, let only ``initial_burst`` requests go."""
        while self._unknown:
            if self._burst_left > 0:
                self._burst_left -= 1
                self._sent_unknown += 1
                if self._first_sent is None:
                    self._first_sent = self.clock()
                return
            if self._known is None:
                self._known = asyncio.Event()
            await self._known.wait()

    def _factor(self, at: float) -> float:
        """The share of the limit to send at, at time ``at``: ``headroom``, less on a ramp."""
        if at < self._ramp_to:
            done = max(0.0, (at - self._ramp_from) / (self._ramp_to - self._ramp_from))
            return self.headroom * self._slack * (self.ramp_floor + (1.0 - self.ramp_floor) * done)
        guessed = self.requests if self._provisional else None
        if guessed is not None and math.isfinite(self._ramp_to) and at >= self._ramp_to + self.ramp_seconds:
            # a guessed limit and no 429 for a while: try 10% more
            guessed.rate *= 1.1
            self._ramp_to += self.ramp_seconds
        if self._slack < 1.0 and at >= self._calm_from + 10.0:
            self._slack = min(1.0, self._slack + 0.01)  # 10 s without a 429: give back 1%
            self._calm_from = at
        return self.headroom * self._slack

    # -- after the answer ------------------------------------------------------------
    def done(self, reserved: int, size: int, prompt_tokens: int, completion_tokens: int, headers: Any) -> None:
        """A request answered: learn from its headers and usage, correct its reservation."""
        if headers is not None:
            # Reading six headers costs ~2 µs; at thousands of answers a second one look
            # every observe_every seconds keeps in step as well.
            now = self.clock()
            if now >= self._next_look or self._unknown:
                self._next_look = now + self.observe_every
                self.observe(headers)
        elif self._unknown:
            self._no_limits()
        self._level = 0
        self.estimate.learn(size, prompt_tokens, completion_tokens)
        used = prompt_tokens + (self.max_tokens or completion_tokens)
        self.settle(reserved, used)
        self.credit.answered()
        if self._nudge is not None and self.credit.may_send(self.clock()):
            self._nudge.set()  # the request waiting for its slot may go now, on credit

    def release(self, reserved: int) -> None:
        """A request failed without being charged: give its tokens back."""
        self.credit.answered(ok=False)
        if self._unknown:
            # no figures from it: its place in the initial burst goes to a waiting request
            self._burst_left += 1
            self._sent_unknown -= 1
            self._wake()
        self.settle(reserved, 0)

    def settle(self, reserved: int, used: int) -> None:
        """Give back what a request reserved but did not use (or take what it overran)."""
        tok = self.tokens
        if tok is None or reserved == used:
            return
        tat = tok.tat + (used - reserved) / (tok.rate * self.headroom)
        floor = max(self.clock(), self.paused_until)
        tok.tat = tat if tat > floor else floor
        if used < reserved:
            self._poke()  # the request waiting for the budget may go sooner

    def rate_limited(
        self, ticket: int, retry_after: float | None, headers: Any = None, message: str | None = None
    ) -> float:
        """A 429: pause every worker, then ramp back up. Returns the pause in seconds.
        ``message``: the 429's error message, which may name the limit it hit."""
        # sending on credit found the window's edge: the pace alone was not at fault,
        # so it resumes when the server says, with no ramp and no extra margin
        probing = self.credit.allow > 0 and not self.credit.quantized
        if headers is not None:
            self.observe(headers)
        self._learn_from_message(message)
        self.credit.limit_hit()
        now = self.clock()
        fresh = ticket == self._epoch  # sent after the latest pause: that pause was not enough
        if not fresh and (retry_after is None or now + retry_after <= self.paused_until):
            return max(0.0, self.paused_until - now)  # sent before the pause: it covers this one
        if fresh:
            self._level += 1
        if retry_after is None:
            retry_after = min(self.max_backoff, self.backoff * 2 ** (self._level - 1))
        if fresh and self.requests is not None and not self._provisional and not probing:
            # 429s while pacing under a known limit: the server's clock or window is less
            # regular than ours (jitter, another client on the key). Keep 2% more margin
            # per such pause, at most 15%, given back 1% per quiet 10 s.
            self._slack = max(0.85, self._slack * 0.98)
            self._calm_from = now + retry_after
        if self.requests is None and self._last_rate + self._count > 0 and fresh:
            elapsed = max(1e-3, now - self._count_from)
            observed = max(self._last_rate, self._count / elapsed)
            self.requests = Pace(0.8 * observed * 60.0, False, now)
            self._provisional = True
        self.pause(retry_after, ramp=not probing)
        return retry_after

    def pause(self, seconds: float, *, ramp: bool = True) -> None:
        """Stop every worker for ``seconds``, then ramp back up to the full rate (at once
        if not ``ramp``)."""
        now = self.clock()
        until = now + seconds
        if until <= self.paused_until:
            return
        self.paused_until = until
        self.pauses += 1
        self._epoch += 1
        # A pause of a few ms (a sliding window one request too full) needs a short ramp;
        # a long one (the server's whole budget spent) the full ramp_seconds.
        span = min(self.ramp_seconds, max(0.25, 10.0 * seconds)) if ramp else 0.0
        self._ramp_from, self._ramp_to = until, until + span
        for pace in (self.requests, self.tokens):
            if pace is not None:
                pace.tat = until
