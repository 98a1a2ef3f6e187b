"""One request, sent until it is answered or fails: the limiter, retries, the deadline.

Retries: 408/409/5xx, timeouts and connection errors up to ``max_attempts`` with
exponential backoff and jitter (retry.py), honouring ``retry-after``; the backoff doubles
only while the server fails other requests too (retry.Health). A 429
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
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import orjson

from .._backends import Backend, Completion
from .._errors import (
    BadRequestError,
    FatalAPIError,
    LocalServerError,
    PandasLLMError,
    RateLimitError,
    RetryableError,
    redact,
    sentence,
)
from .._stats import RunStats
from .._store.store import Record, Store
from .judge import _TOOL_FINISH, completion_record
from .limiter import Limiter
from .retry import Health, RetryPolicy
from .stopping import ShapeWatch, come_back, quota_stop, row_status

__all__ = ["Sending", "DEAD_AFTER", "UNSENT", "CUT_SHORT", "NOT_AGAIN", "Job"]

Job = tuple[int, bytes, bytes]  # (unique index, key, canonical request body)

#: Connection failures in a row of one request, with no answer from the endpoint meanwhile,
#: after which the endpoint counts as dead (about 3 s with the default backoff).
DEAD_AFTER = 4
#: The status of a job the engine did not send (deadline passed, run stopping); never stored.
UNSENT = "unsent"
#: The statuses of a job whose retry the deadline, a stop or max_cost cut short: not a failure
#: (its attempts were not used up), never stored; its row keeps the last error (engine._work).
CUT_SHORT = ("deadline", "stopped", "budget")
#: Why a job of each CUT_SHORT status was not sent again (the end of its error).
_WHY_CUT = {
    "deadline": "its retry would come after the deadline",
    "stopped": "the run stopped",
    "budget": "its worst case would exceed max_cost",
}
#: Why a row sent in a pack or a group left without its value was not sent again, by the run's end.
NOT_AGAIN = {
    "deadline": "the deadline passed first",
    "stopped": "the run stopped first",
    "budget": "max_cost was reached",
}


class Sending:
    """The engine's sending of one job (mixed into Engine, which owns the state)."""

    backend: Backend
    store: Store
    stats: RunStats
    retry: RetryPolicy
    _health: Health
    limiter: Limiter
    cost: Callable[[Completion], float | None]
    price_pending: Callable[[], Future | None]
    reserve_tokens: Callable[[bytes], int] | None
    model: str | None
    validate: Callable[[str | None], str | None] | None
    invalid_retries: int
    budget: Any
    worst_case: Callable[[bytes], float]
    clock: Callable[[], float]
    sleep: Callable[[float], Any]
    _fatal: PandasLLMError | None
    _stop: bool
    _heard: int
    _shape: ShapeWatch
    _workers: list[asyncio.Task[None]]
    _sending: set[asyncio.Task]
    split: Any
    _stopped_quietly: Callable[[], bool]
    _cut: Callable[[Job, Record], None]

    async def _process(self, job: Job, hold: Any = None) -> Record:
        """Send ``job`` until it is answered or fails; ``hold``: its budget.Hold under max_cost.
        The tokens and cost of its failed attempts that reported usage are added to its record."""
        spent: list[tuple[Completion, float | None]] = []
        record = await self._attempts(job, hold, spent)
        return _plus_spent(record, spent) if spent and record.status != UNSENT else record

    async def _attempts(self, job: Job, hold: Any, spent: list[tuple[Completion, float | None]]) -> Record:
        _, key, body = job
        stats = self.stats
        limiter = self.limiter
        reserve = self.reserve_tokens
        attempts = 0
        failures = level = 0  # level: of the backoff (retry.Health)
        deadline = self.retry.deadline
        failure: RetryableError | None = None
        down, heard = 0, -1  # this request's connection failures in a row; self._heard at the last
        flying = False  # a request of this job is in flight (or its answer awaits the price table)
        try:
            while True:
                if self._stop or (deadline is not None and self._past_deadline(0)):
                    return self._unsent(key, attempts, failure)
                try:
                    if reserve is None:
                        ticket, reserved = await limiter.admit(body)
                    else:
                        reserved = reserve(body)
                        ticket = await limiter.acquire(reserved)
                except asyncio.CancelledError:  # woken at the deadline, or stopped, while waiting
                    if failure is None or not self._stopped_quietly():
                        raise
                    return self._unsent(key, attempts, failure)
                if self._stop or (deadline is not None and self._past_deadline(0)):  # the wait may have crossed it
                    limiter.release(reserved)
                    return self._unsent(key, attempts, failure)
                attempts += 1
                stats.attempts += 1
                flying = True
                stats.in_flight += 1
                task = asyncio.current_task()
                self._sending.add(task)  # type: ignore[arg-type]
                try:
                    completion = await self.backend.complete(body)
                except RetryableError as exc:
                    flying = False  # no longer in flight: a stop or the deadline wakes it in its backoff
                    stats.in_flight -= 1
                    self._sending.discard(task)
                    limiter.release(reserved)
                    if exc.usage is not None and not await self._billed(exc.usage, task, body, hold, spent):
                        return self._cut_short(key, attempts, exc, "budget")
                    if exc.code == "connection":
                        down = down + 1 if heard == self._heard else 1
                        heard = self._heard
                        stop = self._unreachable(exc, down)
                        if stop is not None:
                            if exc.maybe_billed and exc.usage is None:  # dropped after sending: possibly billed
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
                            failure = exc  # sent once: a stop or the deadline from now on cuts it short
                            wait = limiter.rate_limited(ticket, exc.retry_after, exc.headers, str(exc))
                            stats.paused_until = limiter.paused_until
                            stop = quota_stop(exc, wait, deadline)
                            if stop is not None:
                                return self._stop_run(stop, self._cut_short(key, attempts, exc, "stopped"))
                            if self._past_deadline(wait):  # no request can be sent before the deadline: stop sending
                                self._halt(
                                    f"{sentence(str(exc))} The limit clears in {come_back(wait)}, after the deadline ({deadline:g} s)."
                                )
                                return self._cut_short(key, attempts, exc, "deadline")
                            stats.retries += 1
                            continue
                        # the server is busy, the account's limit is not reached: retried like a
                        # 5xx, this request alone after its retry-after or backoff; nobody pauses
                        stats.overloaded += 1
                    failures += 1
                    failure = exc
                    level = self._health.failed(level)
                    wait = self.retry.backoff(level, exc.retry_after)
                    again = failures < self.retry.max_attempts and not self._past_deadline(wait)
                    if exc.maybe_billed and exc.usage is None and not await self._lost(body, hold, again):
                        return self._cut_short(key, attempts, exc, "budget")
                    if not again:
                        if failures < self.retry.max_attempts:  # the deadline comes first
                            return self._cut_short(key, attempts, exc, "deadline")
                        return Record(
                            key,
                            "failed",
                            error=f"{exc} (after {attempts} attempts)",
                            attempts=attempts,
                            model=self.model,
                        )
                    stop = quota_stop(exc, wait, deadline)
                    if stop is not None:
                        return self._stop_run(
                            stop, Record(key, "failed", error=str(exc), attempts=attempts, model=self.model)
                        )
                    stats.retries += 1
                    try:
                        await self.sleep(wait)
                    except asyncio.CancelledError:  # woken at the deadline, or stopped, in its backoff
                        if not self._stopped_quietly():
                            raise
                        return self._unsent(key, attempts, failure)
                    continue
                except BadRequestError as exc:
                    limiter.release(reserved)
                    self._heard += 1
                    if exc.usage is not None:  # billed all the same: charged with its record
                        await self._billed(exc.usage, task, body, None, spent)
                    record = Record(key, row_status(exc), error=str(exc), attempts=attempts, model=self.model)
                    stop = None if self._refused_before(key, record) else self._shape.refused(exc, body)
                    return record if stop is None else self._stop_run(stop, record)
                except FatalAPIError as exc:
                    self._fatal = self._fatal or exc
                    self._stop = True
                    if exc.usage is not None:  # billed: counted, though the run stops
                        self._count_usage(exc.usage, None if self.price_pending() is not None else self.cost(exc.usage))
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
                    if flying:  # (a retryable failure left already, before its backoff)
                        stats.in_flight -= 1
                        self._sending.discard(task)
                self._heard += 1
                self._health.answered()
                limiter.done(
                    reserved, len(body), completion.prompt_tokens, completion.completion_tokens, completion.headers
                )  # first: the limits its headers show let the requests waiting for them go now
                pending = self.price_pending()
                if pending is not None:
                    await self._priced(pending, task, body)
                return self._record(key, completion, reserved, attempts, body)
        except asyncio.CancelledError:  # the run was cancelled or stopped on a fatal error
            if attempts:  # sent: it is cut short, not "never sent" (its rows say so)
                self._cut(job, self._abandoned(key, attempts, None if flying else failure))
            raise

    async def _billed(
        self, usage: Completion, task: Any, body: bytes, hold: Any, spent: list[tuple[Completion, float | None]]
    ) -> bool:
        """A failed attempt whose answer reported ``usage`` (billed although no answer came):
        count its tokens and cost, keep them for the job's record (``spent``), and with a
        ``hold`` (its retry may follow) charge them to max_cost now and reserve anew for the
        retry. False if that retry no longer fits under the cap."""
        pending = self.price_pending()
        if pending is not None:
            await self._priced(pending, task, body)
        cost = self.cost(usage)
        self._count_usage(usage, cost)
        spent.append((usage, cost))
        if hold is None or cost is None:
            return True
        hold.charged += cost
        return await self.budget.lost(hold, cost, again=True)

    def _count_usage(self, usage: Completion, cost: float | None) -> None:
        stats = self.stats
        stats.prompt_tokens += usage.prompt_tokens
        stats.completion_tokens += usage.completion_tokens
        stats.reasoning_tokens += usage.reasoning_tokens
        stats.cached_tokens += usage.cached_tokens
        if cost is None:
            stats.cost_known = False
        else:
            stats.cost += cost

    async def _priced(self, pending: Future, task: Any, body: bytes) -> None:
        """An answer that came while the price table is still loading (the first answers of a
        process) waits for it without blocking the loop. It counts as sending meanwhile (a stop
        lets it finish); abandoned in that wait, it counts as possibly billed, as in flight."""
        self._sending.add(task)
        try:
            await asyncio.wait((asyncio.wrap_future(pending),))  # a failed look-up raises in _record
        except asyncio.CancelledError:
            self.stats.lost_answers += 1
            self.stats.possibly_billed += self.worst_case(body)
            raise
        finally:
            self._sending.discard(task)

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
            if record.status == UNSENT or record.status in CUT_SHORT:  # the resend was not sent: keep the paid answer
                record = rejected.pop()
        return _with_spent(record, rejected) if rejected else record

    def _record(self, key: bytes, c: Completion, reserved: int, attempts: int, body: bytes) -> Record:
        cost = self.cost(c)
        self._count_usage(c, cost)
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
        return self._cut_short(key, attempts, failure, "deadline" if self.stats.deadline_reached else "stopped")

    def _cut_short(self, key: bytes, attempts: int, failure: RetryableError, status: str) -> Record:
        """The record of a job whose retry the deadline or a stop cut short (``CUT_SHORT``): the
        one place its status and message are made, whether the deadline had passed or its retry
        would have come after it. A packed or grouped request's rows take it too (engine._work)."""
        why = _WHY_CUT[status]
        return Record(key, status, error=f"{failure} (after {attempts} attempts; not sent again: {why})",
                      attempts=attempts, model=self.model)  # fmt: skip

    def _abandoned(self, key: bytes, attempts: int, failure: RetryableError | None) -> Record:
        """The record of a job sent and abandoned by a cancel of the run (a second interrupt, a
        fatal error on another request): in flight (``failure`` None), or in its backoff."""
        if failure is not None:
            return self._cut_short(key, attempts, failure, "stopped")
        return Record(key, "stopped", error=f"the run stopped with this request in flight (after {attempts} "
                      "attempts): no answer, possibly billed", attempts=attempts, model=self.model)  # fmt: skip

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


def _plus_spent(record: Record, spent: list[tuple[Completion, float | None]]) -> Record:
    """``record`` with the tokens and cost of the job's failed attempts that reported usage.
    Its cost is None (unknown) when a part of it with tokens has no price."""
    costs = [cost for _, cost in spent]
    if record.cost is not None or record.prompt_tokens or record.completion_tokens:
        costs.append(record.cost)
    return record._replace(
        prompt_tokens=record.prompt_tokens + sum(u.prompt_tokens for u, _ in spent),
        completion_tokens=record.completion_tokens + sum(u.completion_tokens for u, _ in spent),
        cached_tokens=record.cached_tokens + sum(u.cached_tokens for u, _ in spent),
        cost=None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
    )


def _with_spent(record: Record, rejected: list[Record]) -> Record:
    """``record`` charged with what the rejected answers before it cost (nothing paid is lost)."""
    costs = [r.cost for r in (*rejected, record)]
    return record._replace(
        prompt_tokens=record.prompt_tokens + sum(r.prompt_tokens for r in rejected),
        completion_tokens=record.completion_tokens + sum(r.completion_tokens for r in rejected),
        cached_tokens=record.cached_tokens + sum(r.cached_tokens for r in rejected),
        cost=None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
        attempts=record.attempts + sum(r.attempts for r in rejected),
    )
