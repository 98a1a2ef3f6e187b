"""``moderate`` and ``embed``: the chat run (pipeline.Run) pointed at another endpoint.

The accessor calls :func:`prepare_moderate` / :func:`prepare_embed`; each checks its
arguments before anything is sent and returns a planned run whose ``result()`` is the
verb's value. The endpoint is a kind (endpoints.py); rows go many per request (grouping.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .._config import current_settings
from .._errors import ConfigError
from .._plan.endpoints import Embeddings, Moderations
from .._stats import RunReport, record_run
from .grouping import Grouper
from .run import Run

__all__ = ["EndpointRun", "prepare_moderate", "prepare_embed", "DEFAULT_MODERATION_MODEL", "DEFAULT_EMBEDDING_MODEL"]

DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"


@dataclass
class EndpointRun:
    """A planned run: ``await execute()`` (or run it sync), then ``result()``."""

    run: Run
    finish: Callable[[bool], Any]

    async def execute(self, **kw: Any) -> None:
        await self.run.execute(**kw)

    def result(self, *, details: bool = False) -> Any:
        self.run._warn_failures()
        if details:
            plan = self.run.plan
            return plan.outcomes.details(plan.codes, plan.index)
        return self.finish(details)


def template_for(data: pd.DataFrame | pd.Series, template: Any, verb: str) -> Any:
    """A column name stands for ``"{column}"``; a Series needs no template."""
    if template is None:
        if isinstance(data, pd.Series):
            return "{}"
        raise ConfigError(f"df.llm.{verb}() needs the column to send or a template, e.g. df.llm.{verb}('text')")
    if isinstance(data, pd.DataFrame) and isinstance(template, str) and template in data.columns:
        return "{" + template + "}"
    return template


def _settings(options: Mapping[str, Any], default_model: str, verb: str) -> Any:
    for name in ("system", "schema", "rows_per_request", "structured", "invalid_retries"):
        if name in options:
            raise ConfigError(f"{verb}() does not take {name}=: it sends each row's text as it is")
    settings = current_settings().merged(**{"model": default_model, **options})
    if settings.params:
        raise ConfigError(
            f"{verb}() takes no generation parameters ({', '.join(sorted(settings.params))}); "
            "pass anything else the endpoint accepts as extra_body={...}"
        )
    return settings.merged(system=None)  # a session-wide chat system message does not apply


def _check_per_request(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"inputs_per_request must be a whole number >= 1 or None, got {value!r}")


def prepare_moderate(
    data: Any, template: Any, options: Mapping[str, Any], *, inputs_per_request: Any = None
) -> EndpointRun:
    settings = _settings(options, DEFAULT_MODERATION_MODEL, "moderate")
    _check_per_request(inputs_per_request)
    if settings.mode == "batch":
        raise ConfigError(
            "moderate() runs in realtime only: the moderation endpoint is free, the Batch API saves nothing"
        )
    settings = settings.merged(mode="realtime")
    kind = Moderations()
    run = Run(data, template_for(data, template, "moderate"), settings, kind=kind,
              packing=Grouper(kind, settings, inputs_per_request))  # fmt: skip
    return EndpointRun(run, lambda details: kind.frame(run.plan.outcomes, run.plan.codes, run.plan.index))


def prepare_embed(
    data: Any, template: Any, options: Mapping[str, Any], *, dimensions: Any = None, as_series: bool = False,
    inputs_per_request: Any = None,
) -> Any:  # fmt: skip
    settings = _settings(options, DEFAULT_EMBEDDING_MODEL, "embed")
    _check_per_request(inputs_per_request)
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise ConfigError(f"dimensions must be a whole number >= 1 or None, got {dimensions!r}")
    kind = Embeddings(dimensions)
    if settings.max_cost is not None and kind.meter(settings).price is None:
        raise ConfigError(
            f"max_cost={settings.max_cost} needs the price of {settings.model!r}, which the price table does not "
            "know. Pass prices=pandas_llm.Price.per_million(input=..., output=0), or drop max_cost."
        )
    template = template_for(data, template, "embed")
    name = data.name if isinstance(data, pd.Series) else None
    if settings.mode == "batch":
        return _embed_job(data, template, settings, kind, as_series, name)
    run = Run(data, template, settings, kind=kind, packing=Grouper(kind, settings, inputs_per_request))
    if settings.mode == "auto" and len(run.plan.todo) >= settings.batch_threshold and settings.max_cost is None:
        from .._batch.job import _batch_possible

        if _batch_possible(settings):
            run.store.close()
            return _job(run.plan, settings, kind, as_series, name)
    return EndpointRun(run, lambda details: vectors_result(run.plan, as_series, run.name))


def _embed_job(data: Any, template: Any, settings: Any, kind: Embeddings, as_series: bool, name: Any) -> Any:
    """``embed(mode="batch")``: one Batch API line per distinct text, keyed as in realtime."""
    from .._batch.client import BatchAPI
    from .._plan.planner import make_plan
    from .._store.store import Store

    if settings.max_cost is not None:
        raise ConfigError(
            "max_cost caps realtime runs; a Batch API job is submitted whole. See its cost first with "
            "s.llm.estimate(..., verb='embed'), then submit without max_cost, or use mode='realtime' with max_cost."
        )
    BatchAPI(settings)  # raises ConfigError (function client, no API key) before planning
    store = Store(settings.cache_path)
    try:
        plan = make_plan(data, template, settings, store, kind=kind)
    finally:
        store.close()
    return _job(plan, settings, kind, as_series, name)


def _job(plan: Any, settings: Any, kind: Embeddings, as_series: bool, name: Any) -> Any:
    from .._batch.job import BatchJob
    from . import run as pipeline

    job = BatchJob(plan, settings, name=name, kind=kind)

    def finish(details: bool) -> Any:
        record_run(RunReport(job.stats, plan))
        pipeline.warn_failures(plan, job.stats.total, resend="submits")
        if details:
            return plan.outcomes.details(plan.codes, plan.index)
        return vectors_result(plan, as_series, name)

    job.finish = finish
    return job


def vectors_result(plan: Any, as_series: bool, name: Any = None) -> np.ndarray | pd.Series:
    """The vectors aligned to the plan's rows: ``(n_rows, dims)`` float32 (NaN rows where a row
    has none), or a Series of 1-D float32 arrays (None where a row has none)."""
    matrix = plan.outcomes.array(plan.codes)
    if not as_series:
        return matrix
    ok = plan.outcomes.status == "ok"
    has = ok[np.maximum(plan.codes, 0)] & (plan.codes >= 0) if len(plan.codes) else np.zeros(0, bool)
    values = np.empty(len(plan.codes), dtype=object)
    values[:] = [row if h else None for row, h in zip(matrix, has.tolist())]
    return pd.Series(values, index=plan.index, name=name, dtype=object)


def estimate_endpoint(data: Any, template: Any, options: Mapping[str, Any], verb: str, *,
                      dimensions: Any = None) -> Any:  # fmt: skip
    """What ``embed`` / ``moderate`` with the same arguments would send and cost (nothing is
    sent): rows, distinct texts, cache hits, input tokens (tiktoken for OpenAI's embedding
    models, else ~4 characters a token) and dollars, realtime and Batch API. No output tokens."""
    import warnings

    from .._cost.estimate import Estimate, Range, plan_counts
    from .._cost.tokens import count_text_tokens, encoding_name_for
    from .._plan.planner import make_plan
    from .._store.store import Store

    moderate = verb == "moderate"
    settings = _settings(options, DEFAULT_MODERATION_MODEL if moderate else DEFAULT_EMBEDDING_MODEL, verb)
    kind: Any = Moderations() if moderate else Embeddings(dimensions)
    store = Store(settings.cache_path)
    try:
        plan = make_plan(data, template_for(data, template, verb), settings, store, kind=kind)
    finally:
        store.close()
    exact = encoding_name_for(settings.model) is not None
    tokens = 0
    encode = kind.builder(settings).encode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for u in plan.todo.tolist():
            text = encode(plan._render(plan.first_row[u]))[1]
            text = orjson.loads(text)["input"]
            tokens += count_text_tokens(text, settings.model) if exact else len(text) // 4 + 1
    return Estimate(
        model=settings.model,
        **plan_counts(plan),
        to_send=len(plan.todo),
        input_tokens=tokens,
        input_exact=exact or moderate,
        output_tokens=Range(0, 0, 0),
        output_basis="the moderation endpoint is free" if moderate else "embeddings have no output tokens",
        price=kind.meter(settings).price,
        max_cost=settings.max_cost,
        mode=settings.mode,
    )
