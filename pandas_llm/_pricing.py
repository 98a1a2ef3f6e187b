"""Dollars per request: realtime, Batch API and cached-input prices.

Table prices come from the ``genai-prices`` package's bundled data (no network). It is
imported on the first look-up, not with pandas_llm, because importing it takes
~0.15 s: the first ``price_for`` costs ~0.15 s, each new model after it ~0.3 ms, and a
repeated model ~0.05 µs (lru_cache). What the table said is also kept in ``prices.json``
in the user's cache folder (:data:`PRICES`, per model and table version), so a restarted
kernel or a new script reads its prices there and never imports the table. Per-row
arithmetic is ``cost`` (~0.2 µs).

>>> price = price_for("gpt-4o-mini")
>>> round(price.input * 1_000_000, 6), round(price.batch_output * 1_000_000, 6)
(0.15, 0.3)
>>> round(cost(price, prompt_tokens=1_000, completion_tokens=200, cached_tokens=400), 8)
0.00024
>>> money(0.00024)
'$0.000240'

``usage_cost`` is the one way an answer is priced, realtime and Batch API alike (from the
usage the endpoint reported, which may be odd); ``money`` the one way dollars are written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import metadata
from typing import Any

from ._errors import ConfigError, PandasLLMError
from ._kept import KeptFile

__all__ = ["PRICES", "Price", "cost", "money", "price_for", "resolve_price", "usage_cost"]

_PER_MILLION = 1_000_000
_BATCH_CONTEXT = {"processing": "batch"}
# Providers whose Batch API is documented as half the realtime price for every model,
# so a missing batch row in the table can safely be filled in as half.
_HALF_PRICE_BATCH_PROVIDERS = frozenset({"openai"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """Prices of one model in USD **per token**.

    ``cached_input`` is the rate for prompt tokens served from the provider's prompt
    cache; the ``batch_*`` rates apply to requests sent through the Batch API.
    Build one from the per-million figures that price pages publish:

    >>> p = Price.per_million(input=0.15, output=0.60)
    >>> p.input, p.cached_input, p.batch_output
    (1.5e-07, 1.5e-07, 3e-07)
    """

    input: float
    output: float
    cached_input: float
    batch_input: float
    batch_output: float
    batch_cached_input: float

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"Price.{field.name} must be a number, not {value!r}")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int too big for a float
                finite = False
            if not finite or value < 0:
                raise ConfigError(f"Price.{field.name} must be finite and >= 0, not {value!r}")

    @classmethod
    def per_million(
        cls,
        *,
        input: float,
        output: float,
        cached_input: float | None = None,
        batch_discount: float = 0.5,
    ) -> Price:
        """A price from USD per million tokens.

        ``cached_input`` defaults to ``input`` (no caching discount known).
        ``batch_discount`` is the fraction taken off every rate for the Batch API:
        0.5 (the default, OpenAI's) means batch costs half; 0 means no discount.

        >>> Price.per_million(input=2.0, output=8.0, cached_input=0.5, batch_discount=0.5).batch_cached_input
        2.5e-07
        """
        for name, value in (("input", input), ("output", output), ("cached_input", cached_input)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"Price.per_million: {name} must be a number of dollars, not {value!r}")
        if (
            isinstance(batch_discount, bool)
            or not isinstance(batch_discount, int | float)
            or not 0 <= batch_discount <= 1
        ):
            raise ConfigError(f"batch_discount must be between 0 and 1, not {batch_discount!r}")
        if cached_input is None:
            cached_input = input
        factor = 1 - batch_discount
        return cls(
            input=input / _PER_MILLION,
            output=output / _PER_MILLION,
            cached_input=cached_input / _PER_MILLION,
            batch_input=input * factor / _PER_MILLION,
            batch_output=output * factor / _PER_MILLION,
            batch_cached_input=cached_input * factor / _PER_MILLION,
        )


def cost(
    price: Price,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    batch: bool = False,
) -> float:
    """USD for one request.

    OpenAI's usage convention: ``cached_tokens`` (``prompt_tokens_details.cached_tokens``)
    are part of ``prompt_tokens`` and billed at the cached rate, the rest at the input
    rate; reasoning tokens are part of ``completion_tokens``.

    >>> p = Price.per_million(input=0.15, output=0.60, cached_input=0.075)
    >>> round(cost(p, prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=500_000), 6)
    0.1125
    >>> round(cost(p, prompt_tokens=1_000_000, completion_tokens=1_000_000, batch=True), 6)
    0.375
    """
    if prompt_tokens < 0 or completion_tokens < 0 or cached_tokens < 0:
        raise ConfigError("token counts must be >= 0")
    if cached_tokens > prompt_tokens:
        raise ConfigError(f"cached_tokens ({cached_tokens}) exceed prompt_tokens ({prompt_tokens})")
    if batch:
        rates = price.batch_input, price.batch_cached_input, price.batch_output
    else:
        rates = price.input, price.cached_input, price.output
    uncached = prompt_tokens - cached_tokens
    return uncached * rates[0] + cached_tokens * rates[1] + completion_tokens * rates[2]


def usage_cost(
    price: Price | None,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    batch: bool = False,
) -> float | None:
    """USD for one answer from the usage its endpoint reported; None if that cannot be known.

    The one pricing of an answer, realtime and Batch API alike. Usage as servers report it
    may be odd: no usage at all (0 prompt and 0 completion tokens) leaves the cost unknown
    unless every rate is 0 (a free endpoint costs $0 whatever it reports), and more cached
    tokens than prompt tokens count as all the prompt cached.

    >>> p = Price.per_million(input=1.0, output=2.0, cached_input=0.5)
    >>> round(usage_cost(p, prompt_tokens=100, completion_tokens=10, cached_tokens=500), 8)
    7e-05
    >>> usage_cost(p, prompt_tokens=0, completion_tokens=0) is None, usage_cost(None, prompt_tokens=1, completion_tokens=1)
    (True, None)
    """
    if price is None:
        return None
    prompt_tokens, completion_tokens = max(0, prompt_tokens), max(0, completion_tokens)
    if prompt_tokens == 0 and completion_tokens == 0:
        return 0.0 if _free(price) else None
    cached = min(max(0, cached_tokens), prompt_tokens)
    return cost(
        price, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached, batch=batch
    )


def _free(price: Price) -> bool:
    return not any(getattr(price, f.name) for f in fields(price))


def money(amount: float | None) -> str:
    """Dollars with the precision that matters (three significant digits below $1):
    ``$12.35``, ``$0.0123``, ``$0.000045``; None is ``price unknown``.

    >>> money(1234.5), money(0.5), money(0.01234), money(0.0000456), money(0), money(None)
    ('$1,234.50', '$0.500', '$0.0123', '$0.0000456', '$0.00', 'price unknown')
    """
    if amount is None:
        return "price unknown"
    if amount == 0:
        return "$0.00"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    decimals = 2 - math.floor(math.log10(abs(amount)))  # three significant digits
    return f"${amount:.{decimals}f}"


@functools.lru_cache(maxsize=512)
def price_for(model: str, *, provider: str | None = None) -> Price | None:
    """The table price of ``model``, or None if genai-prices does not know it.

    ``provider`` is a genai-prices provider id (``"openai"``, ``"azure"``,
    ``"anthropic"``, ...); by default the provider is guessed from the model name, and
    ``ft:`` fine-tunes are looked up under OpenAI. Prices are today's (the table is
    dated), and tiered models (cheaper below a context length) get their base tier.

    Batch prices are the table's where it has them. Where it has none, OpenAI models
    are *assumed* to cost half the realtime price on the Batch API (OpenAI's published
    rule), and other providers' models are charged the realtime price, so a budget is
    never under-estimated.

    The answer, a price or None, is kept in :data:`PRICES` for the next process, under
    the table's version: a process that has not imported the table yet reads it there
    (~1 ms) instead of importing it. A new genai-prices release looks every model up again.
    A damaged kept entry is ignored (the table is asked). Raises ConfigError if the table
    cannot be read (a broken genai-prices install), with how to pass ``prices=`` instead.

    >>> price_for("gpt-4o-mini").cached_input * 1_000_000
    0.075
    >>> price_for("no-such-model") is None
    True
    """
    version = _table_version()
    if version is None:
        return _table_price(model, provider)
    name = f"{version} {provider or ''} {model}"
    if "genai_prices" not in sys.modules:  # once the table is imported, it answers in ~0.3 ms
        entry = PRICES.get(name)
        if entry is not None:
            try:
                return _kept_price(entry)
            except Exception:  # a damaged entry of any kind (a rate too big, of the wrong type, ...): the table says
                pass
    price = _table_price(model, provider)
    PRICES.put(name, {"price": None if price is None else dataclasses.asdict(price)})
    return price


#: The prices :func:`price_for` looked up, kept between processes (``prices.json`` in the
#: user's cache folder, _kept.py): entries ``{"price": {"input": ..., ...} or null, "at": ...}``
#: named by the table's version, the provider and the model, used for 30 days.
PRICES = KeptFile("prices.json", ttl=30 * 86400.0, what="table prices", thread="pandas-llm-prices-kept")


@functools.lru_cache(maxsize=1)
def _table_version() -> str | None:
    """The installed genai-prices version (read from its metadata: no import); None if unknown."""
    try:
        return metadata.version("genai-prices")
    except metadata.PackageNotFoundError:
        return None


def _kept_price(entry: dict[str, Any]) -> Price | None:
    """The Price of a kept entry (None: the table did not know the model); raises KeyError
    or ValueError for an entry that is not one :func:`price_for` wrote."""
    rates = entry["price"]
    if rates is None:
        return None
    if not isinstance(rates, dict) or set(rates) != {f.name for f in fields(Price)}:
        raise ValueError(f"not a price: {rates!r}")
    return Price(**rates)  # ConfigError (a ValueError) for a rate that is not a finite number >= 0


def _table_price(model: str, provider: str | None) -> Price | None:
    """:func:`price_for` from the table itself; ConfigError if the table cannot be read
    (a broken genai-prices install, data it cannot parse), saying how to price the run instead."""
    try:
        return _read_table(model, provider)
    except PandasLLMError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"The price of {model!r} could not be looked up: the price table (genai-prices) failed with "
            f"{type(exc).__name__}: {exc}. Pass prices=pandas_llm.Price.per_million(input=..., output=...) "
            "(USD per million tokens), or reinstall genai-prices."
        ) from exc


def _read_table(model: str, provider: str | None) -> Price | None:
    from genai_prices import Usage, calc_price  # ~0.15 s to import, so only when needed

    if provider is None and model.lower().startswith("ft:"):
        provider = "openai"  # genai-prices matches fine-tunes only within a provider
    try:
        realtime = calc_price(Usage(), model, provider_id=provider)
        batch = calc_price(Usage(), model, provider_id=provider, price_context=_BATCH_CONTEXT)
    except LookupError:
        return None
    rates = _rates(realtime.model_price)
    if rates is None:
        return None
    input_, output, cached = rates
    batch_rates = _rates(batch.model_price)
    if batch_rates is not None and batch_rates != rates:
        batch_input, batch_output, batch_cached = batch_rates
    elif realtime.provider.id in _HALF_PRICE_BATCH_PROVIDERS:
        batch_input, batch_output, batch_cached = input_ / 2, output / 2, cached / 2
    else:
        batch_input, batch_output, batch_cached = input_, output, cached
    return Price(
        input=input_,
        output=output,
        cached_input=cached,
        batch_input=batch_input,
        batch_output=batch_output,
        batch_cached_input=batch_cached,
    )


def resolve_price(
    model: str,
    prices: Price | Mapping[str, Price] | None = None,
    *,
    provider: str | None = None,
) -> Price | None:
    """The price to charge ``model`` at: the caller's if given, else the table's.

    ``prices`` is one Price for every model, or a mapping from model name to Price
    (models missing from it fall back to the table). None means "price unknown". Raises
    ConfigError if the table must be asked and cannot be read (:func:`price_for`).

    >>> mine = Price.per_million(input=1.0, output=2.0)
    >>> resolve_price("my-local-model", {"my-local-model": mine}) is mine
    True
    >>> resolve_price("my-local-model") is None
    True
    """
    if isinstance(prices, Price):
        return prices
    if prices is not None and model in prices:
        return prices[model]
    return price_for(model, provider=provider)


def _rates(model_price: Any) -> tuple[float, float, float] | None:
    """(input, output, cached input) in USD per token from a genai-prices ModelPrice."""
    input_ = _per_token(model_price.input_mtok)
    output = _per_token(model_price.output_mtok)
    if input_ is None and output is None:
        return None  # priced by something other than tokens (requests, images, ...)
    input_ = input_ or 0.0
    cached = _per_token(model_price.cache_read_mtok)
    return input_, output or 0.0, input_ if cached is None else cached


def _per_token(per_mtok: Any) -> float | None:
    if per_mtok is None:
        return None
    base = getattr(per_mtok, "base", per_mtok)  # TieredPrices: the rate below the first tier
    return float(base / _PER_MILLION)  # divided as a Decimal: 0.8/M is 8e-07, not 8.000000000000001e-07
