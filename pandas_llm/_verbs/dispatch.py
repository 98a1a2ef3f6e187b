"""The one place that chooses realtime, batch or auto, for every verb.

A verb states what it sends (the requests' settings, template and ``response_format``),
how each answer is checked (``validate``), how rows are packed or grouped, and how its
result is assembled (``finish``); :func:`start` plans the rows and returns a :class:`Job`:
a realtime ``Run`` or a Batch API ``BatchJob`` (packed: ``PackedBatchJob``). Either way
the caller does the same two things: ``await job.wait()``, then ``job.result(details)``.

``mode="auto"`` plans once, counts the requests still to send, and builds only the job it
picks: the Batch API from ``settings.batch_threshold`` requests on, when the endpoint serves
one and no ``max_cost`` is set (a cap is realtime's), else a realtime run of that same plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import pandas as pd

from .._batch.available import batch_possible, check_batch, no_batch_api
from .._batch.job import BatchJob
from .._batch.packed import PackedBatchJob
from .._config import Mode, Settings
from .._plan.planner import Plan, make_plan
from .._run import inflight
from .._run import loop as _runner
from .._run.run import Run
from .._store.store import Store

__all__ = ["Job", "Mode", "start", "goes_batch"]

log = logging.getLogger("pandas_llm")


class Job(Protocol):
    """What every verb's planned work offers, realtime or batch."""

    name: Any

    @property
    def rows(self) -> Plan: ...

    async def wait(self) -> None:
        """Send what the cache lacks and wait until every answer is in (or the job stopped)."""

    def result(self, *, details: bool = False) -> Any:
        """The verb's value (``details=True``: with per-row status, error, tokens, cost)."""

    def warn(self) -> None:
        """Make this job what ``last_run()`` reports; warn once about rows without an answer."""


def start(
    data: pd.DataFrame | pd.Series,
    template: Any,
    settings: Settings,
    *,
    extra: dict[str, Any] | None = None,
    validate: Callable[[str | None], str | None] | None = None,
    packing: Any = None,
    kind: Any = None,
    finish: Callable[[Any, bool], Any] | None = None,
) -> Job:
    """Plan ``data`` (nothing is sent; bad input raises here) and return the job ``settings.mode`` means.

    ``extra`` / ``validate``: a schema's request fields and answer check, the same for realtime
    and batch, so both share cache keys; ``packing``: a packing.Packer (chat) or, with ``kind``
    (a list-input endpoint), its grouping.Grouper (realtime only: a batch line holds one input);
    ``finish``: ``(job, details) -> result``, the verb's own assembly. Raises ConfigError for what
    the Batch API cannot do (``mode="batch"``)."""
    mode: Mode = settings.mode
    if mode == "realtime":
        return Run(data, template, settings, extra=extra, validate=validate, packing=packing, kind=kind, finish=finish)
    if mode == "batch":
        check_batch(settings)
    packer = packing if kind is None else None
    token = inflight.open_run() if mode == "auto" else None  # a realtime run of this plan may follow
    try:
        with Store(settings.cache_path) as store:
            plan = make_plan(data, template, settings, store, extra=extra, kind=kind)
            if packer is not None:
                packer.prepare(plan, store)  # rows answered in earlier packs are cache hits
            if mode == "batch" or goes_batch(settings, len(plan.todo)):
                name = data.name if isinstance(data, pd.Series) else None
                if packer is not None:
                    return PackedBatchJob(plan, packer, settings, store, name=name, validate=validate, finish=finish)
                return BatchJob(plan, settings, name=name, validate=validate, kind=kind, finish=finish)
        return Run(data, template, settings, extra=extra, validate=validate, packing=packing, kind=kind,
                   plan=plan, finish=finish)  # fmt: skip
    finally:
        if token is not None:
            inflight.close_run(token)


def goes_batch(settings: Settings, to_send: int) -> bool:
    """``mode="auto"``'s choice for ``to_send`` requests: the Batch API from ``batch_threshold``
    on, unless max_cost is set (realtime only), the client cannot take batches (a function,
    no API key) or the endpoint serves no Batch API (one probe; said in one log line)."""
    if to_send < settings.batch_threshold or settings.max_cost is not None or not batch_possible(settings):
        return False
    missing = _runner.run_sync(lambda: no_batch_api(settings))
    if missing is not None:
        log.warning("pandas-llm: mode='auto' sends %d requests in realtime: %s has no Batch API (%s)",
                    to_send, settings.endpoint, missing)  # fmt: skip
        return False
    return True
