"""``mode="batch"`` / ``"auto"`` on Dask: one Batch API job on the driver for the whole collection.

    out = ddf.llm.map("Translate to French: {text}", mode="batch")  # submits and waits, here
    out.compute()                                                    # copies the answers: sends nothing

The verb blocks when it is called, as the pandas accessor's ``mode="batch"`` does: the
driver computes the template's columns (every column for a function template), and the
pandas engine plans them as one frame, so identical prompts in different partitions are
one request; it submits what the driver's sidecar lacks (split as ``batch_limits`` says),
records the batches in that sidecar's ledger (a rerun after a restart re-attaches to them
and pays nothing twice), waits with the driver's progress bar, and assembles the verb's
result on the driver. ``last_run()`` on the driver reports that job. ``mode="auto"`` takes
the pandas dispatch's decision once, on the driver, for the whole collection; when it
chooses realtime, the verb is the lazy realtime one (the partitions send, at compute time).

The returned collection is still lazy and built on the input's own partitions (same
index, divisions and lineage, so ``ddf.assign(out=...)`` needs no alignment): each
partition takes its rows' values from the driver's result, which reaches each worker once
(scattered to the workers with a ``distributed`` client, else inside the graph), so a
worker on another host needs no access to the driver's sidecar. A row is found by its index
label and the values of the template's columns (hashed; rows of the driver's frame sharing
a hash are checked to be the same row), so ``out.partitions[i]`` or a culled graph still
finds its rows. A partition never sends a request: a row the job did not answer (the input
changed between the call and the compute) raises ConfigError naming the rows, never a
silent request nor a silent NA.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .._batch.available import batch_possible, check_batch
from .._config import current_settings
from .._errors import ConfigError
from .._plan.prompts import compile_template
from .._run import loop as _runner
from .._run.run import Run
from .._verbs import prepare
from .events import current_client

__all__ = ["batch_answers", "template_data"]

_KEYS = ("pandas-llm:rows1", "pandas-llm:rows2")  # two row hashes (the keys, 16 bytes each, salt text values)


def template_data(obj: Any, template: Any) -> Any:
    """The part of a Dask collection the template reads: its columns (all of them for a
    function template, the Series itself for a Series)."""
    if isinstance(obj._meta, pd.Series) or callable(template):
        return obj
    columns = list(compile_template(template, [str(c) for c in obj.columns], series=False).columns)
    return obj[[c for c in obj.columns if str(c) in columns]]


def batch_answers(obj: Any, verb: str, template: Any, verb_kw: dict[str, Any], options: dict[str, Any],
                  meta: Any) -> Any:  # fmt: skip
    """Run ``verb`` over the whole collection ``obj`` as one Batch API job on the driver (``mode=
    "batch"``, or ``"auto"`` choosing batch) and return the lazy collection of its answers (``meta``:
    the realtime verb's), aligned to ``obj``'s partitions; or None when ``mode="auto"`` chooses realtime.

    ``options``: the call's keywords, read on the driver as the pandas accessor reads them (the
    progress bar shows on the driver). Raises ConfigError (before anything is computed or sent) for
    what the Batch API cannot do, and what the pandas verb raises (FatalAPIError, RetryableError...)."""
    settings = current_settings().merged(**options)
    if settings.mode == "auto" and (settings.max_cost is not None or not batch_possible(settings)):
        return None  # the pandas dispatch would choose realtime whatever the count: nothing to plan here
    if settings.mode == "batch":
        check_batch(settings)  # a function client, no API key: said before the collection is computed
    data = template_data(obj, template).compute()
    kw = {k: v for k, v in verb_kw.items() if k != "details"}
    job = prepare(data, template, options, verb=verb, **kw)
    if isinstance(job, Run):  # mode="auto" below batch_threshold: the partitions send in realtime
        job.store.close()
        return None
    _runner.run_sync(job.wait)
    result = job.result(details=verb_kw.get("details", False))
    payload = _shipped(_by_row(data, result))
    columns = None if isinstance(data, pd.Series) else list(data.columns)
    return obj.map_partitions(_read, columns, payload, meta=meta)


def _shipped(answers: Any) -> Any:
    """``answers`` as one task every partition depends on (a worker fetches it once, not once per
    partition). With a ``distributed`` client it is scattered to every worker now, not sent inside
    the graph (which warns from 10 MiB on and goes through the scheduler): a copy per worker, so
    a worker lost later does not take it along."""
    import dask

    client = current_client()
    if client is None:  # the threaded or process scheduler
        return dask.delayed(answers, pure=True)
    return dask.delayed(client.scatter(answers, broadcast=True))


def _row_hashes(data: pd.DataFrame | pd.Series) -> pd.MultiIndex:
    """Each row's identity: its index label and values, as two 64-bit hashes. Python objects are
    hashed by type and text, the same way in every partition (whatever the other rows hold)."""
    from pandas.util import hash_pandas_object

    def tagged(col: pd.Series) -> pd.Series:
        return col.map(lambda v: f"{type(v).__qualname__}:{v}") if col.dtype == object else col

    rows = tagged(data) if isinstance(data, pd.Series) else data.apply(tagged) if len(data.columns) else data

    def one(key: str) -> Any:
        try:
            return hash_pandas_object(rows, index=True, hash_key=key).to_numpy()
        except TypeError:  # a dtype pandas cannot hash (lists in an arrow column): every partition alike
            return hash_pandas_object(rows.astype(str), index=True, hash_key=key).to_numpy()

    return pd.MultiIndex.from_arrays([one(k) for k in _KEYS])


def _by_row(data: pd.DataFrame | pd.Series, result: Any) -> tuple[pd.MultiIndex, Any]:
    """``(row identities, result rows)``, one per distinct row (same index label, same values)."""
    hashes = _row_hashes(data)
    shared = hashes.duplicated(keep=False)
    if shared.any():  # rows sharing an identity must be the same row, else one would get the other's answer
        seen: dict[Any, Any] = {}
        rows = data[shared]
        for h, label, values in zip(hashes[shared], rows.index, _texts(rows), strict=True):
            if seen.setdefault(h, (label, values)) != (label, values):
                raise ConfigError(
                    f"rows {seen[h][0]!r} and {label!r} share one 64-bit row hash: the Dask partitions cannot "
                    "tell them apart. The answers are in the cache: compute the collection and call the pandas "
                    "verb with the same keywords (it pays nothing again)."
                )
    first = ~hashes.duplicated()
    return hashes[first], result.iloc[first]


def _texts(rows: pd.DataFrame | pd.Series) -> list[Any]:
    def text(v: Any) -> str:
        return f"{type(v).__qualname__}:{v!r}"

    if isinstance(rows, pd.Series):
        return [text(v) for v in rows]
    return [tuple(text(v) for v in row) for row in rows.itertuples(index=False, name=None)]


def _read(part: pd.DataFrame | pd.Series, columns: list[Any] | None, answers: tuple[pd.MultiIndex, Any]) -> Any:
    """One partition's values, copied from the driver's result by row identity (no request)."""
    hashes, result = answers
    rows = part if columns is None else part[columns]
    at = hashes.get_indexer(_row_hashes(rows))
    missing = at < 0
    if missing.any():
        labels = part.index[missing]
        shown = ", ".join(repr(x) for x in labels[:5]) + (", ..." if len(labels) > 5 else "")
        raise ConfigError(
            f"{len(labels)} of {len(part)} rows of this partition (index {shown}) were not in the Batch API job the "
            "driver ran when the verb was called: the collection computed differently since (its input "
            "changed). Nothing was sent for them; call the verb again (the answered rows come from the cache)."
        )
    out = result.iloc[at]
    out.index = part.index
    return out
