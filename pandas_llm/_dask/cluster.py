"""What one verb call's partitions share through the driver: one ``max_cost``, one progress
display, one ``last_run()`` (budget.py, progress.py).

The driver opens a :class:`Call` when the verb is called (the events channel and its
:class:`~pandas_llm._dask.progress.Tally`, a purse id for ``max_cost``); each partition
runs inside :func:`partition_scope`, which gives its runs a budget drawing on that purse
and a progress observer reporting to the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._config import Settings, current_settings
from .._run.run import budget_factory, unanswered_sink
from .budget import ClusterBudget, local_purse
from .events import Channel
from .progress import PartitionReporter, Tally, call_label

__all__ = ["Call", "open_call", "partition_scope"]


@dataclasses.dataclass(frozen=True)
class Call:
    """A verb call's ids, shipped with every partition's task."""

    id: str
    max_cost: float | None
    topic: str
    remote: bool  # the driver had a distributed client: the purse is on its scheduler


def open_call(npartitions: int, options: dict[str, Any], settings: Settings, *, remote: bool,
              verb: str, template: Any) -> Call:  # fmt: skip
    """On the driver, when the verb is called: the channel the partitions report to, its
    display as ``progress=`` (the driver's setting: the workers show nothing) says; its
    warning names the call (``verb`` and ``template``)."""
    shown = current_settings().merged(**options).progress
    channel = Channel(Tally(shown, npartitions, settings.max_cost, call_label(verb, template)))
    return Call(uuid.uuid4().hex, settings.max_cost, channel.topic, remote)


@contextmanager
def partition_scope(call: Call | None, partition_info: dict[str, Any] | None, settings: Settings) -> Iterator[Settings]:
    """On the worker, around one partition's verb: yields its settings (progress reported to
    the driver) and builds its runs' budgets on the call's purse; the final report at exit."""
    if call is None:  # the verb's meta, on the driver
        yield settings
        return
    execution = uuid.uuid4().hex
    part = partition_info.get("number") if partition_info else None
    part = execution if part is None else part
    reporter = PartitionReporter(call.topic, part, execution)
    token = None
    if call.max_cost is not None:
        ask = None
        if call.remote:
            from .coordinator import remote_purse

            ask = remote_purse(call.id, call.max_cost)  # None: computed without a distributed worker
        ask = ask if ask is not None else local_purse(call.id, call.max_cost)
        token = budget_factory.set(functools.partial(ClusterBudget, ask=functools.partial(ask, part, execution)))
    quiet = unanswered_sink.set(reporter.add_unanswered)  # the driver warns for the compute
    failed = True
    try:
        yield dataclasses.replace(settings, progress=reporter)
        failed = False
    finally:
        unanswered_sink.reset(quiet)
        if token is not None:
            budget_factory.reset(token)
        reporter.finish(failed)
