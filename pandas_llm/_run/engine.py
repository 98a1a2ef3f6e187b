"""The async engine: a fixed pool of workers, the limiter, retries, commits, events.

Workers pull jobs from one shared lazy iterator (never one task per row), so in-flight
state is O(concurrency) whatever the frame's size. Each answer is handed to the commit
thread as soon as it is idle (batched only while it is busy: committer.py) and only
counted as done once committed, so a killed process loses the requests in flight and
at most the answers of the commit under way. While commits fail nothing new is sent.
A request another run of this process has in flight is awaited, not sent (inflight.py).

Stopping (``stop()``: the first Ctrl-C, Jupyter's stop button, a first cancel of
``amap``) sends nothing new and lets the requests already sent finish (within their
timeout), so their answers, already paid for, are committed; cancelling the run
abandons them at once.

Sending one job (the limiter, retries, the deadline, a dead endpoint, validation) is
send.py; judging an answer judge.py; the retry policy retry.py.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from .._backends import Backend, Completion
from .._errors import FatalAPIError, LocalServerError, PandasLLMError, StoreError
from .._stats import RunStats
from .._store.committer import Committer
from .._store.store import Record, Store
from . import inflight
from .limiter import Limiter
from .retry import Health, RetryPolicy
from .send import CUT_SHORT, UNSENT, Job, Sending
from .stopping import ShapeWatch

__all__ = ["Engine", "Job", "RetryPolicy"]

#: What stops a whole run (recorded in Engine._fatal, re-raised once the others have stopped).
_STOPS = (FatalAPIError, LocalServerError)
_DEFAULT_RETRY = RetryPolicy()


class Engine(Sending):
    """Runs jobs through a backend with bounded concurrency and commits each result."""

    def __init__(
        self,
        *,
        backend: Backend,
        store: Store,
        stats: RunStats,
        concurrency: int,
        retry: RetryPolicy = _DEFAULT_RETRY,
        limiter: Limiter | None = None,
        cost: Callable[[Completion], float | None] = lambda c: None,
        price_pending: Callable[[], Future | None] = lambda: None,
        reserve_tokens: Callable[[bytes], int] | None = None,  # default: the limiter's estimate
        on_result: Callable[[int, Record], None] = lambda u, r: None,
        on_shared: Callable[[int], None] = lambda u: None,
        on_commit: Callable[[Sequence[tuple[int | None, Record]]], None] | None = None,
        on_update: Callable[[RunStats], None] = lambda s: None,
        model: str | None = None,
        validate: Callable[[str | None], str | None] | None = None,
        invalid_retries: int = 2,
        budget: Any = None,
        worst_case: Callable[[bytes], float] = lambda body: 0.0,
        too_long: Callable[[bytes], str | None] | None = None,
        split: Callable[[Job, Record], list[tuple[int | None, Record]]] | None = None,
        shape: ShapeWatch | None = None,
        flush_size: int = 256,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        everything: Callable[[], list[Record]] | None = None,
        token: int | None = None,
    ):
        self.backend = backend
        self.store = store
        self.stats = stats
        self.concurrency = concurrency
        self.retry = retry
        self._health = Health()  # the server's recent failures: how far a row's backoff doubles
        self.limiter = limiter or Limiter(clock=clock, sleep=sleep)
        self.cost = cost
        self.price_pending = price_pending  # the price look-up under way: answers await it, the loop runs on
        self.reserve_tokens = reserve_tokens
        self.on_result = on_result
        # after on_result, for a row another run of this process paid for (inflight.py)
        self.on_shared = on_shared
        self._shared: set[bytes] = set()  # keys of those rows, until committed
        self.on_commit = on_commit  # every committed batch, stored-only records too (claimed.py)
        self.on_update = on_update
        self.model = model
        self.validate = validate
        self.invalid_retries = invalid_retries
        self.budget = budget  # budget.Budget: reserves each request's worst case (max_cost)
        self.worst_case = worst_case  # USD a lost answer may have been billed (budget.Meter.lost)
        self.too_long = too_long  # body -> why it cannot fit the context window (budget.ContextCheck)
        self.split = split  # a request's record -> one record per row (grouping.py, packing.py)
        self.flush_size = flush_size
        self.clock = clock
        self.sleep = sleep
        self._buffer: list[tuple[int | None, Record]] = []
        self._flush_soon = False
        self._committer = Committer(
            store, self._count, on_idle=self.flush, on_trouble=self._store_trouble, on_lost=self._not_on_disk,
            everything=everything, on_replaced=self._replaced,
        )  # fmt: skip
        self._fatal: PandasLLMError | None = None  # FatalAPIError, or LocalServerError (it died)
        self._stop = False
        self._heard = 0  # answers of any kind (any HTTP status) from the endpoint so far
        self._shape = shape or ShapeWatch()  # grouping.py shares one across its rounds
        self._token = token
        self._workers: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task] = set()  # workers with a request in flight (kept at a halt or stop)
        self._parked: set[asyncio.Task] = set()  # workers cancelled by stop(): they return quietly

    def stop(self) -> None:
        """Send nothing new; let the requests in flight finish and commit (at most their timeout)."""
        self._stop = True
        self.stats.stopping = True
        for w in self._workers:
            if w not in self._sending and not w.done():
                self._parked.add(w)
                w.cancel()

    async def run(self, jobs: Iterable[Job]) -> None:
        """Send every job; return when all are settled. Raises FatalAPIError (or LocalServerError:
        the local server died) if the run had to stop."""
        # never more workers than requests to send (concurrency=10**6 for 20 rows: 20 tasks)
        n = self.concurrency
        hint = operator.length_hint(jobs, -1)
        if hint >= 0:
            n = max(1, min(n, hint))
        it = iter(jobs)
        own_token = self._token is None
        if own_token:
            self._token = inflight.open_run()
        self._workers = workers = [asyncio.ensure_future(self._worker(it)) for _ in range(n)]
        watch = None if self.retry.deadline is None else asyncio.ensure_future(self._watch_deadline())
        if self._stop:
            self.stop()
        try:
            await self._settled(workers)
        except _STOPS:
            pass  # recorded in self._fatal; siblings cancelled below
        finally:
            if watch is not None:
                watch.cancel()
            for w in workers:
                w.cancel()
            again = False
            try:
                await asyncio.gather(*workers, return_exceptions=True)
            except asyncio.CancelledError:
                again = True  # a second Ctrl-C: the answers in hand are still committed
            self.flush()
            try:
                await self._committer.drain()  # holds a cancel until its writes are done
            except asyncio.CancelledError:
                again = True
            if own_token:
                inflight.close_run(self._token)  # type: ignore[arg-type]
            if again:
                raise asyncio.CancelledError
        if self._committer.error is not None:
            raise self._committer.error
        if self._fatal is not None:
            raise self._fatal

    async def _settled(self, workers: list[asyncio.Task[None]]) -> None:
        """Wait for every worker; raise the first error one raises. A worker cancelled by
        ``stop()`` or at the deadline is done, not cancelled: one cancelled before its first
        step (a deadline of microseconds, a stop before the run began) never ran the code
        that returns quietly, and gather would take it for a cancel of the whole run."""
        pending: set[asyncio.Task[None]] = set(workers)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.cancelled():
                    if self._quiet(task):
                        continue
                    raise asyncio.CancelledError
                exc = task.exception()
                if exc is not None:
                    raise exc

    async def _worker(self, jobs: Iterator[Job]) -> None:
        try:
            await self._work(jobs)
        except asyncio.CancelledError:
            if not self._stopped_quietly():
                raise

    def _stopped_quietly(self) -> bool:
        """In a worker that was just cancelled: True (and the cancel is consumed) if it was
        cancelled by ``stop()`` or woken at the deadline, not by a cancel of the run."""
        task = asyncio.current_task()
        if not self._quiet(task):
            return False
        task.uncancel()  # type: ignore[union-attr]
        return True

    def _quiet(self, task: Any) -> bool:
        """Whether a cancel of worker ``task`` is a stop (``stop()``, the deadline), not a cancel of the run."""
        return self._fatal is None and (task in self._parked or self.stats.deadline_reached)

    async def _work(self, jobs: Iterator[Job]) -> None:
        process = self._process if self.validate is None else self._process_validated
        sends = 1 if self.validate is None else 1 + self.invalid_retries  # the most requests one job makes
        committer = self._committer
        too_long = self.too_long
        for job in jobs:
            if not committer.healthy.is_set():
                await committer.healthy.wait()  # commits are failing: send nothing new meanwhile
            if self._stop or committer.error is not None or committer.gave_up is not None:
                return
            key = job[1]
            error = None if too_long is None else too_long(job[2])
            shared = None if error is not None else inflight.claim(key, self._token)  # type: ignore[arg-type]
            paid_elsewhere = False
            while shared is not None:  # another run of this process is asking: wait for its answer
                record = await inflight.wait(shared)
                if record is not None:
                    self.stats.shared += 1
                    paid_elsewhere = True
                    break
                shared = inflight.claim(key, self._token)  # type: ignore[arg-type]
            else:
                record = None
            if error is not None:  # cannot fit the context window: that row's error, never sent
                record = Record(key, "too_long", error=error, model=self.model)
            elif record is None:
                try:
                    record = await (process(job) if self.budget is None else self.budget.spend(job, process, sends))
                finally:
                    inflight.answered(key, record)  # not ok (unsent, failed): a waiter sends it itself
                    if self.split is not None:
                        inflight.committed([key])  # its rows are committed under their own keys
                if record is None or record.status == UNSENT:  # over budget, deadline, or stopping
                    if self._fatal is not None:
                        raise self._fatal
                    return
                if record.status in CUT_SHORT:  # its retry was not sent: never stored, a rerun sends it
                    self._cut(job, record)
                    if self._fatal is not None:
                        raise self._fatal
                    if self._stop:
                        return
                    continue
            rows = [(job[0], record)] if self.split is None else self.split(job, record)
            if paid_elsewhere:  # its tokens and cost are that run's, not this one's
                self._shared.update(r.key for u, r in rows if u is not None)
            self.settle(rows)
            if self._fatal is not None:
                raise self._fatal  # this job's record is kept; the siblings stop
            if committer.backlog >= committer.max_pending:
                await committer.wait_oldest()

    def _cut(self, job: Job, record: Record) -> None:
        """A job sent and left without an answer (``CUT_SHORT``: its retry not sent, or abandoned
        in flight): its row (a pack's or a group's rows each) keeps ``record``'s status and
        error, never stored, counted in ``stats.cut_short`` (sent, not settled)."""
        for u, row in [(job[0], record)] if self.split is None else self.split(job, record):
            if u is not None:
                self.stats.cut_short[row.status] += 1
                self.on_result(u, row)

    def settle(self, records: list[tuple[int | None, Record]]) -> None:
        """Hand ``records`` to the commit thread; each is counted done (and given to
        ``on_result``) once committed. Also for records known without sending (a pack
        answered before a crash, rows refused before sending). A record whose index is
        None is stored only, never counted (a packed request's own answer: its rows are)."""
        self._buffer.extend(records)
        if len(self._buffer) >= self.flush_size:
            self.flush()
        elif self._committer.backlog == 0 and not self._flush_soon:
            # the writer is idle: hand over at the end of this loop turn, with whatever
            # else arrived in it (batching only under load: the kill -9 window stays small)
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand buffered results to the commit thread; they count as done once committed."""
        self._flush_soon = False
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self._committer.submit(batch)

    def _count(self, batch: Sequence[tuple[int | None, Record]], *, on_disk: bool = True) -> None:
        """On the loop, once ``batch`` is committed (never before)."""
        stats = self.stats
        inflight.committed([r.key for _, r in batch])
        if self.on_commit is not None:
            self.on_commit(batch)
        if not on_disk:
            stats.unsaved += sum(u is not None for u, _ in batch)
        for u, record in batch:
            if u is None:  # stored only (see settle)
                continue
            stats.sent_done += 1
            if record.status == "ok":
                stats.ok += 1
            else:
                stats.failed[record.status] += 1
            self.on_result(u, record)
            if self._shared and record.key in self._shared:
                self._shared.discard(record.key)
                self.on_shared(u)
        self.on_update(stats)

    def _not_on_disk(self, batch: Sequence[tuple[int | None, Record]], exc: StoreError) -> None:
        """The committer gave up: the answers go to the result, flagged as not on disk."""
        self.stats.store_error = exc
        self.stats.store_trouble = None
        self._count(batch, on_disk=False)

    def _store_trouble(self, exc: StoreError | None) -> None:
        if exc is None:
            self.stats.store_trouble = None
        else:
            self.stats.store_trouble = (
                "waiting for the cache lock" if exc.busy else f"cannot write the cache, retrying ({exc})"
            )
        self.on_update(self.stats)

    def _replaced(self, n: int) -> None:
        self.stats.store_notes.append(
            f"the cache file {self.store.path!r} was deleted or replaced during the run; it was "
            f"created again and holds the {n:,} answers of this run"
        )

    async def _watch_deadline(self) -> None:
        await self.sleep(max(0.0, self.stats.started + self.retry.deadline - self.clock()))  # type: ignore[operator]
        self._halt(None)
