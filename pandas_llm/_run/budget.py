"""Dollars for one run: the cost of each answer, and the ``max_cost`` cap as reservations.

``Meter`` (_cost/meter.py) prices a run's requests at one ``Price``: ``cost(completion)``
is what an answer cost, ``worst_case(body)`` the most a request can cost before it is sent.

``Budget`` holds ``max_cost``. Before a request is sent its worst case is reserved; when
the answer arrives the reservation is released and the real cost charged. A request
starts only if ``spent + reserved + worst case <= max_cost``; if it does not fit while
others are in flight it waits for them to settle (they usually cost far less than their
worst case); if it does not fit with nothing in flight, the budget is exhausted and no
further request is sent. So the run's real cost never exceeds the cap, provided the
endpoint bills no more than the worst case (tiktoken's exact count, and never less than
one token per 4 bytes of the request body). An endpoint that bills more (another tokenizer,
a gateway's hidden system prompt) can take the requests already in flight over it; from its
first such answer on, every reservation is scaled by the largest overrun seen.

A Batch API job (jobs.py) reserves the same way at Batch API rates: a request goes into a
batch file only if its worst case fits; its reservation is settled when its batch is
collected, and requests that did not fit wait for that, or are left as ``budget``.

An attempt whose answer was lost after it was sent (a timeout, a connection dropped, a
gateway's 504: ``RetryableError.maybe_billed``) may still be billed by the provider: it is
charged at its worst case (``Budget.lost``), and its retry needs a fresh reservation, so
the cap holds against what the provider bills even when no answer arrives.

    >>> from pandas_llm._pricing import Price
    >>> m = Meter("gpt-4o-mini", Price.per_million(input=1.0, output=2.0), max_output=100)
    >>> b = Budget(0.001, m)
    >>> b.try_reserve(0.0004), b.try_reserve(0.0004), b.try_reserve(0.0004)
    (True, True, None)
    >>> b.settle(0.0004, 0.0001); b.try_reserve(0.0004)
    True
    >>> round(b.spent, 6), round(b.reserved, 6)
    (0.0001, 0.0008)
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .._cost.meter import Meter
from .._cost.models import context_window, family, max_output_tokens
from .._cost.tokens import count_message_tokens, encoding_name_for
from .._store.store import Record

__all__ = ["Budget", "ContextCheck", "Hold", "Meter", "context_window", "max_output_tokens"]


class Hold:
    """One job's reservation: ``amount`` USD, ``held`` while it counts in ``Budget.reserved``;
    ``charged``: what its failed attempts that reported usage were charged already (their
    cost is in the job's record too, so the final settle does not charge it twice)."""

    __slots__ = ("amount", "held", "charged", "base")

    def __init__(self, base: float, overrun: float = 1.0):
        self.base = base  # the job's worst case at the prices and token counts known before sending
        self.amount = base * overrun
        self.held = False
        self.charged = 0.0


class ContextCheck:
    """Finds the prompts that cannot fit ``model``'s context window, before they are sent.

    A prompt fits if its tokens (tiktoken's count, as billed) plus the answer's reserved
    tokens (``max_completion_tokens`` / ``max_tokens``, else 1) are within the window. A
    body of n bytes holds at most n tokens, so only bodies longer than ``window - max
    output`` bytes are counted: the hot path is one length comparison.

        >>> check = ContextCheck.for_model("gpt-4")
        >>> check.error(b'{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}') is None
        True
    """

    def __init__(self, model: str, window: int, max_output: int):
        self.model, self.window = model, window
        self.bytes_ok = window - max_output  # a body this short always fits

    @classmethod
    def for_model(cls, model: str) -> ContextCheck | None:
        """The check for ``model``; None when its window (or tokenizer) is not known."""
        f = family(model)
        if f is None or f.context_window is None or f.max_output is None or encoding_name_for(model) is None:
            return None
        return cls(model, f.context_window, f.max_output)

    def error(self, body: bytes) -> str | None:
        """Why the request ``body`` cannot fit, with the sizes; None if it fits."""
        if len(body) <= self.bytes_ok:
            return None
        request = orjson.loads(body)
        out = request.get("max_completion_tokens") or request.get("max_tokens") or 1
        prompt = count_message_tokens(request.get("messages") or [], self.model)
        if prompt + out <= self.window:
            return None
        return (
            f"the prompt is {prompt:,} tokens; with {out:,} reserved for the answer that exceeds the "
            f"{self.window:,}-token context window of {self.model!r}: not sent. Shorten the input "
            "(or max_tokens), or use a model with a larger context window."
        )


class Budget:
    """``max_cost`` as reservations: see the module docstring. Lives on the run's loop."""

    def __init__(self, cap: float, meter: Meter, *, stats: Any = None):
        self.cap = cap
        self.meter = meter
        self.stats = stats  # RunStats: reserved_cost and budget_reached are shown live
        self.spent = 0.0
        self.reserved = 0.0
        self.holders = 0
        self.exhausted = False
        #: How many times its worst case the endpoint billed at most (1 while it billed no more): a
        #: server counting more prompt tokens than tiktoken (another tokenizer, a gateway's own
        #: system prompt) scales every later reservation, so the cap holds from then on.
        self.overrun = 1.0
        self._changed: asyncio.Event | None = None

    def try_reserve(self, amount: float) -> bool | None:
        """Reserve ``amount``: True done; None wait for others to settle; False exhausted."""
        if self.exhausted:
            return False
        if self.spent + self.reserved + amount <= self.cap:
            self.reserved += amount
            self.holders += 1
            self._show()
            return True
        if self.holders == 0:
            self.exhausted = True
            if self.stats is not None:
                self.stats.budget_reached = True
            return False
        return None

    async def reserve(self, amount: float) -> bool:
        """Wait until ``amount`` fits (True) or can never fit (False: stop sending)."""
        while True:
            decision = self.try_reserve(amount)
            if decision is not None:
                return decision
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def settle(self, held: float, actual: float) -> None:
        """Release a reservation of ``held`` and charge ``actual``."""
        self.holders -= 1
        self.reserved = self.reserved - held if self.holders else 0.0  # no float residue when idle
        self.spent += actual
        if held > 0 and actual > held:
            self.overrun = max(self.overrun, actual / held)
        self._show()
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def actual(self, held: float, record: Record | None) -> float:
        """What a finished request is charged: its cost; if usage is unknown, its reservation."""
        if record is None:
            return held  # cancelled mid-flight: it may have been billed
        if record.cost is not None:
            return record.cost
        answered = record.prompt_tokens or record.completion_tokens or record.output is not None
        return held if answered else 0.0  # a failure that reported no usage costs nothing

    async def spend(self, job: tuple[int, bytes, bytes], send: Any, sends: int = 1) -> Record | None:
        """Run ``send(job, hold)`` inside a reservation; None (not sent) once the budget is exhausted.

        ``sends`` is the most requests ``send`` may make for the job (an answer that fails its
        schema is asked again): each of them is reserved at the worst case. ``send`` passes
        ``hold`` to :meth:`lost` when an attempt's answer is lost.
        """
        hold = Hold(self.meter.worst_case(job[2]) * sends, self.overrun)
        if not await self.reserve(hold.amount):
            return None
        hold.held = True
        record = None
        try:
            record = await send(job, hold)
            return record
        finally:
            if hold.held:
                actual = self.actual(hold.amount, record)
                if record is not None:  # its cost includes what its billed failures were charged already
                    actual = max(0.0, actual - hold.charged)
                self.settle(hold.amount, actual)

    async def lost(self, hold: Hold, billed: float, *, again: bool = True) -> bool:
        """An attempt of the job holding ``hold`` was sent and its answer lost: charge ``billed``
        (its worst case) and, if ``again``, reserve anew for the next attempt. False: the
        retry does not fit under the cap (the job is not sent again)."""
        self.settle(hold.amount, billed)
        hold.held = False
        if again:  # at the overrun learned so far, this attempt's included: the cap holds for the retry too
            hold.amount = max(hold.amount, hold.base * self.overrun)
            hold.held = await self.reserve(hold.amount)
        return hold.held

    def close(self) -> None:
        """The run ended (a budget shared with other processes hands back what it did not spend)."""

    def _show(self) -> None:
        if self.stats is not None:
            self.stats.reserved_cost = self.reserved
