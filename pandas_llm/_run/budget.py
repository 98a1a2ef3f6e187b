"""Dollars for one run: the cost of each answer, and the ``max_cost`` cap as reservations.

``Meter`` prices a run's requests at one ``Price``: ``cost(completion)`` is what an answer
cost (from the usage the endpoint reported, cached input tokens at their discount), and
``worst_case(body)`` the most a request can cost before it is sent: its prompt tokens at
the input price plus the most output tokens it may produce (its ``max_tokens``, else the
model's output limit) at the output price.

``Budget`` holds ``max_cost``. Before a request is sent its worst case is reserved; when
the answer arrives the reservation is released and the real cost charged. A request
starts only if ``spent + reserved + worst case <= max_cost``; if it does not fit while
others are in flight it waits for them to settle (they usually cost far less than their
worst case); if it does not fit with nothing in flight, the budget is exhausted and no
further request is sent. So the run's real cost never exceeds the cap, provided the
endpoint bills no more than the worst case (tiktoken's exact count, and never less than
one token per 4 bytes of the request body).

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
import threading
from concurrent.futures import Future
from typing import Any

import orjson

from .._backends import Completion
from .._cost.tokens import count_message_tokens, encoding_name_for
from .._errors import ConfigError
from .._pricing import Price, cost, resolve_price
from .._store.store import Record

__all__ = ["Budget", "ContextCheck", "Hold", "Meter", "context_window", "max_output_tokens"]

# Published limits of OpenAI models: (name prefix, most output tokens, context window).
# First prefix match wins, so the longer names come first. A request can never produce
# more completion tokens than the output limit, and its prompt plus its max_tokens must fit
# the context window (the API refuses it otherwise, after the prompt was sent).
_LIMITS: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 16_384, 128_000),
    ("gpt-4o", 16_384, 128_000),
    ("chatgpt-4o", 16_384, 128_000),
    ("gpt-4.1", 32_768, 1_047_576),
    ("gpt-4.5", 16_384, 128_000),
    ("gpt-4-turbo", 4_096, 128_000),
    ("gpt-4-1106", 4_096, 128_000),
    ("gpt-4-0125", 4_096, 128_000),
    ("gpt-4-32k", 8_192, 32_768),
    ("gpt-4", 8_192, 8_192),
    ("gpt-3.5", 4_096, 16_385),
    ("gpt-5", 128_000, 400_000),
    ("o1-mini", 65_536, 128_000),
    ("o1", 100_000, 200_000),
    ("o3", 100_000, 200_000),
    ("o4", 100_000, 200_000),
)


def _limits(model: str) -> tuple[str, int, int] | None:
    name = model.lower().removeprefix("ft:").rpartition("/")[2]
    for limits in _LIMITS:
        if name.startswith(limits[0]):
            return limits
    return None


def context_window(model: str) -> int | None:
    """The context window of ``model`` in tokens (prompt and answer together), or None if unknown.

    >>> context_window("gpt-4o-mini"), context_window("openai/gpt-4.1-nano"), context_window("my-llama")
    (128000, 1047576, None)
    """
    limits = _limits(model)
    return None if limits is None else limits[2]


def max_output_tokens(model: str, *, provider: str | None = None) -> int | None:
    """The most completion tokens ``model`` can produce in one answer, or None if unknown.

    OpenAI's published output limits; for other models in the price table, the context
    window (prompt and answer share it, so it bounds the answer too).

    >>> max_output_tokens("gpt-4o-mini"), max_output_tokens("ft:gpt-4.1-mini:org::x"), max_output_tokens("my-llama")
    (16384, 32768, None)
    """
    limits = _limits(model)
    if limits is not None:
        return limits[1]
    try:
        from genai_prices import Usage, calc_price

        window = calc_price(Usage(), model, provider_id=provider).model.context_window
    except LookupError:
        return None
    return int(window) if window else None


def _look_up(model: str, prices: Any) -> Future:
    """``resolve_price(model, prices)`` on a thread of its own."""
    future: Future = Future()

    def work() -> None:
        try:
            future.set_result(resolve_price(model, prices))
        except BaseException as exc:  # handed to whoever reads the price
            future.set_exception(exc)

    threading.Thread(target=work, name="pandas-llm-prices", daemon=True).start()
    return future


class Meter:
    """Prices one run's requests. ``price`` None means "price unknown": costs are None."""

    def __init__(self, model: str, price: Price | None | Future, *, max_output: int | None = None, batch: bool = False):
        self.model = model
        self._price, self._pending = (None, price) if isinstance(price, Future) else (price, None)
        self.max_output = max_output
        self.batch = batch  # worst cases at Batch API rates
        self._tiktoken = encoding_name_for(model) is not None

    @property
    def price(self) -> Price | None:
        """The price per token (None: unknown); waits for a look-up still under way."""
        if self._pending is not None:
            self._price, self._pending = self._pending.result(), None
        return self._price

    def price_unknown(self) -> bool:
        """True once the price is known to be unknown (False while it is being looked up)."""
        return self._pending is None and self._price is None

    @classmethod
    def for_settings(cls, settings: Any, *, batch: bool = False) -> Meter:
        """The meter for a run (``batch``: a Batch API job's, worst cases at batch rates);
        raises ConfigError if ``max_cost`` is set but cannot be enforced."""
        if settings.max_cost is None and not isinstance(settings.prices, Price):
            # The price table takes ~0.3 s to import the first time: a run without max_cost
            # needs the price only when the first answer arrives, so it is looked up meanwhile.
            return cls(settings.model, _look_up(settings.model, settings.prices), batch=batch)
        price = resolve_price(settings.model, settings.prices)
        meter = cls(settings.model, price, batch=batch)
        if settings.max_cost is None:
            return meter
        if price is None:
            raise ConfigError(
                f"max_cost={settings.max_cost} needs the price of {settings.model!r}, which the price "
                "table does not know. Pass prices=pandas_llm.Price.per_million(input=..., output=...) "
                "(USD per million tokens), or drop max_cost."
            )
        params = settings.params
        if params.get("max_completion_tokens") is None and params.get("max_tokens") is None:
            meter.max_output = max_output_tokens(settings.model)
            if meter.max_output is None:
                raise ConfigError(
                    f"max_cost={settings.max_cost} needs a bound on the length of each answer, and the "
                    f"output limit of {settings.model!r} is not known: pass max_tokens=..."
                )
        return meter

    def cost(self, c: Completion) -> float | None:
        """USD for one answer, from its usage; None if the price or the usage is unknown."""
        if self.price is None or (c.prompt_tokens == 0 and c.completion_tokens == 0):
            return None
        return cost(
            self.price,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            cached_tokens=min(c.cached_tokens, c.prompt_tokens),
        )

    def worst_case(self, body: bytes) -> float:
        """The most the request ``body`` can cost (USD), before it is sent."""
        price = self.price
        if price is None:
            return 0.0
        request = orjson.loads(body)
        prompt = -(-len(body) // 4)  # a tokenizer-free bound: an unknown tokenizer, tools, schemas
        if self._tiktoken:
            prompt = max(prompt, count_message_tokens(request.get("messages") or [], self.model))
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or self.max_output or 0
        if self.batch:
            return prompt * price.batch_input + limit * price.batch_output
        return prompt * price.input + limit * price.output

    def lost(self, body: bytes) -> float:
        """What an attempt sent whose answer was lost may have been billed: its worst case (USD)."""
        if self.max_output is None and self.price is not None:
            self.max_output = max_output_tokens(self.model) or 0  # without max_cost it was not needed yet
        return self.worst_case(body)


class Hold:
    """One job's reservation: ``amount`` USD, ``held`` while it counts in ``Budget.reserved``."""

    __slots__ = ("amount", "held")

    def __init__(self, amount: float):
        self.amount = amount
        self.held = False


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
        limits = _limits(model)
        if limits is None or encoding_name_for(model) is None:
            return None
        return cls(model, limits[2], limits[1])

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
        return held if answered else 0.0  # an HTTP error costs nothing

    async def spend(self, job: tuple[int, bytes, bytes], send: Any, sends: int = 1) -> Record | None:
        """Run ``send(job, hold)`` inside a reservation; None (not sent) once the budget is exhausted.

        ``sends`` is the most requests ``send`` may make for the job (an answer that fails its
        schema is asked again): each of them is reserved at the worst case. ``send`` passes
        ``hold`` to :meth:`lost` when an attempt's answer is lost.
        """
        hold = Hold(self.meter.worst_case(job[2]) * sends)
        if not await self.reserve(hold.amount):
            return None
        hold.held = True
        record = None
        try:
            record = await send(job, hold)
            return record
        finally:
            if hold.held:
                self.settle(hold.amount, self.actual(hold.amount, record))

    async def lost(self, hold: Hold, billed: float, *, again: bool = True) -> bool:
        """An attempt of the job holding ``hold`` was sent and its answer lost: charge ``billed``
        (its worst case) and, if ``again``, reserve anew for the next attempt. False: the
        retry does not fit under the cap (the job is not sent again)."""
        self.settle(hold.amount, billed)
        hold.held = False
        if again:
            hold.held = await self.reserve(hold.amount)
        return hold.held

    def _show(self) -> None:
        if self.stats is not None:
            self.stats.reserved_cost = self.reserved
