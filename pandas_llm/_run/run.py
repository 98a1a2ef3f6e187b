"""One run, end to end: plan (no spending), execute (the engine), assemble (the result).

The accessor builds a ``Run``; the sync API drives ``execute`` on the background loop,
the async API awaits it on the caller's loop. Either way the same code runs.
"""

from __future__ import annotations

import asyncio
import time
import warnings
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, cast

import numpy as np
import pandas as pd

from .._backends import make_backend
from .._config import Settings
from .._display.progress import make_observer
from .._errors import find_stack_level
from .._plan.outcomes import STATUS_MEANING, RowStatus, Unsent
from .._plan.planner import Plan, make_plan
from .._pricing import money
from .._stats import RunReport, RunStats, record_run
from .._store.leases import warn_if_network
from .._store.store import Store
from . import inflight
from .budget import Budget, ContextCheck, Meter
from .claimed import Claimed
from .engine import Engine, RetryPolicy
from .heap import frozen_heap
from .limiter import Limiter

__all__ = ["Run", "RunWarning", "answers", "unanswered_message", "unanswered_sink"]


class RunWarning(UserWarning):
    """Some rows of a run did not get an answer; the warning says how many and why."""


#: Set by a Dask partition (pandas_llm._dask.accessor): wraps each run's Limiter so the cluster shares
#: one account limit (shared_limit.py). Read when the Run is built, in the caller's thread.
limiter_wrapper: ContextVar[Callable[[Limiter], Any] | None] = ContextVar("pandas_llm_limiter_wrapper", default=None)
#: Set by a Dask partition: builds each run's Budget (``cap, meter, stats=``) so the partitions of one
#: compute share one max_cost (_dask/budget.py). Read when the Run is built, in the caller's thread.
budget_factory: ContextVar[Callable[..., Budget] | None] = ContextVar("pandas_llm_budget_factory", default=None)
#: Set by a Dask partition (_dask/cluster.py): takes the counts of the rows left without an answer
#: (status -> rows) instead of a RunWarning on the worker, whose log the user does not see; the
#: driver warns once for the whole compute (_dask/progress.py).
unanswered_sink: ContextVar[Callable[[dict[str, int]], None] | None] = ContextVar(
    "pandas_llm_unanswered_sink", default=None
)


class Run:
    """Plan at construction (raises on bad input before any request), then execute."""

    def __init__(
        self, data: pd.DataFrame | pd.Series | None, template: Any, settings: Settings, *, extra=None, validate=None,
        packing=None, plan: Plan | None = None, kind=None, finish: Callable[[Any, bool], Any] | None = None,
    ):  # fmt: skip
        """``validate``: answer text -> error or None (see Engine); ``packing``: a packing.Packer;
        ``plan``: send this plan's ``todo`` instead of planning ``data`` (the rows a packed batch
        sends again on their own, or a plan the dispatch made to choose realtime or batch);
        ``kind``: a non-chat endpoint (endpoints.py), with ``packing`` its grouping.Grouper;
        ``finish``: ``(run, details) -> result``, the verb's own assembly (else the answers as
        a string Series)."""
        self.settings = settings
        self.finish = finish
        self.validate = validate
        self.packing = packing
        self._limiter: Limiter | None = None  # one per run, shared by every engine of the run
        self._wrap_limiter = limiter_wrapper.get()
        self._context = ContextCheck.for_model(settings.model) if kind is None else None  # None: not known
        self._engines: list[Engine] = []
        self._stopping = False
        self.name = data.name if isinstance(data, pd.Series) else None
        if settings.cache_path is not None:
            warn_if_network(settings.cache_path)
        self._token = inflight.open_run()  # before reading the cache: see inflight.py
        weakref.finalize(self, inflight.close_later, self._token)  # a Run planned but never executed (batch jobs)
        try:
            self.store = Store(settings.cache_path)  # proves it can write before anything is planned
        except BaseException:
            inflight.close_run(self._token)
            raise
        try:
            if plan is None:
                plan = make_plan(data, template, settings, self.store, extra=extra, kind=kind)
            self.plan = plan
            if packing is not None:
                packing.prepare(plan, self.store)  # packed answers from the cache; narrows plan.todo
            if len(plan.todo) or settings.max_cost:  # a run's price look-up starts once its first requests are out
                self.meter = Meter.for_settings(settings, defer=True) if kind is None else kind.meter(settings)
            else:
                self.meter = None
            self.backend = make_backend(settings, kind) if len(plan.todo) else None
        except BaseException:
            inflight.close_run(self._token)
            self.store.close()
            raise
        codes = plan.codes
        sent = codes >= 0
        cached_rows = int(plan.outcomes.from_cache[codes[sent]].sum()) if len(plan.keys) else 0
        self.stats = RunStats(
            total=len(codes),
            unique=len(plan.keys),
            skipped=int((~sent).sum()),
            cached=cached_rows,
            cached_unique=int(plan.outcomes.from_cache.sum()),
            to_send=len(plan.todo),
            saved_cost=float(np.nansum(plan.outcomes.cost)),
            max_cost=settings.max_cost,
        )
        if self.meter is not None and self.meter.price_unknown():
            self.stats.cost_known = False  # tokens are shown, dollars say "price unknown"
        self.budget = (
            (budget_factory.get() or Budget)(settings.max_cost, self.meter, stats=self.stats)
            if settings.max_cost and self.meter is not None  # a cap always has a meter: see above
            else None
        )

    @property
    def rows(self) -> Plan:
        """The row plan (codes, index, outcomes) the result is assembled from."""
        return self.plan

    async def wait(self) -> None:
        """Send what the cache lacks and wait until the run ends (the ``Job`` protocol)."""
        await self.execute()

    async def execute(self, *, on_update: Callable[[RunStats], None] | None = None) -> None:
        stats = self.stats
        stats.started = time.monotonic()
        display = _Display(make_observer(self.settings.progress), stats)
        updates = [display.update] + ([on_update] if on_update else [])
        record_run(RunReport(stats, self.plan, self.packing and self.packing.report))
        try:
            if self.backend is not None:

                def notify(s: RunStats) -> None:
                    for f in updates:
                        f(s)

                def engine(**kw: Any) -> Engine | Claimed:
                    return self._claiming(lambda **more: self._engine(notify, **kw, **more))

                async def send() -> None:
                    if self.packing is None:
                        await self._send(engine)
                    else:
                        await self.packing.send(self.plan, engine)

                ticker = asyncio.ensure_future(self._tick(display))
                try:
                    with frozen_heap(stats.to_send):  # no full collection over the whole heap meanwhile
                        await self._until_stopped(asyncio.ensure_future(send()))
                finally:
                    ticker.cancel()
            else:
                display.start()
            stats.outcome = "done"
        except asyncio.CancelledError:
            stats.outcome = "interrupted"
            raise
        except BaseException as exc:  # an API stop, a dead local server, a store error, a bug in a callback
            stats.outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            raise
        finally:
            stats.finished = time.monotonic()
            unsent: Unsent = "budget" if stats.budget_reached else "deadline" if stats.deadline_reached else "stopped"
            if self.packing is not None:  # rows sent in a pack or group, not sent again before the end
                for u, record in self.packing.unanswered(unsent):
                    self.plan.outcomes.fill(u, record)
                    stats.cut_short[unsent] += 1
            n_unsent = self.plan.outcomes.mark_unsent(unsent)
            if n_unsent:
                stats.unsent[unsent] += n_unsent
            if self.backend is not None:
                await self.backend.aclose()
            if self.budget is not None:
                self.budget.close()
            display.close(stats)
            inflight.close_run(self._token)
            self.store.close()

    async def _tick(self, display: _Display, every: float = 0.25) -> None:
        """Once the first requests are out: start the price look-up and the display (both
        cost CPU, and the GIL, that the first requests should not wait for); then keep the
        display moving (ETA, in-flight, pauses) when no answer arrives for a while."""
        await _first_requests_out(self.stats)
        if self.meter is not None:
            self.meter.look_up_now()
        display.start()
        while True:
            await asyncio.sleep(every)
            display.update(self.stats)

    async def _until_stopped(self, task: asyncio.Future) -> None:
        """Await ``task``; the first cancel stops sending and lets the requests in flight
        finish and commit (their answers are paid for), a second abandons them at once."""
        while True:
            try:
                await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done() and task.cancelled() or self._stopping:
                    task.cancel()
                    await asyncio.wait([task])  # the engine commits what it holds, then ends
                    raise
                self._stopping = True
                for e in self._engines:
                    e.stop()
        if self._stopping:
            raise asyncio.CancelledError

    async def _send(self, engine: Callable[..., Any]) -> None:
        """Send the plan's requests (claimed first when there is a cache file: see ``_claiming``)."""
        await engine().run(self.plan.jobs())

    def _claiming(self, make: Callable[..., Engine]) -> Engine | Claimed:
        """An engine, or with a cache file one that claims each request first (claimed.py), so
        another process on the same file does not pay for it too and this run waits for the
        ones it claimed."""
        if self.store.path is None:
            return make()
        plan, stats, deadline = self.plan, self.stats, self.settings.deadline
        rows_of: list[Any] = []

        def on_cached(job: Any, record: Any) -> None:  # a plain request answered by another process
            u = job[0]
            if not rows_of:
                rows_of.append(np.bincount(plan.codes[plan.codes >= 0], minlength=len(plan.keys)))
            plan.outcomes.fill(u, record, from_cache=True)
            stats.cached_unique += 1
            stats.cached += int(rows_of[0][u])
            stats.to_send -= 1
            stats.saved_cost += record.cost or 0.0

        def stop() -> bool:
            if deadline is not None and time.monotonic() - stats.started > deadline:
                stats.deadline_reached = True
            return stats.budget_reached or stats.deadline_reached or self._stopping

        return Claimed(make, self.store, on_cached, chunk=max(64, 2 * self.settings.concurrency), stop=stop)

    def _engine(self, on_update: Callable[[RunStats], None], **overrides: Any) -> Engine:
        backend, meter = self.backend, self.meter
        assert backend is not None and meter is not None, "an engine is built only when there is something to send"
        s = self.settings
        outcomes = self.plan.outcomes
        options: dict[str, Any] = dict(
            on_result=outcomes.fill,
            on_shared=outcomes.paid_elsewhere,
            validate=self.validate,
            invalid_retries=s.invalid_retries,
        )
        options.update(overrides)
        if self._limiter is None:
            self._limiter = Limiter.for_settings(s)
            if self._wrap_limiter is not None:
                self._limiter = self._wrap_limiter(self._limiter)
        plan = self.plan
        engine = Engine(
            backend=backend,
            store=self.store,
            stats=self.stats,
            concurrency=s.concurrency,
            retry=RetryPolicy(max_attempts=s.max_attempts, deadline=s.deadline),
            limiter=self._limiter,
            on_update=on_update,
            model=s.model,
            **options,
            cost=meter.cost,
            price_pending=meter.pending,
            budget=self.budget,
            worst_case=meter.lost,
            too_long=self._context.error if self._context is not None else None,
            token=self._token,
            everything=lambda: plan.outcomes.records(plan.keys, s.model),
        )
        self._engines.append(engine)
        if self._stopping:
            engine.stop()
        return engine

    def result(self, *, details: bool = False) -> Any:
        """The verb's result once the run has ended: the answers as a string Series aligned to
        the input (or what ``finish`` assembles); ``details=True``: per-row details."""
        if self.finish is not None:
            return self.finish(self, details)
        self.warn()
        return answers(self.plan, self.name, details)

    def warn(self) -> None:
        """One RunWarning for the rows without an answer (and the cache's troubles)."""
        stats = self.stats
        for note in stats.store_notes:
            warnings.warn(note, RunWarning, stacklevel=find_stack_level())
        if self.meter is not None and self.meter.note is not None:  # the price look-up failed
            warnings.warn(self.meter.note, RunWarning, stacklevel=find_stack_level())
        if stats.store_error is not None:
            warnings.warn(
                f"{stats.unsaved:,} answers are in this result but NOT in the cache file: "
                f"{type(stats.store_error).__name__}: {stats.store_error} Keep this result: running "
                "the call again would pay for them again.",
                RunWarning,
                stacklevel=find_stack_level(),
            )
        budget = ""
        if self.settings.max_cost is not None:
            budget = (
                f". max_cost={money(self.settings.max_cost)} stopped the run after {money(self.stats.cost)}"
                + (f" (and up to {money(self.stats.possibly_billed)} possibly billed for {self.stats.lost_answers} "
                   "answers lost to timeouts)" if self.stats.lost_answers else "")
                + " (raise max_cost, or set max_tokens for a tighter worst case per request)"
            )  # fmt: skip
        deadline = ""
        if self.stats.deadline_reached or self.stats.cut_short["deadline"]:  # or a retry it cut short
            deadline = f". deadline={self.settings.deadline:g} s stopped the sending" + (
                f": {self.stats.stop_note.rstrip('.')}" if self.stats.stop_note else ""
            )
        warn_failures(self.plan, self.stats.total, budget_note=budget, deadline_note=deadline)


def answers(plan: Plan, name: Any, details: bool) -> pd.Series | pd.DataFrame:
    """The answers as a string Series aligned to the input, or the per-row details."""
    if details:
        return plan.outcomes.details(plan.codes, plan.index)
    return plan.outcomes.series(plan.codes, plan.index, name=name)


def warn_failures(
    plan: Plan, total: int, *, budget_note: str = "", resend: str = "retries", deadline_note: str = ""
) -> None:
    """One RunWarning counting the rows without an answer by kind, pointing at the caller's line
    (in a Dask partition the counts go to the driver instead: ``unanswered_sink``)."""
    counts = plan.outcomes.row_status_counts(plan.codes)
    bad = {k: v for k, v in counts.items() if k not in ("ok", "skipped")}
    if not bad:
        return
    sink = unanswered_sink.get()
    if sink is not None:
        sink(bad)
        return
    warnings.warn(
        unanswered_message(bad, total, budget_note=budget_note, deadline_note=deadline_note, resend=resend),
        RunWarning,
        stacklevel=find_stack_level(),
    )


def unanswered_message(
    bad: dict[str, int], total: int, *, budget_note: str = "", deadline_note: str = "", resend: str = "retries",
    see: str = "see pandas_llm.last_run().failures (or pass details=True)", again: str = "Running the same call again",
) -> str:  # fmt: skip
    """The RunWarning's text for ``bad`` (status -> rows without an answer) of ``total`` rows."""
    kinds = ", ".join(
        f"{n} {k} ({STATUS_MEANING.get(cast(RowStatus, k), k)})" for k, n in sorted(bad.items(), key=lambda kv: -kv[1])
    )
    if "budget" in bad:
        kinds += budget_note
    if "deadline" in bad:
        kinds += deadline_note
    rerun = f"{again} {resend} only these rows; answered rows come from the cache."
    if "too_long" in bad:  # a rerun cannot fix these
        rerun = ("Rows too_long need a shorter input or a model with a larger context window; "
                 + (f"{again.lower()} {resend} only the others." if len(bad) > 1 else "a rerun will not fix them."))  # fmt: skip
    return f"{sum(bad.values())} of {total} rows have no answer: {kinds}. Their values are NA; {see}. {rerun}"


class _Display:
    """A run's observers, started once its first requests are out (``start``), or at the
    first update or the close if those come first: every observer sees the whole run."""

    def __init__(self, observer: Any, stats: RunStats):
        self.observer = observer
        self.stats = stats
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.observer.start(self.stats)

    def update(self, stats: RunStats) -> None:
        if not self.started:
            self.start()
        self.observer.update(stats)

    def close(self, stats: RunStats) -> None:
        self.start()
        self.observer.close(stats)


async def _first_requests_out(stats: RunStats, *, quiet: float = 0.002, most: float = 0.25) -> None:
    """Return once requests are in flight and the event loop is idle (a ``quiet`` s timer fires
    within half of it: the first requests are written, their answers not back), or after ``most`` s."""
    clock = time.perf_counter
    end = clock() + most
    while True:
        before = clock()
        await asyncio.sleep(quiet)
        now = clock()
        if now >= end or (stats.in_flight and now - before < 1.5 * quiet):
            return
