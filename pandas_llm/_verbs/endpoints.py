"""``moderate`` and ``embed``: the chat run pointed at another endpoint.

The accessor calls :func:`prepare_moderate` / :func:`prepare_embed`; each checks its
arguments before anything is sent and returns a planned :class:`~.dispatch.Job` (realtime or,
for embed, batch: chosen by :func:`~.dispatch.start`) whose ``result()`` is the verb's value.
The endpoint is a kind (_plan/endpoints.py); rows go many per request (_run/grouping.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .._config import current_settings
from .._errors import ConfigError
from .._plan.endpoints import Embeddings, Moderations
from .._run.grouping import Grouper
from .dispatch import Job, start

__all__ = ["prepare_moderate", "prepare_embed", "DEFAULT_MODERATION_MODEL", "DEFAULT_EMBEDDING_MODEL"]

DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"


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


def prepare_moderate(data: Any, template: Any, options: Mapping[str, Any], *, inputs_per_request: Any = None) -> Job:
    settings = _settings(options, DEFAULT_MODERATION_MODEL, "moderate")
    _check_per_request(inputs_per_request)
    if settings.mode == "batch":
        raise ConfigError(
            "moderate() runs in realtime only: the moderation endpoint is free, the Batch API saves nothing"
        )
    settings = settings.merged(mode="realtime")
    kind = Moderations()

    def finish(job: Any, details: bool) -> Any:
        job.warn()
        plan = job.rows
        if details:
            return plan.outcomes.details(plan.codes, plan.index)
        return kind.frame(plan.outcomes, plan.codes, plan.index)

    return start(data, template_for(data, template, "moderate"), settings, kind=kind,
                 packing=Grouper(kind, settings, inputs_per_request), finish=finish)  # fmt: skip


def prepare_embed(
    data: Any, template: Any, options: Mapping[str, Any], *, dimensions: Any = None, as_series: bool = False,
    inputs_per_request: Any = None,
) -> Job:  # fmt: skip
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
    if settings.mode == "batch" and settings.max_cost is not None:
        raise ConfigError(
            "max_cost caps realtime runs; a Batch API job is submitted whole. See its cost first with "
            "s.llm.estimate(..., verb='embed'), then submit without max_cost, or use mode='realtime' with max_cost."
        )

    def finish(job: Any, details: bool) -> Any:
        job.warn()
        plan = job.rows
        if details:
            return plan.outcomes.details(plan.codes, plan.index)
        return vectors_result(plan, as_series, job.name)

    return start(data, template_for(data, template, "embed"), settings, kind=kind,
                 packing=Grouper(kind, settings, inputs_per_request), finish=finish)  # fmt: skip


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
