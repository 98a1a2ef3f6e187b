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

Retries: 408/409/5xx, timeouts and connection errors up to ``max_attempts`` with
exponential backoff and jitter (tenacity's strategy), honouring ``retry-after``. A 429
at the account's limit pauses every worker through the limiter and is retried until the
run's deadline, not a fixed small count; a 429 whose headers or message show the limit
is not reached (the server is overloaded: ``Limiter.is_limit``) is retried like a 5xx,
for that request only, without slowing the others. A 400 is that row's error.
401/403/404 stop the whole run at once.
What will not clear stops the run early (stopping.py): the same refusal of the request's
shape on the first answers, a 429 asking for a wait beyond 10 min with no deadline.

The deadline is checked before every send (first tries and retries alike): once it has
passed, or a 429's wait ends after it, nothing more is sent; workers waiting for the
limiter are woken and stop, requests in flight are kept, and rows not sent are left for
the caller to label (``stats.deadline_reached``).

A dead endpoint stops the run in seconds, not after every row has used its attempts:
when one request has failed ``DEAD_AFTER`` times in a row (or ``max_attempts``, if fewer)
on connection-level errors (refused, reset, unreachable, DNS: ``code="connection"`` from
every backend) and the endpoint answered nothing at all meanwhile, the run raises
FatalAPIError naming the base URL. A blip (a few refusals, then answers) is retried as
usual. On each connection failure the engine also asks ``pandas_llm.local`` whether a
LocalServer of this process serves that URL and has died: then LocalServerError, at once.

Validation (``validate=``, used when a schema is set): an answer the hook rejects is
asked again up to ``invalid_retries`` times, then stored as ``invalid`` with the hook's
error. A resend is a fresh request with ``seed`` moved on by the resend number (so a
seeded or temperature>0 model can answer differently, and a rerun resends the same
sequence); the tokens and cost of the rejected answers are added to the row's record.
Without ``validate`` the workers never enter that path.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from tenacity import RetryCallState, wait_exponential_jitter

from .._backends import Backend, Completion
from .._errors import (
    BadRequestError,
    FatalAPIError,
    LocalServerError,
    PandasLLMError,
    RateLimitError,
    RetryableError,
    StoreError,
    redact,
)
from .._stats import RunStats
from .._store.committer import Committer
from .._store.store import Record, Store
from . import inflight
from .limiter import Limiter
from .stopping import ShapeWatch, come_back, quota_stop, row_status

__all__ = ["Engine", "Job", "RetryPolicy", "completion_record", "DEAD_AFTER"]

Job = tuple[int, bytes, bytes]  # (unique index, key, canonical request body)

#: finish_reason values of a finished answer: "stop", and the natural ends of Hugging Face TGI.
_DONE_FINISH = frozenset({"stop", "eos_token", "stop_sequence"})
#: finish_reason values that are failures with a status of their own, never a value.
_FAILED_FINISH = {"length": "length", "model_length": "length", "content_filter": "content_filter"}
#: finish_reason values of a tool call: an answer only when the request asked for tools.
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})
#: Connection failures in a row of one request, with no answer from the endpoint meanwhile,
#: after which the endpoint counts as dead (about 4 s with the default backoff).
DEAD_AFTER = 4
#: What stops a whole run (recorded in Engine._fatal, re-raised once the others have stopped).
_STOPS = (FatalAPIError, LocalServerError)
#: The status of a job the engine did not send (deadline passed, run stopping); never stored.
UNSENT = "unsent"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    wait: Callable[[RetryCallState], float] = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)
    deadline: float | None = None  # seconds from start; bounds rate-limit retries

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return self.wait(state)


class Engine:
    """Runs jobs through a backend with bounded concurrency and commits each result."""

    def __init__(
        self,
        *,
        backend: Backend,
        store: Store,
        stats: RunStats,
        concurrency: int,
        retry: RetryPolicy = RetryPolicy(),
        limiter: Limiter | None = None,
        cost: Callable[[Completion], float | None] = lambda c: None,
        reserve_tokens: Callable[[bytes], int] | None = None,  # default: the limiter's estimate
        on_result: Callable[[int, Record], None] = lambda u, r: None,
        on_update: Callable[[RunStats], None] = lambda s: None,
        model: str | None = None,
        validate: Callable[[str | None], str | None] | None = None,
        invalid_retries: int = 2,
        budget: Any = None,
        worst_case: Callable[[bytes], float] = lambda body: 0.0,
        too_long: Callable[[bytes], str | None] | None = None,
        split: Callable[[Job, Record], list[tuple[int, Record]]] | None = None,
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
        self.limiter = limiter or Limiter(clock=clock, sleep=sleep)
        self.cost = cost
        self.reserve_tokens = reserve_tokens
        self.on_result = on_result
        self.on_update = on_update
        self.model = model
        self.validate = validate
        self.invalid_retries = invalid_retries
        self.budget = budget  # budget.Budget: reserves each request's worst case (max_cost)
        self.worst_case = worst_case  # USD a lost answer may have been billed (budget.Meter.lost)
        self.too_long = too_long  # body -> why it cannot fit the context window (budget.ContextCheck)
        self.split = split  # a multi-input request's record -> one record per row (endpoints.py)
        self.flush_size = flush_size
        self.clock = clock
        self.sleep = sleep
        self._buffer: list[tuple[int, Record]] = []
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
        self._workers: list[asyncio.Future] = []
        self._sending: set[asyncio.Task] = set()  # workers with a request in flight (kept at a halt or stop)
        self._parked: set[asyncio.Task] = set()  # workers cancelled by stop(): they return quietly

    def stop(self) -> None:
        """Send nothing new; let the requests in flight finish and commit (at most their timeout)."""
        self._stop = True
        self.stats.stopping = True
        for w in self._workers:
            if w not in self._sending and not w.done():
                self._parked.add(w)  # type: ignore[arg-type]
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
            await asyncio.gather(*workers)
        except _STOPS:
            pass  # recorded in self._fatal; siblings cancelled below
        finally:
            if watch is not None:
                watch.cancel()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self.flush()
            await self._committer.drain()
            if own_token:
                inflight.close_run(self._token)  # type: ignore[arg-type]
        if self._committer.error is not None:
            raise self._committer.error
        if self._fatal is not None:
            raise self._fatal

    async def _worker(self, jobs: Iterator[Job]) -> None:
        try:
            await self._work(jobs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._fatal is not None or not (task in self._parked or self.stats.deadline_reached):
                raise
            task.uncancel()  # type: ignore[union-attr]  # stopped, or woken at the deadline: done

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
            while shared is not None:  # another run of this process is asking: wait for its answer
                record = await inflight.wait(shared)
                if record is not None:
                    self.stats.shared += 1
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
            if self.split is None:
                self._buffer.append((job[0], record))
            else:
                self._buffer.extend(self.split(job, record))
            if len(self._buffer) >= self.flush_size:
                self.flush()
            elif committer.backlog == 0 and not self._flush_soon:
                # the writer is idle: hand over at the end of this loop turn, with whatever
                # else arrived in it (batching only under load: the kill -9 window stays small)
                self._flush_soon = True
                asyncio.get_running_loop().call_soon(self.flush)
            if self._fatal is not None:
                raise self._fatal  # this job's record is kept; the siblings stop
            if committer.backlog >= committer.max_pending:
                await committer.wait_oldest()

    def flush(self) -> None:
        """Hand buffered results to the commit thread; they count as done once committed."""
        self._flush_soon = False
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self._committer.submit(batch)

    def _count(self, batch: list[tuple[int, Record]], *, on_disk: bool = True) -> None:
        """On the loop, once ``batch`` is committed (never before)."""
        stats = self.stats
        inflight.committed([r.key for _, r in batch])
        if not on_disk:
            stats.unsaved += len(batch)
        for u, record in batch:
            stats.sent_done += 1
            if record.status == "ok":
                stats.ok += 1
            else:
                stats.failed[record.status] += 1
            self.on_result(u, record)
        self.on_update(stats)

    def _not_on_disk(self, batch: list[tuple[int, Record]], exc: StoreError) -> None:
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

    async def _process(self, job: Job, hold: Any = None) -> Record:
        """Send ``job`` until it is answered or fails; ``hold``: its budget.Hold under max_cost."""
        _, key, body = job
        stats = self.stats
        limiter = self.limiter
        reserve = self.reserve_tokens
        attempts = 0
        failures = 0
        deadline = self.retry.deadline
        failure: RetryableError | None = None
        down, heard = 0, -1  # this request's connection failures in a row; self._heard at the last
        while True:
            if self._stop or (deadline is not None and self._past_deadline(0)):
                return self._unsent(key, attempts, failure)
            if reserve is None:
                ticket, reserved = await limiter.admit(body)
            else:
                reserved = reserve(body)
                ticket = await limiter.acquire(reserved)
            if self._stop or (deadline is not None and self._past_deadline(0)):  # the wait may have crossed it
                limiter.release(reserved)
                return self._unsent(key, attempts, failure)
            attempts += 1
            stats.attempts += 1
            stats.in_flight += 1
            task = asyncio.current_task()
            self._sending.add(task)  # type: ignore[arg-type]
            try:
                completion = await self.backend.complete(body)
            except RetryableError as exc:
                limiter.release(reserved)
                if exc.code == "connection":
                    down = down + 1 if heard == self._heard else 1
                    heard = self._heard
                    stop = self._unreachable(exc, down)
                    if stop is not None:
                        if exc.maybe_billed:  # dropped after sending: counted as possibly billed
                            await self._lost(body, hold, False)
                        why = f"{exc} (after {attempts} attempts; not sent again: the endpoint is gone)"
                        return self._stop_run(
                            stop, Record(key, "failed", error=why, attempts=attempts, model=self.model)
                        )
                elif exc.status is not None:
                    self._heard += 1
                elif exc.code == "timeout":
                    stats.timeouts += 1
                if isinstance(exc, RateLimitError):
                    if limiter.is_limit(exc.headers, str(exc), reserved):
                        stats.rate_limited += 1
                        wait = limiter.rate_limited(ticket, exc.retry_after, exc.headers, str(exc))
                        stats.paused_until = limiter.paused_until
                        stop = quota_stop(exc, wait, deadline)
                        if stop is not None:
                            return self._stop_run(stop, Record(key, UNSENT))
                        if self._past_deadline(wait):  # no request can be sent before the deadline: stop sending
                            self._halt(
                                f"{exc} The limit clears in {come_back(wait)}, after the deadline ({deadline:g} s)."
                            )
                            return Record(key, UNSENT)
                        stats.retries += 1
                        continue
                    # the server is busy, the account's limit is not reached: retried like a
                    # 5xx, this request alone after its retry-after or backoff; nobody pauses
                    stats.overloaded += 1
                failures += 1
                failure = exc
                wait = self.retry.backoff(failures, exc.retry_after)
                again = failures < self.retry.max_attempts and not self._past_deadline(wait)
                if exc.maybe_billed and not await self._lost(body, hold, again):
                    return Record(key, "failed", error=f"{exc} (after {attempts} attempts; not sent again: its "
                                  "worst case would exceed max_cost)", attempts=attempts, model=self.model)  # fmt: skip
                if not again:
                    return Record(
                        key, "failed", error=f"{exc} (after {attempts} attempts)", attempts=attempts, model=self.model
                    )
                stop = quota_stop(exc, wait, deadline)
                if stop is not None:
                    return self._stop_run(
                        stop, Record(key, "failed", error=str(exc), attempts=attempts, model=self.model)
                    )
                stats.retries += 1
                await self.sleep(wait)
                continue
            except BadRequestError as exc:
                limiter.release(reserved)
                self._heard += 1
                record = Record(key, row_status(exc), error=str(exc), attempts=attempts, model=self.model)
                stop = None if self._refused_before(key, record) else self._shape.refused(exc, body)
                return record if stop is None else self._stop_run(stop, record)
            except FatalAPIError as exc:
                self._fatal = self._fatal or exc
                self._stop = True
                raise
            except asyncio.CancelledError:
                limiter.release(reserved)
                # abandoned in flight (the run stopped on another worker's fatal error, or a
                # second interrupt): the server may have run it and billed it, so count it
                stats.lost_answers += 1
                stats.possibly_billed += self.worst_case(body)
                raise
            except BaseException:
                limiter.release(reserved)
                raise
            finally:
                stats.in_flight -= 1
                self._sending.discard(task)  # type: ignore[arg-type]
            self._heard += 1
            limiter.done(
                reserved, len(body), completion.prompt_tokens, completion.completion_tokens, completion.headers
            )
            return self._record(key, completion, reserved, attempts, body)

    async def _process_validated(self, job: Job, hold: Any = None) -> Record:
        """``_process``, then resend while the answer fails ``validate`` (bounded)."""
        record = await self._process(job, hold)
        rejected: list[Record] = []
        while record.status == "ok":
            error = self.validate(record.output)  # type: ignore[misc]
            if error is None:
                break
            if len(rejected) >= self.invalid_retries or self._stop:
                record = record._replace(status="invalid", error=error)
                break
            rejected.append(record._replace(status="invalid", error=error))
            self.stats.retries += 1
            record = await self._process((job[0], job[1], _reseeded(job[2], len(rejected))), hold)
            if record.status == UNSENT:  # the resend was not sent (deadline): keep the paid answer
                record = rejected.pop()
        return _with_spent(record, rejected) if rejected else record

    def _record(self, key: bytes, c: Completion, reserved: int, attempts: int, body: bytes) -> Record:
        stats = self.stats
        cost = self.cost(c)
        stats.prompt_tokens += c.prompt_tokens
        stats.completion_tokens += c.completion_tokens
        stats.reasoning_tokens += c.reasoning_tokens
        stats.cached_tokens += c.cached_tokens
        if cost is None:
            stats.cost_known = False
        else:
            stats.cost += cost
        if c.outputs is not None:  # many inputs in one request: the split hook makes the rows' records
            self._shape.answered = True
            return Record(
                key, "ok", c.outputs, c.finish_reason, c.prompt_tokens, 0, 0, cost, None, attempts, self.model
            )
        tools = c.finish_reason in _TOOL_FINISH and "tools" in orjson.loads(body)  # parsed on that rare path only
        record = completion_record(key, c, cost, attempts, self.model, tools=tools)
        if record.status == "ok":
            self._shape.answered = True
        return record

    def _unsent(self, key: bytes, attempts: int, failure: RetryableError | None) -> Record:
        """A job not sent (again) because the deadline passed or the run is stopping."""
        if self.retry.deadline is not None and not self._stop:
            self._halt(None)
        if failure is None:
            return Record(key, UNSENT)  # never sent: the caller labels it (deadline, stopped)
        why = "the deadline passed" if self.stats.deadline_reached else "the run stopped"
        return Record(key, "failed", error=f"{failure} (after {attempts} attempts; not sent again: {why})",
                      attempts=attempts, model=self.model)  # fmt: skip

    def _refused_before(self, key: bytes, record: Record) -> bool:
        """True if an earlier run stored this same refusal for ``key``: it does not count
        toward the same-400 stop (stopping.ShapeWatch), so rows refused for themselves, which
        a rerun sends first, cannot stop every rerun before the others are sent."""
        if self._shape.answered or self.store is None:
            return False
        try:
            stored = next(iter(self.store.lookup([key])), None)
        except Exception:  # a busy or vanished file: count it, as without the cache
            return False
        return stored is not None and stored.status == record.status and stored.error == redact(record.error)

    def _stop_run(self, exc: PandasLLMError, record: Record) -> Record:
        """Stop the run with ``exc`` once this job's ``record`` is kept (see _work)."""
        self._fatal = self._fatal or exc
        self._stop = True
        return record

    def _halt(self, note: str | None) -> None:
        """The deadline: stop sending; wake the workers that wait (those in flight finish)."""
        stats = self.stats
        if not stats.deadline_reached:
            stats.deadline_reached = True
            stats.stop_note = stats.stop_note or note
            self._stop = True
            for w in self._workers:
                if w not in self._sending and w is not asyncio.current_task():
                    w.cancel()

    async def _watch_deadline(self) -> None:
        await self.sleep(max(0.0, self.stats.started + self.retry.deadline - self.clock()))  # type: ignore[operator]
        self._halt(None)

    async def _lost(self, body: bytes, hold: Any, again: bool) -> bool:
        """An attempt was sent and its answer lost: count its worst case as possibly billed,
        charge it to max_cost; False if its retry (``again``) no longer fits under the cap."""
        stats = self.stats
        billed = self.worst_case(body)
        stats.lost_answers += 1
        stats.possibly_billed += billed
        if hold is None:
            return True
        return await self.budget.lost(hold, billed, again=again) or not again

    def _unreachable(self, exc: RetryableError, down: int) -> PandasLLMError | None:
        """The error that stops the run after a connection failure, or None to retry: the
        LocalServer serving this URL died, or ``down`` failures in a row mean the endpoint is gone."""
        endpoint = getattr(self.backend, "endpoint", None)
        if endpoint:
            from ..local import check_endpoint

            try:
                check_endpoint(endpoint)
            except LocalServerError as died:
                return died
        if down < min(DEAD_AFTER, self.retry.max_attempts):
            return None
        return FatalAPIError(
            f"cannot reach {endpoint or 'the endpoint of the client function'}: {down} connection attempts "
            f"in a row failed with no answer from it meanwhile (last: {exc}). Is the server running, and "
            "is base_url right? The run stopped; answered rows are kept in the cache: run the same call "
            "again to send the rest.",
            code="unreachable",
        )

    def _past_deadline(self, wait: float) -> bool:
        deadline = self.retry.deadline
        return deadline is not None and (self.clock() + wait - self.stats.started) > deadline


def _reseeded(body: bytes, n: int) -> bytes:
    """The same request with ``seed`` moved on by ``n`` (key order kept: schemas stay ordered)."""
    data = orjson.loads(body)
    seed = data.get("seed")
    data["seed"] = (seed if isinstance(seed, int) else 0) + n
    return orjson.dumps(data)


def _with_spent(record: Record, rejected: list[Record]) -> Record:
    """``record`` charged with what the rejected answers before it cost (nothing paid is lost)."""
    costs = [r.cost for r in (*rejected, record)]
    return record._replace(
        prompt_tokens=record.prompt_tokens + sum(r.prompt_tokens for r in rejected),
        completion_tokens=record.completion_tokens + sum(r.completion_tokens for r in rejected),
        cached_tokens=record.cached_tokens + sum(r.cached_tokens for r in rejected),
        cost=None if any(c is None for c in costs) else sum(costs),
        attempts=record.attempts + sum(r.attempts for r in rejected),
    )


def completion_record(
    key: bytes, c: Completion, cost: float | None, attempts: int, model: str | None, *, tools: bool = False
) -> Record:
    """The Record for an answer, judged the same for every backend and the Batch API.

    Only a finished answer with content is ``ok``: finish_reason ``stop`` (TGI's
    ``eos_token`` / ``stop_sequence``), or ``tool_calls`` when the request asked for
    ``tools``. A cut-off (``length``), filtered or refused answer is a failure with its own
    status; an error the server put in the choice, any other finish_reason (a gateway's
    ``"error"``, vLLM's ``"abort"``, none at all) or no content is that row's ``error``,
    with the server's message: never a value, and sent again by the next run. Its tokens
    and cost are kept (it may have been billed). An empty string (``""``) is the failure
    ``empty``; whitespace-only text is kept as the model's answer. Content that is not a
    str (a list with parts other than text, a number) is that row's ``error``: the output
    of a Record is always ``str | None``.
    """
    reason = c.finish_reason
    status = _FAILED_FINISH.get(reason)  # type: ignore[arg-type]
    error = None
    text = c.text
    if text is not None and not isinstance(text, str):  # never bind a foreign type in the store
        from .._backends import describe_content

        status, error, text = "error", f"finish_reason={reason}: {describe_content(text)}", None
    elif c.error is not None:
        status, error = "error", f"finish_reason={reason}: the server answered with an error: {c.error}"
    elif status is not None:
        error = f"finish_reason={reason}: the answer was cut off or withheld"
        if status == "length":
            error = f"finish_reason={reason}: the answer hit max_tokens and was cut off; raise max_tokens"
    elif reason not in _DONE_FINISH and not (tools and reason in _TOOL_FINISH):
        status = "error"
        if reason in _TOOL_FINISH:
            error = f"finish_reason={reason}: the model called a tool, but the request asked for no tools"
        elif reason is None:
            error = "the answer has no finish_reason, so it may be incomplete: not counted as an answer"
        else:
            error = f"finish_reason={reason!r}: the server ended the answer abnormally (no message given)"
    elif c.refusal:
        status, error = "refused", f"the model refused: {c.refusal}"
    elif text is None:
        status, error = "error", "the answer had no content" + (" (it called a tool)" if reason in _TOOL_FINISH else "")
    elif text == "":
        status, error = "empty", f"finish_reason={reason}: the answer was an empty string"
    return Record(
        key, status or "ok", text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.cached_tokens,
        cost, error, attempts, model,
    )  # fmt: skip
