"""Submitting a Batch API job: its requests into JSONL parts, each recorded before it is sent.

:class:`Submitter` is the sending half of ``BatchJob`` (job.py): the requests not cached and
not already in flight (found in the ledger by request key, and re-attached to) are split
into parts by ``batch_limits``; each part is recorded in the ledger, uploaded, and its batch
created. Prompts over the model's context window become ``too_long`` rows, never uploaded;
with ``max_cost`` each request's worst case is reserved before it goes and settled when its
part is collected. A part the API lost or refused is abandoned and its requests sent again.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import orjson

from .._errors import BadRequestError, FatalAPIError
from .._run.budget import ContextCheck
from .._store.ledger import Ledger, Part
from .._store.store import Record
from .client import JOB_KEY, PART_KEY, BatchAPI
from .files import PartData, split_parts

__all__ = ["Submitter"]

log = logging.getLogger("pandas_llm")


class Submitter:
    """The sending half of a ``BatchJob``: uses its ``plan``, ``settings``, ``kind``, ``stats``,
    ``_collector``, ``_budget`` and the part bookkeeping ``BatchJob.__init__`` sets up."""

    # set by BatchJob.__init__
    plan: Any
    settings: Any
    kind: Any
    stats: Any
    id: str
    _collector: Any
    _budget: Any
    _parts: list[str]
    _pending: Iterator[PartData] | None
    _next: PartData | None
    _submitted: bool
    _cancelled: bool
    _held: dict[bytes, float]
    _too_long: list[Record]
    _over: Iterator[tuple[int, bytes, bytes]] | None

    async def _submit(self, ledger: Ledger, api: BatchAPI) -> None:
        if self._submitted:
            return
        plan, stats = self.plan, self.stats
        stats.phase = "submitting"
        slot_of = self._collector.slot_of = {plan.keys[u]: u for u in plan.todo.tolist()}
        todo_keys = list(slot_of)
        covering = ledger.covering(todo_keys)
        if covering:
            for pid in dict.fromkeys(covering.values()):
                p = ledger.part(pid)
                if p is not None and p.batch_id is None:
                    await self._resume(ledger, api, p)  # a crash left it without a batch
            covering = ledger.covering(todo_keys)
            self._parts.extend(dict.fromkeys(covering.values()))
            stats.attached = len(covering)
            log.info(
                "pandas-llm: re-attached to %d batch(es) in flight with %d of this job's requests",
                len(self._parts), len(covering),
            )  # fmt: skip
        self._submitted = True  # from here on, parts are recorded in the ledger as they go
        limits = self.settings.batch_limits
        tokens_of = self._tokens_of() if limits.enqueued_tokens is not None else None
        jobs = (self._line(j) for j in plan.jobs() if j[1] not in covering)
        self._pending = split_parts(self._within_budget(self._fitting(jobs)), limits, tokens_of, **self._url())
        await self._send_more(ledger, api)

    def _fitting(self, jobs: Iterator[tuple[int, bytes, bytes]]) -> Iterator[tuple[int, bytes, bytes]]:
        """``jobs`` that fit the model's context window (``budget.ContextCheck``, as realtime);
        the others become status ``too_long`` records (written by ``_send_more``), never uploaded."""
        check = ContextCheck.for_model(self.settings.model) if self.kind is None and self.settings.model else None
        if check is None:
            yield from jobs
            return
        for job in jobs:
            error = check.error(job[2])
            if error is None:
                yield job
            else:
                self._too_long.append(Record(job[1], "too_long", error=error, attempts=0, model=self.settings.model))

    def _within_budget(self, jobs: Iterator[tuple[int, bytes, bytes]]) -> Iterator[tuple[int, bytes, bytes]]:
        """``jobs`` while their worst cases fit in max_cost (each reserved); the first that does
        not fit, and the rest, wait in ``_over`` for batches in flight to settle."""
        budget = self._budget
        if budget is None:
            yield from jobs
            return
        jobs = iter(jobs)
        for job in jobs:
            held = budget.meter.worst_case(job[2])
            fits = budget.try_reserve(held)
            if fits:
                self._held[job[1]] = held
                yield job
            else:
                if fits is None:  # fits once the batches in flight are collected
                    self._over = itertools.chain([job], jobs)
                return  # False: it cannot fit even alone; the rest stay unsent ("budget")

    def _settle(self, keys: Iterable[bytes]) -> None:
        """Charge a collected part's requests their cost and release their reservations; let
        the requests waiting for the budget go, or give up on them once nothing is in flight."""
        budget = self._budget
        if budget is None:
            return
        outcomes, slot_of = self.plan.outcomes, self._collector.slot_of
        for key in keys:
            held = self._held.pop(key, None)
            if held is None:
                continue
            u = slot_of.get(key)
            status = None if u is None else outcomes.status[u]
            if u is None or status is None or status in ("expired", "cancelled"):
                actual = 0.0  # the API never ran it
            elif not np.isnan(outcomes.cost[u]):
                actual = float(outcomes.cost[u])
            else:
                actual = held if (outcomes.prompt_tokens[u] or outcomes.completion_tokens[u]) else 0.0
            budget.settle(held, actual)
        if self._over is not None and self._pending is None:
            over, self._over = self._over, None
            limits = self.settings.batch_limits
            self._pending = split_parts(self._within_budget(over), limits,
                                        self._tokens_of() if limits.enqueued_tokens is not None else None)  # fmt: skip

    def _tokens_of(self) -> Callable[[bytes], int]:
        from .._cost.tokens import count_message_tokens, count_text_tokens

        model = self.settings.model
        if self.kind is not None:
            return lambda body: count_text_tokens(orjson.loads(body)["input"], model)
        return lambda body: count_message_tokens(orjson.loads(body)["messages"], model)

    def _line(self, job: tuple[int, bytes, bytes]) -> tuple[int, bytes, bytes]:
        """The batch line's body: the request as keyed, plus a list-input kind's wire fields."""
        if self.kind is None or not self.kind.wire:
            return job
        u, key, body = job
        return u, key, body[:-1] + b"," + orjson.dumps(dict(self.kind.wire))[1:]

    def _url(self) -> dict[str, str]:
        return {} if self.kind is None else {"url": "/v1" + self.kind.path}

    async def _send_more(self, ledger: Ledger, api: BatchAPI) -> None:
        try:
            await self._send_parts(ledger, api)
        finally:
            if self._too_long:  # prompts over the context window found while filling parts
                rows, self._too_long = self._too_long, []
                self._collector.write(ledger.store, rows)

    async def _send_parts(self, ledger: Ledger, api: BatchAPI) -> None:
        budget = self.settings.batch_limits.enqueued_tokens
        while self._pending is not None:
            if self._next is None:
                self._next = next(self._pending, None)
                if self._next is None:
                    self._pending = None
                    break
            part = self._next
            if budget is not None:
                in_flight = sum(p.tokens for p in (ledger.part(pid) for pid in self._parts) if p and p.open)
                if in_flight and in_flight + part.tokens > budget:
                    break  # wait for earlier batches to finish
            self._next = None
            await self._send(ledger, api, part)
        s = self.stats
        s.queued = max(0, s.to_send - s.attached - s.submitted) if self._pending is not None else 0
        s.phase = "waiting"

    async def _send(self, ledger: Ledger, api: BatchAPI, part: PartData) -> None:
        s = self.stats
        ledger.add_job(
            self.id,
            endpoint=self.settings.endpoint,
            model=self.settings.model,
            rows=s.total,
            requests=s.to_send - s.attached,
        )  # fmt: skip  (once; later calls are no-ops)
        pid = uuid.uuid4().hex
        ledger.add_part(pid, job=self.id, endpoint=self.settings.endpoint, keys=part.keys, tokens=part.tokens,
                        nbytes=len(part.data), rows=self._row_entries(part.keys))  # fmt: skip
        self._parts.append(pid)
        try:
            file_id = await api.upload(f"pandas-llm-{pid}.jsonl", part.data)
        except BaseException as exc:
            ledger.close(pid, "abandoned", f"upload failed: {exc!r}")  # no batch can exist without the file id
            self._parts.remove(pid)
            self._next = part  # sent again by the next call on this job
            raise
        ledger.set_file(pid, file_id)
        try:
            info = await api.create(file_id, self._metadata(pid, len(part.keys)), **self._endpoint())
        except (BadRequestError, FatalAPIError) as exc:
            ledger.close(pid, "abandoned", str(exc))  # refused: nothing was created
            self._parts.remove(pid)
            self._next = part
            await api.discard(file_id)  # no batch will read it
            raise
        # Any other failure leaves the part 'uploaded': a later poll or rerun finds or creates its batch.
        ledger.update(pid, info)
        self.stats.submitted += len(part.keys)
        log.info("pandas-llm: submitted batch %s with %d requests", info.id, len(part.keys))

    def _row_entries(self, keys: list[bytes]) -> list[bytes]:
        """Extra ledger entries for a part's requests (a packed job lists each pack's rows)."""
        return []

    def _endpoint(self) -> dict[str, str]:
        return {} if self.kind is None else {"endpoint": "/v1" + self.kind.path}

    def _metadata(self, pid: str, n: int) -> dict[str, str]:
        return {JOB_KEY: self.id, PART_KEY: pid, "pandas_llm_requests": str(n)}

    async def _resume(self, ledger: Ledger, api: BatchAPI, p: Part) -> Part | None:
        """A part recorded without a batch id: find its batch, or create it from its file."""
        if p.input_file_id is None:
            self._abandon(ledger, p.part, "abandoned", "the process stopped before the upload finished")
            return ledger.part(p.part)
        info = await api.find(part=p.part, file_id=p.input_file_id)
        if info is None:
            try:
                info = await api.create(p.input_file_id, self._metadata(p.part, p.requests), **self._endpoint())
            except (BadRequestError, FatalAPIError) as exc:
                self._abandon(ledger, p.part, "abandoned", f"could not create the batch: {exc}")
                await api.discard(p.input_file_id)
                return ledger.part(p.part)
        ledger.update(p.part, info)
        return ledger.part(p.part)

    def _abandon(self, ledger: Ledger, pid: str, state: str, error: str) -> None:
        """Close a part whose batch cannot give results; this job's requests in it go to a new batch."""
        keys = ledger.keys_of(pid)
        ledger.close(pid, state, error)
        log.info("pandas-llm: batch part %s %s (%s); its requests will be sent again", pid, state, error)
        if not self._submitted or self._cancelled:
            return  # before submitting, the plan still sends them; after a cancel, a rerun does
        slot_of, plan = self._collector.slot_of, self.plan
        again = [self._line((slot_of[k], k, plan.body_of(slot_of[k]))) for k in keys if k in slot_of]
        if again:
            limits = self.settings.batch_limits
            more = split_parts(again, limits, self._tokens_of() if limits.enqueued_tokens is not None else None,
                               **self._url())  # fmt: skip
            self._pending = more if self._pending is None else itertools.chain(more, self._pending)
