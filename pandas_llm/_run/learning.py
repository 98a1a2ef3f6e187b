"""Limit learning: what the server's ``x-ratelimit-*`` headers and 429 messages say.

The limits the limiter paces by come from the user (``rpm=``/``tpm=``, a ceiling) or from
the server: the ``x-ratelimit-limit-*`` header of every answer (a reset over a minute
means a per-day figure, not paced by), a 429 message naming its per-minute limit (which
then outranks the headers), and ``x-ratelimit-remaining-*`` at zero, which holds the
pace until the server has refilled what the next request takes. What is learned is
remembered for the next run of this process (limits.py). :meth:`LimitLearning.is_limit`
tells a 429 at the account's limit from one of an overloaded server.

``LimitLearning`` is the part of :class:`~pandas_llm._run.limiter.Limiter` that reads
these; it changes the limiter's paces and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from .learned import remember
from .limits import _BOUNDLESS, OVERLOAD_WORDS, _number, limit_in_message, parse_duration, per_minute
from .window import Credit

__all__ = ["Pace", "LimitLearning"]


class Pace:
    """One budget as a GCRA schedule: ``tat`` is when the budget is next fully free."""

    __slots__ = ("rate", "user", "told", "tat")

    def __init__(self, per_minute: float, user: bool, now: float, told: bool = False):
        self.rate = per_minute / 60.0  # units per second
        self.user = user  # set by the user (a server figure may only lower it)
        self.told = told  # named by a 429's message: the headers' figure may not replace it
        self.tat = now


class LimitLearning:
    """The limiter's reading of the server's limits (mixed into Limiter, which owns the state)."""

    requests: Pace | None
    tokens: Pace | None
    key: tuple[str, ...] | None
    clock: Callable[[], float]
    headroom: float
    credit: Credit
    _unknown: bool
    _provisional: bool
    _not_per_minute: set[str]
    _first_sent: float | None
    _sent_unknown: int
    _known: asyncio.Event | None
    _nudge: asyncio.Event | None
    # what the server said of each budget ("requests", "tokens"): its per-minute limit, or
    # None for no limit to keep to; only these are remembered (learned.py), never the user's
    # rpm=/tpm= nor a figure guessed from a 429's timing
    _heard: dict[str, float | None]
    reserve: Callable[[bytes], int]

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
                    self._heard.setdefault(attr, None)
                    continue  # a per-day figure paced as per minute would bring 429s: learn from them
                if pace is None or not pace.told:
                    self._heard[attr] = None if limit >= _BOUNDLESS[name] else limit
                if limit >= _BOUNDLESS[name]:
                    # a budget no single process can reach: no pacing needed (a pace remembered
                    # from an earlier run is dropped; the user's rpm= stays)
                    if pace is not None and not pace.user and not pace.told:
                        setattr(self, attr, None)
                        self._poke()
                elif pace is None:
                    self._set_pace(attr, limit)
                elif pace.user and limit / 60.0 >= pace.rate:
                    pass  # the user asked for less than the server allows
                elif pace.told:
                    pass  # a 429 named the per-minute limit; this header counts something else
                elif abs(pace.rate * 60.0 - limit) > 1e-6:
                    self._set_rate(pace, limit)
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
        """Keep what the server said for the next run (never the user's rpm=/tpm=)."""
        if self.key is not None:
            remember(self.key, self._heard.get("requests"), self._heard.get("tokens"))

    def _set_rate(self, pace: Pace, limit: float) -> None:
        """Pace at ``limit`` per minute from now. A faster rate also shortens what is already
        booked at the slow one (a pace remembered from an earlier run, or the user's, that the
        server now raises): the next request does not wait out a slot booked at the old rate."""
        rate, now = limit / 60.0, self.clock()
        if rate > pace.rate and pace.tat > now:
            pace.tat = now + (pace.tat - now) * pace.rate / rate
            self._poke()
        pace.rate = rate

    def _poke(self) -> None:
        """Wake the request waiting for its slot: the budget may have room sooner."""
        if self._nudge is not None:
            self._nudge.set()

    def _set_pace(self, attr: str, limit: float) -> None:
        now = self.clock()
        pace = Pace(limit, False, now)
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
                pace = Pace(limit, False, self.clock(), told=True)
                setattr(self, attr, pace)
            self._set_rate(pace, limit)
            pace.told = True
            self._heard[attr] = limit
            if attr == "requests":
                self._provisional = False
            self._remember()

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
