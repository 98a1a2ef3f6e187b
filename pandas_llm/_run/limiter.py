"""Rate limits as a shared budget: one limiter for requests and tokens per minute.

Every worker asks the limiter before sending. The limiter paces requests smoothly
(GCRA: a budget is next free at its ``tat``, which each request moves on by its cost at
``limit * headroom`` per second; one request at a time waits for it, in arrival order,
so there are no bursts for a sliding-window server to reject) on two budgets at once:

- requests per minute: one per request;
- tokens per minute: the prompt (estimated from the body's size, calibrated against the
  real ``usage`` of earlier answers; tiktoken costs 8-50 µs per request, too much for
  the hot path) plus ``max_tokens``, or a running estimate of the answer's length when
  unset. When the answer arrives the reservation is corrected to what the server
  charged: the real prompt tokens plus ``max_tokens`` if set (OpenAI counts it when
  admitting the request), else the real completion tokens.

Beyond that even pace, requests the ``x-ratelimit-remaining-requests`` header says
remain may go at once (ratelimit_window.Credit): slowly at first, more while answers
show a window of a minute, never again once the window shows itself quantized.

Limits come from ``rpm=``/``tpm=`` or from the ``x-ratelimit-limit-*`` headers of every
response (the lower wins). A header limit whose reset is longer than a minute counts
over a longer window (Groq's per-day requests) and is not paced by; a 429 whose message
names its per-minute limit (``... per min (RPM): Limit 30 ...``) sets that budget, and a
header figure that differs from it is no longer trusted. Until a first answer says what the limits are, at most
``initial_burst`` requests go out. ``x-ratelimit-remaining-*`` at zero holds sending for
the time the server needs to refill what the next request takes. A 429 pauses every
worker for its ``retry-after`` (or a doubling backoff) when it is about the limit
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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .limits import (
    _BOUNDLESS,
    OVERLOAD_WORDS,
    _number,
    limit_in_message,
    parse_duration,
    per_minute,
    remember,
    remembered_limits,
)
from .window import Credit

__all__ = ["Limiter", "parse_duration", "remembered_limits"]


class _Pace:
    """One budget as a GCRA schedule: ``tat`` is when the budget is next fully free."""

    __slots__ = ("rate", "user", "told", "tat")

    def __init__(self, per_minute: float, user: bool, now: float, told: bool = False):
        self.rate = per_minute / 60.0  # units per second
        self.user = user  # set by the user (a server figure may only lower it)
        self.told = told  # named by a 429's message: the headers' figure may not replace it
        self.tat = now


class Limiter:
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
        key: tuple[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self.clock, self.sleep = clock, sleep
        now = clock()
        self.requests = _Pace(rpm, True, now) if rpm else None
        self.tokens = _Pace(tpm, True, now) if tpm else None
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
        self.credit = Credit()  # requests the headers allow beyond the even pace
        # Until some answer shows whether the server has limits, send at most initial_burst.
        self._unknown = learn and rpm is None and tpm is None
        self._burst_left = initial_burst
        self._first_sent: float | None = None
        self._sent_unknown = 0
        self._known: asyncio.Event | None = None
        # token estimates: prompt tokens per body byte, and the answer's length
        self._ratio = 0.5  # conservative until calibrated by real usage (English JSON is ~0.25)
        self._ratio_seen = 0.0
        self._answer = 256.0
        self._answers_seen = 0
        # admissions per second, for a provisional limit when a 429 comes with no figures
        self._count, self._count_from, self._last_rate = 0, now, 0.0

    @classmethod
    def for_settings(cls, settings: Any, **options: Any) -> Limiter:
        """The limiter for a run: the user's ``rpm``/``tpm``, else what this process learned."""
        params = settings.params
        max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
        client = settings.client
        if client is not None and not hasattr(client, "base_url"):
            options.setdefault("learn", False)  # a plain function sends no headers
        key = (settings.endpoint, settings.model)
        lim = cls(settings.rpm, settings.tpm, max_tokens=max_tokens, key=key, **options)
        known = remembered_limits(*key)
        if known is not None:
            rpm, tpm = known
            now = lim.clock()
            if rpm and lim.requests is None:
                lim.requests = _Pace(rpm, False, now)
            if tpm and lim.tokens is None:
                lim.tokens = _Pace(tpm, False, now)
            lim._unknown = False
        return lim

    # -- before sending --------------------------------------------------------------
    def reserve(self, body: bytes) -> int:
        """Tokens to book for a request with this body (0 when no token limit is known)."""
        if self.tokens is None:
            return 0
        out = self.max_tokens or math.ceil(1.25 * self._answer)
        return math.ceil(len(body) * self._ratio) + 4 + out

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

    def _may_use_credit(self, req: _Pace | None, tok: _Pace | None, now: float) -> bool:
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
        if self._provisional and math.isfinite(self._ramp_to) and at >= self._ramp_to + self.ramp_seconds:
            # a guessed limit and no 429 for a while: try 10% more
            self.requests.rate *= 1.1  # type: ignore[union-attr]
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
        if prompt_tokens and size:
            ratio = prompt_tokens / size
            if ratio > self._ratio_seen:
                self._ratio_seen = ratio
                self._ratio = 1.15 * ratio
            elif self._ratio > 1.15 * self._ratio_seen:  # still the initial guess
                self._ratio = 1.15 * self._ratio_seen
        if completion_tokens or prompt_tokens:
            self._answers_seen += 1
            weight = max(0.05, 1.0 / self._answers_seen)
            self._answer += weight * (completion_tokens - self._answer)
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
        if used < reserved and self._nudge is not None:
            self._nudge.set()  # the request waiting for the budget may go sooner

    # -- server feedback -------------------------------------------------------------
    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Keep in step with the server's ``x-ratelimit-*`` headers (any case-insensitive mapping)."""
        if not headers:
            if self._unknown:
                self._no_limits()
            return
        get = headers.get
        learned = False
        for name, attr in (("requests", "requests"), ("tokens", "tokens")):
            limit = _number(get("x-ratelimit-limit-" + name))
            if limit:
                learned = True
                pace = getattr(self, attr)
                reset = get("x-ratelimit-reset-" + name)
                if name in self._not_per_minute or not per_minute(reset):
                    self._not_minute(attr)
                    continue  # a per-day figure paced as per minute would bring 429s: learn from them
                if limit >= _BOUNDLESS[name]:
                    pass  # a budget no single process can reach: no pacing needed
                elif pace is None:
                    self._set_pace(attr, limit)
                elif pace.user and limit / 60.0 >= pace.rate:
                    pass  # the user asked for less than the server allows
                elif pace.told:
                    pass  # a 429 named the per-minute limit; this header counts something else
                elif abs(pace.rate * 60.0 - limit) > 1e-6:
                    pace.rate = limit / 60.0
                    if attr == "requests":
                        self._provisional = False
            remaining = get("x-ratelimit-remaining-" + name)
            if remaining is not None and limit:
                self._keep_in_step(name, _number(remaining), limit, get("x-ratelimit-reset-" + name))
                if name == "requests" and limit < _BOUNDLESS[name] and _number(remaining) is not None:
                    self.credit.observe(self.clock(), limit, _number(remaining))  # type: ignore[arg-type]
        if learned:
            self._remember()
            if self._unknown:
                self._known_now()
        elif self._unknown:
            self._no_limits()

    def _remember(self) -> None:
        if self.key is not None:
            rpm = self.requests.rate * 60 if self.requests is not None and not self._provisional else None
            tpm = self.tokens.rate * 60 if self.tokens is not None else None
            remember(self.key, rpm, tpm)

    def _set_pace(self, attr: str, limit: float) -> None:
        now = self.clock()
        pace = _Pace(limit, False, now)
        if attr == "requests" and self._first_sent is not None:
            # requests sent before the limit was known count against it
            pace.tat = max(now, self._first_sent + self._sent_unknown / (pace.rate * self.headroom))
        setattr(self, attr, pace)

    def _keep_in_step(self, name: str, remaining: float | None, limit: float, reset: str | None) -> None:
        if remaining is None:
            return
        need = 1.0 if name == "requests" else float(self.reserve(b"") or 1)
        if remaining >= need:
            return
        # The server has no room for the next request: hold until it refills that much.
        wait = (need - remaining) / (limit / 60.0)
        until = parse_duration(reset)
        if until is not None:
            wait = min(wait, until)
        pace = self.requests if name == "requests" else self.tokens
        if pace is not None and wait > 0:
            pace.tat = max(pace.tat, self.clock() + wait)

    def _not_minute(self, attr: str) -> None:
        """The headers' limit for ``attr`` counts over more than a minute: do not pace by it."""
        self._not_per_minute.add(attr)
        pace = getattr(self, attr)
        if pace is not None and not pace.user and not pace.told:
            setattr(self, attr, None)  # learned from those headers: forget it
            if attr == "requests":
                self._provisional = False

    def is_limit(self, headers: Any = None, message: str | None = None, reserved: int = 0) -> bool:
        """Whether a 429 says the account's limit is reached (True: pause everyone) or only
        that the server is busy (False: retry that one request, keep the pace).

        In order: a message naming the limit (``Limit 500, Used 500``) is a limit; else
        ``x-ratelimit-remaining-*`` headers with room for this request (one request,
        ``reserved`` tokens) are not, and one without room is; else a message about the
        rate limit or quota is; one saying the server is overloaded or to try again
        later is not; anything else is treated as a limit. Reads the headers' figures.
        """
        if headers:
            self.observe(headers)
        if limit_in_message(message) is not None:
            return True
        if headers:
            get, seen = headers.get, False
            for name, need in (("requests", 1.0), ("tokens", float(reserved or 1))):
                remaining = _number(get("x-ratelimit-remaining-" + name))
                if remaining is not None:
                    seen = True
                    if remaining < need:
                        return True
            if seen:
                return False
        text = (message or "").lower()
        if "rate limit" in text or "quota" in text:
            return True
        return not any(word in text for word in OVERLOAD_WORDS)

    def _learn_from_message(self, message: str | None) -> None:
        """A 429 that names its limit: pace by it when it is per minute (the lower wins)."""
        named = limit_in_message(message)
        if named is None:
            return
        attr, window, limit, _, _ = named
        pace = getattr(self, attr)
        if window != 60.0:
            if pace is not None and not pace.user and abs(pace.rate * 60.0 - limit) <= 1e-6 * limit:
                self._not_minute(attr)  # the headers' figure was this per-day limit
            return
        if pace is not None and not pace.user and not pace.told and abs(pace.rate * 60.0 - limit) > 0.01 * limit:
            self._not_per_minute.add(attr)  # the headers count something other than this limit
        if pace is None or limit / 60.0 < pace.rate or not pace.user:
            if pace is None:
                pace = _Pace(limit, False, self.clock(), told=True)
                setattr(self, attr, pace)
            pace.rate, pace.told = limit / 60.0, True
            if attr == "requests":
                self._provisional = False
            self._remember()

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
            self.requests = _Pace(0.8 * observed * 60.0, False, now)
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

    # -- learning state --------------------------------------------------------------
    def _known_now(self) -> None:
        self._unknown = False
        self._wake()

    def _wake(self) -> None:
        if self._known is not None:
            self._known.set()
            self._known = None  # waiters look again; later ones wait on a new event

    def _no_limits(self) -> None:
        """An answer came without limit headers: the server has none we can learn."""
        self._remember()
        self._known_now()
