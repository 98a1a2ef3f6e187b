"""Batch API jobs: submit, poll, collect, resumable across kernel restarts.

``df.llm.submit(...)`` returns a ``BatchJob`` at once; ``df.llm.map(..., mode="batch")``
submits and waits with progress. A job sends only the requests not in the cache
(identical prompts once), split into batches by ``batch_limits``, and records every
batch in the sidecar (ledger.py) before anything else can fail. Running the same call
again, in this process or after a restart, finds the batches still in flight through
the sidecar by request key, re-attaches to them instead of submitting them again, and
collects their results::

    >>> import pandas as pd, pandas_llm, tempfile, os
    >>> from pandas_llm.testing import LLMServer
    >>> df = pd.DataFrame({"text": ["cat", "dog", "cat"]})
    >>> with LLMServer() as srv, tempfile.TemporaryDirectory() as tmp:
    ...     opts = dict(base_url=srv.base_url, api_key="x", cache=os.path.join(tmp, "c.sqlite"),
    ...                 progress=False, poll_interval=0.01)
    ...     job = df.llm.submit("Say: {text}", **opts)
    ...     out = job.result()
    ...     again = df.llm.map("Say: {text}", mode="batch", **opts)   # all from the cache now
    >>> out.tolist(), srv.batches.batches_created, srv.batches.lines_answered
    (['echo: Say: cat', 'echo: Say: dog', 'echo: Say: cat'], 1, 2)

Results are written to the cache as each output file is parsed; lines in the error file
and failed requests become failed rows with their error (a rerun sends them again);
expired or cancelled batches keep what they answered and leave the rest for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from .._config import Settings
from .._display.progress import make_observer
from .._errors import APIError, FatalAPIError
from .._plan.planner import Plan
from .._pricing import resolve_price
from .._run import loop as _runner
from .._run import run as _pipeline
from .._run.budget import Budget, Meter
from .._stats import RunReport, record_run
from .._store.ledger import Ledger
from .._store.store import Record, Store
from .client import BatchAPI
from .collect import Collector
from .files import PartData
from .status import BatchProgress, BatchStats, BatchStatus, JobState
from .submit import Submitter

__all__ = ["BatchJob"]

log = logging.getLogger("pandas_llm")

TERMINAL = ("completed", "failed", "expired", "cancelled")
_BACKOFF, _CAP = 1.5, 12  # poll waits grow 1.5x while nothing changes, up to 12x poll_interval


class BatchJob(Submitter):
    """A Batch API job over one frame: ``status()``, ``result()``, ``cancel()`` (and ``a*`` twins).

    Hold on to it, or run the same ``submit`` / ``map(mode="batch")`` call again later:
    the sidecar knows the batches in flight. Methods are not meant to be called
    concurrently on one job.

    ``validate``: answer text -> error or None (a schema's check, see collect.py);
    ``finish``: ``(job, details) -> result``, the verb's own result assembly (extract,
    classify, schema=, embed), else the answers as a string Series.
    """

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        *,
        name: Any = None,
        validate: Callable[[str | None], str | None] | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        kind: Any = None,
        finish: Callable[[Any, bool], Any] | None = None,
    ):
        self.plan = plan
        self.rows = plan  # the row plan the result is assembled from (a packed job's differs)
        self.kind = kind  # a list-input endpoint (endpoints.py): one input per line, its url and reader
        self.finish = finish
        self.settings = settings
        self.name = name
        self.id = uuid.uuid4().hex[:16]
        self.sleep = sleep
        codes = plan.codes
        sent = codes >= 0
        self.stats = BatchStats(
            total=len(codes),
            unique=len(plan.keys),
            skipped=int((~sent).sum()),
            cached=int(plan.outcomes.from_cache[codes[sent]].sum()) if len(plan.keys) else 0,
            cached_unique=int(plan.outcomes.from_cache.sum()),
            to_send=len(plan.todo),
            saved_cost=float(np.nansum(plan.outcomes.cost)),
        )
        self._parts: list[str] = []
        self._pending: Iterator[PartData] | None = None
        self._next: PartData | None = None
        self._submitted = False
        self._cancelled = False
        self._finished = False
        self._waited = False  # wait() ran to its end: result() has nothing more to wait for
        self._mem_store: Store | None = None  # cache=False: one in-memory sidecar for the job's life
        #: max_cost: worst cases reserved at batch rates, settled as batches are collected
        self._budget = Budget(settings.max_cost, Meter.for_settings(settings, batch=True), stats=self.stats) \
            if settings.max_cost is not None else None  # fmt: skip
        self.stats.max_cost = settings.max_cost
        self._held: dict[bytes, float] = {}  # request key -> its reservation
        self._too_long: list[Record] = []  # prompts over the context window, not uploaded
        self._over: Iterator[tuple[int, bytes, bytes]] | None = None  # requests waiting for the budget
        self._collector = Collector(plan, self.stats, model=settings.model, endpoint=settings.endpoint,
                                    price=resolve_price(settings.model, settings.prices) if kind is None else
                                    kind.meter(settings).price, validate=validate,
                                    tools="tools" in settings.params or "tools" in settings.extra_body,
                                    answer=None if kind is None else kind.judge)  # fmt: skip

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<BatchJob {self.id}: {s.phase}, {s.to_send} of {s.unique} requests to send, {len(self._parts)} batches>"
        )

    def _repr_html_(self) -> str:
        return self._snapshot()._repr_html_()  # as of the last call; status() polls

    # -- the sync API -------------------------------------------------------------------------
    def submit(self) -> BatchJob:
        """Send the requests not cached and not already in flight; returns at once."""
        _runner.run_sync(self.asubmit)
        return self

    def status(self) -> BatchStatus:
        """Poll every batch once, collect the finished ones into the cache (and send parts
        the token budget now allows), return a snapshot. Renders as a table in a notebook."""
        return _runner.run_sync(self.astatus)

    def result(self, *, details: bool = False) -> pd.Series | pd.DataFrame:
        """Wait (with progress) until every batch is finished and collected; the answers as a
        Series aligned to the frame, or what the verb returns (classify's categorical,
        extract's typed columns; ``details=True`` adds per-row status, error, tokens, cost)."""
        if not self._waited:
            _runner.run_sync(self.wait)
        return self._result(details)

    def cancel(self) -> BatchStatus:
        """Cancel the batches in flight and drop the ones not sent yet. ``result()`` then
        collects what they answered; a rerun sends the rest."""
        return _runner.run_sync(self.acancel)

    # -- the async API --------------------------------------------------------------------------
    async def asubmit(self) -> BatchJob:
        async with self._session() as (ledger, api):
            await self._submit(ledger, api)
        return self

    async def astatus(self) -> BatchStatus:
        async with self._session() as (ledger, api):
            await self._submit(ledger, api)
            await self._refresh(ledger, api)
        return self._snapshot()

    async def aresult(self, *, details: bool = False) -> pd.Series | pd.DataFrame:
        await self.wait()
        return self._result(details)

    async def wait(self) -> None:
        """Submit if needed and wait until every batch is collected (the ``Job`` protocol)."""
        await self.await_done()
        self._waited = True

    async def acancel(self) -> BatchStatus:
        async with self._session() as (ledger, api):
            self._cancelled = True
            self._pending, self._next = None, None
            self.stats.queued = 0
            async for pid, p in self._open_parts(ledger, api):
                if p.state in ("validating", "in_progress", "finalizing"):
                    info = await api.cancel(p.batch_id)
                    ledger.update(pid, info)
                    log.info("pandas-llm: cancelling batch %s", p.batch_id)
            await self._refresh(ledger, api)
        return self._snapshot()

    async def await_done(self) -> None:
        """Submit if needed, then poll with backoff until every batch is collected."""
        if self._finished:
            return
        settings = self.settings
        progress = settings.progress
        observer = make_observer(
            BatchProgress(text=progress == "text") if progress is True or progress == "text" else progress
        )
        stats = self.stats
        record_run(RunReport(stats, self.plan))
        observer.start(stats)
        interval = settings.poll_interval
        try:
            async with self._session() as (ledger, api):
                await self._submit(ledger, api)
                while True:
                    before = self._fingerprint()
                    await self._refresh(ledger, api)
                    observer.update(stats)
                    if self._finished:
                        break
                    changed = self._fingerprint() != before
                    interval = (
                        settings.poll_interval if changed else min(interval * _BACKOFF, _CAP * settings.poll_interval)
                    )
                    await self.sleep(interval)
            stats.outcome = "done"
        except asyncio.CancelledError:
            stats.outcome = "interrupted"
            log.info("pandas-llm: stopped waiting; the batches keep running at the API and are recorded in the "
                     "sidecar: run the same call again to collect them (or job.cancel())")  # fmt: skip
            raise
        except BaseException as exc:  # an API stop, a store error, a bug in a callback
            stats.outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            raise
        finally:
            stats.finished = time.monotonic()
            observer.close(stats)

    # -- internals ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[tuple[Ledger, BatchAPI]]:
        path = self.settings.cache_path
        if path is None:
            self._mem_store = self._mem_store or Store(None)
            store = self._mem_store
        else:
            store = Store(path)
        try:
            async with BatchAPI(self.settings, sleep=self.sleep) as api:
                yield Ledger(store), api
        except APIError as exc:
            if not isinstance(exc, FatalAPIError) and path is not None:  # a fault that outlived the retries
                exc.add_note(
                    "Every batch created so far is recorded in the cache file: run the same call again to "
                    "resume (nothing is submitted twice), or pass mode='realtime'."
                )
            raise
        finally:
            if path is not None:
                store.close()
            elif self._finished and self._mem_store is not None:
                self._mem_store.close()
                self._mem_store = None

    def _fingerprint(self) -> tuple:
        return tuple((p.part, p.state, p.completed, p.failed) for p in self.stats.parts), self._next is None

    async def _open_parts(self, ledger: Ledger, api: BatchAPI) -> AsyncIterator[tuple[str, Any]]:
        """This job's parts still open at the API, each with a batch id (a part whose id was
        lost or never created is resumed first; one that cannot be is skipped)."""
        for pid in list(self._parts):
            p = ledger.part(pid)
            if p is None or not p.open:
                continue
            if p.batch_id is None:
                p = await self._resume(ledger, api, p)
                if p is None or p.batch_id is None:
                    continue
            yield pid, p

    async def _refresh(self, ledger: Ledger, api: BatchAPI) -> None:
        """Poll each open part once, collect the finished ones, send what the budget now allows."""
        async for pid, p in self._open_parts(ledger, api):
            try:
                info = await api.retrieve(p.batch_id)
                if (info.status, info.completed, info.failed) != (p.state, p.completed, p.failed):
                    ledger.update(pid, info)
                if info.status in TERMINAL:
                    keys = ledger.keys_of(pid) if self._held else ()  # (collecting forgets them)
                    await self._collector.collect(ledger, api, pid, info)
                    self._settle(keys)
                    await api.discard(info.input_file_id)  # its results are in the cache: the input is spent
            except FatalAPIError as exc:
                if exc.status != 404:
                    raise
                # The API no longer knows the batch or its output file (deleted, expired after
                # 30 days, another account): nothing more can come from it.
                self._abandon(ledger, pid, "lost", f"batch {p.batch_id} or its files are gone (HTTP 404)")
        if not self._cancelled:
            await self._send_more(ledger, api)
        self.stats.parts = [p for p in (ledger.part(pid) for pid in self._parts) if p is not None]
        if self._pending is None and not any(p.open for p in self.stats.parts):
            self._finish(ledger)

    def _finish(self, ledger: Ledger) -> None:
        """Every batch is collected: fill what other processes collected, label the rest."""
        over_budget = self._budget is not None and self._budget.exhausted
        self._collector.finish(
            ledger.store, unsent="cancelled" if self._cancelled else "budget" if over_budget else "stopped"
        )
        self._finished = True
        self.stats.phase = "cancelled" if self._cancelled else "done"
        if self.stats.outcome == "running":  # finished by status() or cancel(): wait() will not run its loop
            self.stats.outcome = "done"
            self.stats.finished = time.monotonic()

    def _snapshot(self) -> BatchStatus:
        s = self.stats
        state: JobState
        if not self._finished:
            state = "submitting" if not self._submitted else "in_progress"
        elif self._cancelled:
            state = "cancelled"
        else:
            state = "done" if s.ok == s.to_send else "partial"
        return BatchStatus(self.id, state, s)

    def _result(self, details: bool) -> Any:
        if self.finish is not None:
            return self.finish(self, details)
        self.warn()
        return _pipeline.answers(self.rows, self.name, details)

    def warn(self) -> None:
        """Make this job what ``last_run()`` reports; one RunWarning for the rows without an answer."""
        record_run(RunReport(self.stats, self.rows, self._packing_report()))
        _pipeline.warn_failures(self.rows, self.stats.total, resend="submits")

    def _packing_report(self) -> Any:
        return None
