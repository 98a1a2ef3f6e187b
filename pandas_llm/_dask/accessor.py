"""``ddf.llm`` on Dask DataFrames and Series: the pandas verbs, run by every partition.

    import pandas_llm, dask.dataframe as dd
    ddf = dd.from_pandas(df, npartitions=8)
    out = ddf.llm.map("Translate to French: {text}", model="gpt-4o-mini")  # lazy
    out.compute()                                                          # sends

``map``, ``extract`` and ``classify`` take the same keywords as on pandas and return a
lazy Dask Series / DataFrame aligned to the partitions' index; its ``meta`` (dtypes,
columns, categories) comes from running the pandas verb on the empty ``meta`` frame, so
it is exactly what a partition returns and no request is sent to know it (a bad template
or keyword fails here, at once). ``estimate`` is eager; so is ``mode="batch"`` (and ``"auto"``
choosing batch): one Batch API job for the whole collection, run on the driver (batch.py).

Each partition runs the pandas engine on its worker with the settings in force on the
driver when the verb was called (``configure()`` / ``with settings()`` / keywords), the
cache path made absolute, and no progress display on the workers: the partitions report
to the driver, which shows one display for the compute and makes ``last_run()`` its sum,
and ``max_cost`` is one cap for all the partitions of the verb call (cluster.py).

Registration: importing pandas_llm does not import Dask (it takes seconds); the accessor
is registered as soon as ``dask.dataframe`` is imported, before or after pandas_llm.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import os
import sys
import threading
from typing import Any

import pandas as pd

from .._config import Settings, _defaults, current_settings
from .._stats import unrecorded
from .cluster import open_call, partition_scope
from .computes import watch
from .events import current_client
from .progress import settle
from .records import Home, home, on_worker

__all__ = ["DaskLLMAccessor", "install"]


class DaskLLMAccessor:
    """``ddf.llm`` / ``dseries.llm``: the pandas verbs, lazily, one run per partition.

    ``mode="batch"`` (or ``"auto"`` choosing batch) runs one Batch API job for the whole
    collection on the driver when the verb is called, and returns the same lazy collection,
    whose partitions copy its answers without sending anything (see ``_dask/batch.py``)."""

    def __init__(self, obj: Any):
        self._obj = obj

    def map(self, template: Any, *, schema: Any = None, details: bool = False, **options: Any) -> Any:
        """Lazy :meth:`pandas_llm.LLMAccessor.map`: a Dask Series of strings (or the details
        DataFrame), one value per row, aligned to the partitions' index."""
        return self._lazy("map", template, {"schema": schema, "details": details}, options)

    def extract(self, template: Any, schema: Any, *, flatten: bool | str = False, details: bool = False,
                **options: Any) -> Any:  # fmt: skip
        """Lazy :meth:`pandas_llm.LLMAccessor.extract`: a Dask DataFrame, one typed column per field."""
        return self._lazy("extract", template, {"schema": schema, "flatten": flatten, "details": details}, options)

    def classify(self, template: Any, labels: Any, *, multi: bool = False, reasons: bool = False,
                 details: bool = False, **options: Any) -> Any:  # fmt: skip
        """Lazy :meth:`pandas_llm.LLMAccessor.classify`: a categorical Dask Series of the labels."""
        verb_kw = {"labels": labels, "multi": multi, "reasons": reasons, "details": details}
        return self._lazy("classify", template, verb_kw, options)

    def estimate(self, template: Any, *, sample: int | None = None, output_tokens: int | None = None,
                 seed: int | None = None, **options: Any) -> Any:  # fmt: skip
        """Eager :meth:`pandas_llm.LLMAccessor.estimate` over the whole collection.

        The template's columns (all columns for a function template) are computed and
        brought to the driver, then estimated as one pandas frame: dedup across partitions
        and ``sample=`` are exact. Returns an ``Estimate``."""
        from .._accessor import LLMAccessor
        from .._plan.prompts import compile_template

        settings = _driver_settings(options)
        obj = self._obj
        if not _is_series(obj) and not callable(template):
            columns = list(compile_template(template, [str(c) for c in obj.columns], series=False).columns)
            obj = obj[[c for c in obj.columns if str(c) in columns]]
        data = obj.compute()
        token = _defaults.set(settings)
        try:
            return LLMAccessor(data).estimate(template, sample=sample, output_tokens=output_tokens, seed=seed)
        finally:
            _defaults.reset(token)

    def _lazy(self, verb: str, template: Any, verb_kw: dict[str, Any], options: dict[str, Any]) -> Any:
        settings = _driver_settings(options)
        meta_settings = dataclasses.replace(
            settings, cache=False, mode="realtime"
        )  # max_cost kept: its checks fail here
        with unrecorded():  # an empty run: last_run() stays the last real one
            meta = _partition(self._obj._meta, verb, template, verb_kw, meta_settings)
        if settings.mode != "realtime":
            from .batch import batch_answers

            out = batch_answers(self._obj, verb, template, verb_kw, options, meta)  # one job, on the driver
            if out is not None:
                return out
            settings = dataclasses.replace(settings, mode="realtime")  # mode="auto" chose realtime
        watch(settle)  # where a local compute ends (computes.py): its reports end there
        account = _cluster_limit(settings)
        where = home(settings.cache_path)  # the driver's sidecar, receiving what other hosts pay
        call = open_call(self._obj.npartitions, options, settings, remote=account is not None, verb=verb,
                         template=template)  # fmt: skip
        return self._obj.map_partitions(_partition, verb, template, verb_kw, settings, account, where, call,
                                        meta=meta)  # fmt: skip


def _is_series(obj: Any) -> bool:
    return isinstance(getattr(obj, "_meta", None), pd.Series)


def _driver_settings(options: dict[str, Any]) -> Settings:
    """The driver's settings for this call, as the workers will use them."""
    settings = current_settings().merged(**options)
    path = settings.cache_path
    cache: Any = False if path is None else os.path.abspath(path)  # the workers' cwd may differ
    if path is not None:
        from .._store.leases import warn_if_network

        warn_if_network(cache)
    return dataclasses.replace(settings, cache=cache, progress=False, prices=_priced(settings))


def _priced(settings: Settings) -> Any:
    """``prices`` with the model's table price looked up here, once: every worker process would
    otherwise import and read the price table (~0.3 s of CPU each) as its first answers arrive."""
    from .._pricing import Price, price_for

    prices = settings.prices
    if isinstance(prices, Price) or (prices is not None and settings.model in prices):
        return prices
    price = price_for(settings.model)
    return prices if price is None else {**(prices or {}), settings.model: price}


def _partition(part: Any, verb: str, template: Any, verb_kw: dict[str, Any], settings: Settings,
               account: str | None = None, where: Home | None = None, call: Any = None,
               partition_info: Any = None) -> Any:  # fmt: skip
    """One partition's run, on its worker, with the driver's settings and the shared limit; on
    another host than the driver's, with a local sidecar whose records go to the driver's (records.py);
    the call's max_cost and progress reported to the driver (cluster.py)."""
    from .._accessor import LLMAccessor
    from .._run.run import limiter_wrapper

    with partition_scope(call, partition_info, settings) as settings, \
            on_worker(where if len(part) else None, settings) as settings:  # fmt: skip
        token = _defaults.set(settings)
        wrap = limiter_wrapper.set(_shared_limit(settings, account) if len(part) else None)
        try:
            return getattr(LLMAccessor(part), verb)(template, **verb_kw)
        finally:
            limiter_wrapper.reset(wrap)
            _defaults.reset(token)


# ---- one account limit for the cluster (shared_limit.py) ---------------------------------


def _account(settings: Settings) -> tuple[str, str]:
    return settings.endpoint, settings.model


def _cluster_limit(settings: Settings) -> str | None:
    """The account's name for the coordinator on the driver's distributed scheduler (whose
    plugin is installed there once), or None without a distributed client."""
    client = current_client()
    if client is None:
        return None  # partitions share an in-process coordinator
    from .coordinator import ensure_plugin

    ensure_plugin(client)
    return "\0".join(_account(settings))


def _shared_limit(settings: Settings, account: str | None) -> Any:
    """A Limiter -> SharedLimiter wrapper reaching the account's coordinator."""
    from .limit import SharedLimiter, local_coordinator

    remote = None
    if account is not None:
        from .coordinator import remote_coordinator

        remote = remote_coordinator(account)  # None: computed without a distributed worker
    ask, pause = remote if remote is not None else local_coordinator(_account(settings))
    return lambda inner: SharedLimiter(inner, ask, pause, rpm=settings.rpm, tpm=settings.tpm)


# ---- registration -------------------------------------------------------------------------

_registered = False
_lock = threading.Lock()


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        from dask.dataframe.extensions import register_dataframe_accessor, register_series_accessor

        register_dataframe_accessor("llm")(DaskLLMAccessor)
        register_series_accessor("llm")(DaskLLMAccessor)
        _registered = True


class _WhenImported(importlib.abc.MetaPathFinder):
    """Registers the accessor right after ``dask.dataframe`` is imported (it is not ours to import:
    ~3 s), by wrapping that one module's ``exec_module``; then steps out of ``sys.meta_path``."""

    _busy = False

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "dask.dataframe" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _uninstall_hook()
            _register()

        loader.exec_module = exec_module  # this loader object serves this one module only
        return spec


_hook: _WhenImported | None = None


def _uninstall_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def install() -> None:
    """Register ``ddf.llm`` now if Dask's DataFrame is imported, else when it is (no-op without Dask)."""
    global _hook
    if "dask.dataframe" in sys.modules and hasattr(sys.modules["dask.dataframe"], "DataFrame"):
        _register()
        return
    if _hook is not None or importlib.util.find_spec("dask") is None:
        return
    _hook = _WhenImported()
    sys.meta_path.insert(0, _hook)
