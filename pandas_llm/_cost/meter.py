"""Dollars per request of one run: what an answer cost, and the most a request can cost.

``Meter`` prices a run's requests at one ``Price``: ``cost(completion)`` is what an answer
cost (``usage_cost``: from the usage the endpoint reported, cached input tokens at their
discount), and ``worst_case(body)`` the most a request can cost before it is sent: its
prompt tokens at the input price plus the most output tokens it may produce (its
``max_tokens``, else the model's output limit) at the output price. The budget
(_run/budget.py) reserves worst cases against ``max_cost``; the endpoint kinds
(_plan/endpoints.py) bring their own meters.

    >>> from pandas_llm._pricing import Price
    >>> m = Meter("gpt-4o-mini", Price.per_million(input=1.0, output=2.0), max_output=100)
    >>> round(m.worst_case(b'{"messages":[{"role":"user","content":"hi"}]}'), 8)
    0.000212
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import orjson

from .._errors import ConfigError, PandasLLMError, sentence
from .._pricing import Price, resolve_price, usage_cost
from .models import max_output_tokens
from .tokens import count_message_tokens, encoding_name_for

if TYPE_CHECKING:
    from .._backends import Completion

__all__ = ["Meter"]


class _LookUp:
    """``resolve_price(model, prices)`` on a thread of its own, from ``start()`` on (once).

    It runs while requests are out, so it never fails: a look-up that raises (a broken price
    table, whatever it raises) makes the price unknown (None) and says why in ``note``."""

    def __init__(self, model: str, prices: Any):
        self.future: Future = Future()
        self._args = (model, prices)
        self._lock = threading.Lock()
        self.started = False
        self.note: str | None = None  # why the look-up failed, for the run's warning

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        threading.Thread(target=self._work, name="pandas-llm-prices", daemon=True).start()

    def _work(self) -> None:
        try:
            price = resolve_price(*self._args)
        except BaseException as exc:  # answers are arriving: they are kept, priced "unknown"
            self.note = _failed(self._args[0], exc) + " This run's costs are unknown (price unknown)."
            price = None
        self.future.set_result(price)


def _failed(model: str, exc: BaseException) -> str:
    """What to say when the price of ``model`` could not be looked up (``exc``)."""
    if isinstance(exc, PandasLLMError):
        return sentence(str(exc))  # says what to do already
    return (
        f"The price of {model!r} could not be looked up ({type(exc).__name__}: {exc}). Pass "
        "prices=pandas_llm.Price.per_million(input=..., output=...) (USD per million tokens)."
    )


class Meter:
    """Prices one run's requests. ``price`` None means "price unknown": costs are None."""

    def __init__(
        self, model: str, price: Price | None | Future | _LookUp, *, max_output: int | None = None, batch: bool = False
    ):
        self.model = model
        self._lookup = price if isinstance(price, _LookUp) else None
        if isinstance(price, _LookUp):
            price = price.future
        self._price: Price | None = None if isinstance(price, Future) else price
        self._pending: Future | None = price if isinstance(price, Future) else None
        self.max_output = max_output
        self.batch = batch  # worst cases at Batch API rates
        self._tiktoken = encoding_name_for(model) is not None

    @property
    def price(self) -> Price | None:
        """The price per token (None: unknown); waits for a look-up still under way."""
        if self._pending is not None:
            self.look_up_now()
            self._price, self._pending = self._pending.result(), None
        return self._price

    def pending(self) -> Future | None:
        """The look-up of the price while it is under way (a ``concurrent.futures.Future``), else None:
        an event loop awaits it (``asyncio.wrap_future``) rather than block on :attr:`price`.
        A deferred look-up not started yet starts now."""
        pending = self._pending
        if pending is None or pending.done():
            return None
        self.look_up_now()
        return pending

    def look_up_now(self) -> None:
        """Start a deferred look-up of the price (``for_settings(defer=True)``); no-op otherwise."""
        lookup = self._lookup
        if lookup is not None and not lookup.started:
            lookup.start()

    @property
    def note(self) -> str | None:
        """Why the price is unknown when its look-up failed (a warning for the user), else None."""
        return None if self._lookup is None else self._lookup.note

    def price_unknown(self) -> bool:
        """True once the price is known to be unknown (False while it is being looked up)."""
        return self._pending is None and self._price is None

    @classmethod
    def for_settings(cls, settings: Any, *, batch: bool = False, defer: bool = False) -> Meter:
        """The meter for a run (``batch``: a Batch API job's, worst cases at batch rates);
        raises ConfigError if ``max_cost`` is set but cannot be enforced. ``defer``: a price
        looked up on a thread starts at :meth:`look_up_now` (or when it is first needed)."""
        if settings.max_cost is None and not isinstance(settings.prices, Price):
            # The price table takes ~0.1-0.3 s to import the first time: a run without max_cost
            # needs the price only when the first answer arrives, so it is looked up meanwhile,
            # and an answer that comes first awaits it (the engine: ``pending``), never
            # blocking the event loop of the requests in flight. A run defers the start until
            # its first requests are out: the import holds the GIL, and would slow them.
            lookup = _LookUp(settings.model, settings.prices)
            if not defer:
                lookup.start()
            return cls(settings.model, lookup, batch=batch)
        try:
            price = resolve_price(settings.model, settings.prices)
        except ConfigError:
            raise
        except Exception as exc:  # before anything is sent: say so, and how to price the run
            raise ConfigError(_failed(settings.model, exc)) from exc
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
        return usage_cost(
            self.price,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            cached_tokens=c.cached_tokens,
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
