"""What an estimate says: figures as ranges, priced realtime and batch, shown as a table.

See :mod:`pandas_llm._verbs.estimate` for how the figures are arrived at.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._pricing import Price, money

__all__ = ["Estimate", "Range", "DEFAULT_OUTPUT_TOKENS", "plan_counts"]

#: Assumed completion tokens per answer when neither max_tokens nor a sample says more.
DEFAULT_OUTPUT_TOKENS = 100


class Range(NamedTuple):
    """A low / expected / high figure; ``expected`` None means "at most ``high``"."""

    low: float
    expected: float | None
    high: float

    def scale(self, f: Callable[[float], float]) -> Range:
        return Range(f(self.low), None if self.expected is None else f(self.expected), f(self.high))


@dataclass(frozen=True)
class Estimate:
    """What ``map`` with the same arguments would send and cost. See the module docstring."""

    model: str
    rows: int
    skipped: int  # rows not sent (NA cells)
    unique: int  # distinct prompts after dedup
    cached: int  # distinct prompts already answered in the cache
    to_send: int
    input_tokens: int  # prompt tokens of the requests to send
    input_exact: bool  # False: the model's tokenizer is unknown, counted with o200k_base
    output_tokens: Range
    output_basis: str  # how output_tokens was arrived at, in words
    price: Price | None  # None: price unknown
    saved: float  # what the cached answers cost when they were paid for
    sampled: int = 0  # requests run for real by sample=
    sample_cost: float | None = 0.0  # what this call spent on them
    max_cost: float | None = None
    requests: int | None = None  # requests to send (packs count once); None: to_send
    mode: str = "realtime"  # the call's mode: "batch" prices expected_cost at Batch API rates
    cached_input_tokens: int = 0  # of input_tokens, what the provider's prompt cache can serve
    cache_prefix_tokens: int = 0  # the cacheable fixed prefix of every request (0: under 1,024)

    @property
    def expected_cost(self) -> Range | None:
        """USD for the call as given: Batch API rates with ``mode="batch"``, else realtime."""
        return self.batch_cost if self.mode == "batch" else self.cost

    @property
    def cache_saving(self) -> float | None:
        """USD the provider's prompt cache would save at the call's rates if it stays warm
        (prefixes of 1,024+ tokens, OpenAI's rule); not taken off ``cost``."""
        p = self.price
        if p is None:
            return None
        if self.mode == "batch":
            return self.cached_input_tokens * (p.batch_input - p.batch_cached_input)
        return self.cached_input_tokens * (p.input - p.cached_input)

    too_long: int = 0  # distinct prompts that cannot fit the context window: map does not send them
    context_window: int | None = None  # the model's, in tokens, if known

    @property
    def cost(self) -> Range | None:
        """USD at realtime prices (no provider prompt-cache discount assumed); None if unknown."""
        return self._cost(batch=False)

    @property
    def batch_cost(self) -> Range | None:
        """USD through the Batch API."""
        return self._cost(batch=True)

    def _cost(self, *, batch: bool) -> Range | None:
        p = self.price
        if p is None:
            return None
        rate_in, rate_out = (p.batch_input, p.batch_output) if batch else (p.input, p.output)
        base = self.input_tokens * rate_in
        return self.output_tokens.scale(lambda n: base + n * rate_out)

    def table(self) -> list[tuple[str, str, str]]:
        """(figure, value, note) rows, as both reprs show them."""
        rows = [
            ("rows", f"{self.rows:,}", f"{self.skipped:,} skipped (NA cells)" if self.skipped else ""),
            ("unique prompts", f"{self.unique:,}", "after dedup" if self.unique != self.rows - self.skipped else ""),
            ("cache hits", f"{self.cached:,}", f"saved {money(self.saved)}" if self.saved > 0 else ""),
            (
                "to send",
                f"{self.to_send:,}",
                "" if self.requests in (None, self.to_send) else f"in {self.requests:,} requests (rows_per_request)",
            ),
            *(
                [
                    (
                        "too long",
                        f"{self.too_long:,}",
                        f"over the {self.context_window:,}-token context window: not sent; "
                        "shorten them or use a larger-context model",
                    )
                ]
                if self.too_long
                else []
            ),  # fmt: skip
            (
                "input tokens",
                f"{self.input_tokens:,}",
                "exact (tiktoken)" if self.input_exact else "estimated: tokenizer unknown, counted with o200k_base",
            ),
            ("output tokens", _range(self.output_tokens, lambda n: f"{round(n):,}"), self.output_basis),
        ]
        for label, value in (("cost, realtime", self.cost), ("cost, Batch API", self.batch_cost)):
            if value is None:
                rows.append(
                    (
                        label,
                        "price unknown",
                        f"pass prices= to price {self.model!r}" if label.endswith("realtime") else "",
                    )
                )
            else:
                note = "" if value.expected is not None else "upper bound (max_tokens)"
                if (self.mode == "batch") == label.endswith("API"):
                    note = "this call" + (f", {note}" if note else "")
                rows.append((label, _range(value, money), note))
        saving = self.cache_saving
        if self.cached_input_tokens and saving is not None:
            rows.append(
                (
                    "prompt cache",
                    f"-{money(saving)}",
                    f"if the provider caches the {self.cache_prefix_tokens:,}"
                    f"-token fixed prefix: {self.cached_input_tokens:,} input tokens at the cached rate",
                )
            )
        if self.max_cost is not None and self.expected_cost is not None:
            rows.append(("max_cost", money(self.max_cost), self._budget_note()))
        if self.sampled:
            spent = "price unknown" if self.sample_cost is None else money(self.sample_cost)
            rows.append(("sample", f"{self.sampled:,} requests", f"run for real, {spent} (cached: not paid again)"))
        return rows

    def _budget_note(self) -> str:
        cost, cap = self.expected_cost, self.max_cost
        assert cost is not None and cap is not None
        worst = cost.high
        if worst <= cap:
            return "enough for the whole run"
        likely = cost.expected if cost.expected is not None else cost.high
        if likely <= cap:
            return "probably enough, not for the worst case: the run may stop early"
        return f"the run will stop early, after about {min(1.0, cap / likely):.0%} of the requests"

    def __repr__(self) -> str:
        rows = self.table()
        width = max(len(r[0]) for r in rows)
        vwidth = max(len(r[1]) for r in rows)
        lines = [f"pandas-llm estimate for {self.model}"]
        for label, value, note in rows:
            lines.append(f"  {label:<{width}}  {value:>{vwidth}}  {note}".rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = lambda s: html.escape(str(s), quote=False)  # noqa: E731
        cells = "".join(
            f"<tr><th style='text-align:left'>{e(label)}</th><td style='text-align:right'>{e(value)}</td>"
            f"<td style='text-align:left; opacity:0.75'>{e(note)}</td></tr>"
            for label, value, note in self.table()
        )
        return (
            f"<table class='pandas-llm-estimate'><caption style='text-align:left'><b>pandas-llm estimate</b>"
            f" for {e(self.model)}</caption>{cells}</table>"
        )


def _range(r: Range, fmt: Callable[[float], str]) -> str:
    if r.expected is None:
        return f"≤ {fmt(r.high)}"
    if fmt(r.low) == fmt(r.high):
        return f"~{fmt(r.expected)}"
    return f"~{fmt(r.expected)} ({fmt(r.low)} – {fmt(r.high)})"


def plan_counts(plan: Any) -> dict[str, Any]:
    """The figures every estimate reads off a plan: rows, NA-skipped rows, distinct
    requests, rows answered from the cache and what those cost when paid (dollars)."""
    codes = plan.codes
    outcomes = plan.outcomes
    return {
        "rows": len(codes),
        "skipped": int((codes < 0).sum()),
        "unique": len(plan.keys),
        "cached": int(outcomes.from_cache.sum()),
        "saved": float(np.nansum(outcomes.cost[outcomes.from_cache])),
    }
