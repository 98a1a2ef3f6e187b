"""Collecting: a finished batch's output and error files -> the cache, the outcomes, the figures.

Each line is matched to its request by ``custom_id`` (the API does not keep order) and
written to the cache as the file is parsed, in transactions of a few thousand, before
it is counted. A failed request (error-file line, non-200 status, a batch that failed
validation, a line the API never returned) becomes a failed row with its error, retried
by the next run. A request an expired or cancelled batch never ran is not a failure:
nothing is written, and the next run sends it again.

With a schema (``validate=``, the same hook the realtime engine gets: parse.Parser.error)
every answer is validated before it is written: one that fails is stored as ``invalid``
with the validation error and its tokens and cost (it was paid), never as ``ok``. It is
not resent within the job (that would be another batch, another wait of up to 24h):
like every row that is not ``ok``, the next run sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from .._backends import Completion
from .._plan.planner import Plan
from .._pricing import Price, usage_cost
from .._store.ledger import Ledger
from .._store.store import Record, Store
from .client import BatchAPI, BatchInfo
from .files import parse_line
from .status import BatchStats

__all__ = ["Collector"]

log = logging.getLogger("pandas_llm")

_WRITE_EVERY = 5000  # results per cache transaction while a file is parsed (a commit costs ~10 ms)


class Collector:
    """Writes results for one job: ``slot_of`` maps this job's request keys to plan slots;
    results for other keys (a re-attached batch of another job) are cached, not counted."""

    def __init__(self, plan: Plan, stats: BatchStats, *, model: str, endpoint: str, price: Price | None,
                 validate: Callable[[str | None], str | None] | None = None, tools: bool = False,
                 answer: Any = None):  # fmt: skip
        self.plan, self.stats = plan, stats
        self.model, self.endpoint, self.price = model, endpoint, price
        self.validate = validate
        self.tools = tools  # the requests asked for tools: finish_reason="tool_calls" is an answer
        self.answer = answer  # a list-input endpoint's judge of a 200 body (endpoints.py); None: chat
        self.slot_of: dict[bytes, int] = {}
        #: ``(slot, record, store)`` after a result of this job is filled (a packed batch splits packs here)
        self.on_result: Callable[[int, Record, Store], None] | None = None
        self.unanswered: dict[int, str] = {}  # slot -> "expired" | "cancelled"

    async def collect(self, ledger: Ledger, api: BatchAPI, pid: str, info: BatchInfo) -> None:
        """Write every line of the output and error files to the cache, then close the part."""
        keys = set(ledger.keys_of(pid))
        seen: set[bytes] = set()
        buffer: list[Record] = []
        store = ledger.store
        model, endpoint = self.model, self.endpoint
        for file_id in (info.output_file_id, info.error_file_id):
            if not file_id:
                continue
            async for raw in api.lines(file_id):
                key, record, unanswered = parse_line(raw, cost=self.cost, model=model, endpoint=endpoint,
                                                     tools=self.tools, answer=self.answer)  # fmt: skip
                if key is None or key not in keys or key in seen:
                    continue
                seen.add(key)
                if record is not None:
                    if record.status == "ok" and self.validate is not None:
                        error = self.validate(record.output)
                        if error is not None:
                            record = record._replace(status="invalid", error=error)
                    buffer.append(record)
                    if len(buffer) >= _WRITE_EVERY:
                        self.write(store, buffer)
                        buffer = []
                elif unanswered is not None and key in self.slot_of:
                    self.unanswered[self.slot_of[key]] = unanswered
        missing = keys - seen
        if missing and info.status == "completed":
            error = f"batch {info.id} completed without a result for this request"
            buffer.extend(Record(k, "failed", error=error, model=model) for k in missing)
        elif missing and info.status == "failed":
            error = f"batch {info.id} failed: {info.errors or 'no reason given'}"
            status = "failed"
            if "token_limit_exceeded" in (info.errors or ""):  # not transient: this job's parts are too big
                status = "token_limit"
                error += (f". The tokens enqueued at once for {model!r} exceed the account's limit: pass "
                          "batch_limits={'enqueued_tokens': N} with N below that limit (batches then wait for "
                          "earlier ones to finish), then run the same call again")  # fmt: skip
            buffer.extend(Record(k, status, error=error, model=model) for k in missing)
        else:
            for k in missing:
                if k in self.slot_of:
                    self.unanswered[self.slot_of[k]] = info.status
        self.write(store, buffer)
        ledger.close(pid, info.status, info.errors)
        log.info("pandas-llm: collected batch %s (%s): %d results", info.id, info.status, len(seen))

    def cost(self, c: Completion) -> float | None:
        """The answer at Batch API rates (the realtime price is added to ``realtime_cost``)."""

        def priced(batch: bool) -> float | None:
            return usage_cost(self.price, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                              cached_tokens=c.cached_tokens, batch=batch)  # fmt: skip

        realtime = priced(batch=False)
        if realtime is not None:
            self.stats.realtime_cost += realtime
        return priced(batch=True)

    def write(self, store: Store, records: list[Record]) -> None:
        """Commit, then count (never the other way round)."""
        if not records:
            return
        records = [r if r.error is None else r.redacted() for r in records]  # an error line may echo the key
        store.write(records)
        stats, outcomes, slot_of = self.stats, self.plan.outcomes, self.slot_of
        for r in records:
            stats.prompt_tokens += r.prompt_tokens
            stats.completion_tokens += r.completion_tokens
            stats.cached_tokens += r.cached_tokens
            if r.cost is not None:
                stats.cost += r.cost
            elif r.prompt_tokens or r.completion_tokens:
                stats.cost_known = False  # paid for, price unknown
            u = slot_of.get(r.key)
            if u is None:
                continue  # another job's request in a batch we re-attached to: cached, not ours
            outcomes.fill(u, r)
            if self.on_result is not None:
                self.on_result(u, r, store)
            stats.sent_done += 1
            if r.status == "ok":
                stats.ok += 1
            else:
                stats.failed[r.status] += 1

    def finish(self, store: Store, *, unsent: str) -> None:
        """Fill the slots other processes collected (from the cache); label the rest
        ``expired`` / ``cancelled`` (their batch never ran them) or ``unsent``. A plain job
        counts them as RunStats' identities say: collected elsewhere as from the cache, in a
        batch that never ran them as cut short, the others as unsent (a packed job's slots are
        its packs: it counts its rows itself, packed.py)."""
        plan, outcomes, stats = self.plan, self.plan.outcomes, self.stats
        counted = self.on_result is None
        empty = [u for u in plan.todo.tolist() if outcomes.status[u] is None]
        if empty:
            slot_of = {plan.keys[u]: u for u in empty}
            found = list(store.lookup(list(slot_of)))
            rows_of = np.bincount(plan.codes[plan.codes >= 0], minlength=len(plan.keys)) if found and counted else None
            for record in found:
                u = slot_of[record.key]
                outcomes.fill(u, record, from_cache=counted)
                if self.on_result is not None:
                    self.on_result(u, record, store)
                if rows_of is not None:
                    stats.cached_unique += 1
                    stats.cached += int(rows_of[u])
                    stats.to_send -= 1
        for u in empty:
            if outcomes.status[u] is None:
                why = self.unanswered.get(u)
                outcomes.status[u] = why or unsent
                if counted:
                    (stats.unsent if why is None else stats.cut_short)[why or unsent] += 1
