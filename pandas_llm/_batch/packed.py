"""Packing through the Batch API: ``mode="batch", rows_per_request=k``.

The packs (packing.py: the same prompts, keys and answer checks as a realtime packed run)
are the lines of the batch files. As each output file is collected, every pack's answer
is split into its rows, each committed under its own packed key. A row whose item came
back invalid (or whose pack's answer had ids other than its rows', or failed as a whole)
is then sent again on its own, as its single-row request: by default in realtime right
after the batches are collected (a handful of rows, at realtime prices, said in
``last_run().packing``), or
with ``packed_fallback="batch"`` in one more batch of single-row requests (half price,
another wait). Rows of packs the API never ran (the batch expired or was cancelled) are
not resent: they keep that status, and the next run submits them again.

Progress and ``job.status()`` count packs as the batch's requests; ``job.result()``
returns one value per row, as the verb does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .._config import Settings
from .._plan.outcomes import Outcomes
from .._plan.planner import Plan
from .._plan.requests import to_keep
from .._run import run as _pipeline
from .._run.packing import Packer, Rows
from .._stats import RunReport, record_run
from .._store.ledger import Ledger, row_entry
from .._store.store import Record, Store
from .._structured.packing import envelope_error, packed_key
from .job import BatchJob

__all__ = ["PackedBatchJob"]

log = logging.getLogger("pandas_llm")


class PackedBatchJob(BatchJob):
    """A ``BatchJob`` whose requests are packs of ``packer.k`` rows of ``rows``.

    ``rows``: the row plan (after ``packer.prepare``: rows answered in earlier packs are
    filled); ``store``: open, to split packs already answered before a crash;
    ``validate``: the single-row answer check, for the rows sent again on their own.
    """

    def __init__(self, rows: Plan, packer: Packer, settings: Settings, store: Store, *, name: Any = None,
                 validate: Callable[[str | None], str | None] | None = None, **kw: Any):  # fmt: skip
        self.rows, self.packer = rows, packer
        packer._plan, packer._store = rows, store
        self._row_validate = validate
        self._resent = False
        pids: list[int] = []
        keys: list[bytes] = []
        bodies: list[bytes] = []

        def settle(answered: Rows) -> None:  # packs answered before a crash, split here
            _commit(store, rows, answered)

        held, self._in_flight, taken = self._held_packs(rows, packer, Ledger(store), settle)
        for u in self._in_flight:  # re-attached to in _resend, whatever packed_fallback says
            packer._fall_back(u, "in a batch in flight")
        todo = rows.todo
        if taken:
            rows.todo = np.asarray([u for u in todo.tolist() if u not in taken], dtype=np.int64)
        try:
            for pid, key, body in itertools.chain(held, packer.jobs(rows, settle)):
                pids.append(pid)
                keys.append(key)
                bodies.append(to_keep(body))  # held until the job ends
        finally:
            rows.todo = todo
        self._members_of = {keys[i]: packer._members[pid] for i, pid in enumerate(pids)}
        self._pids = pids
        n = len(keys)
        packs = Plan(pd.RangeIndex(n), np.arange(n), keys, np.arange(n), np.arange(n), Outcomes(n),
                     packer._builder, None, _bodies=list(bodies))  # fmt: skip
        super().__init__(packs, settings, name=name, validate=envelope_error, **kw)
        self.rows = rows  # the result is the rows', the batch lines are the packs
        self._collector.on_result = self._split
        s, codes = self.stats, rows.codes
        sent = codes >= 0
        s.total, s.unique, s.skipped = len(codes), len(rows.keys), int((~sent).sum())
        s.cached = int(rows.outcomes.from_cache[codes[sent]].sum()) if len(rows.keys) else 0
        s.cached_unique = int(rows.outcomes.from_cache.sum())
        s.saved_cost = float(np.nansum(rows.outcomes.cost[rows.outcomes.from_cache]))

    @staticmethod
    def _held_packs(
        rows: Plan, packer: Packer, ledger: Ledger, settle: Callable[[Rows], None]
    ) -> tuple[list[tuple[int, bytes, bytes]], list[int], set[int]]:
        """What open batches (of an earlier run, maybe killed) hold of ``rows.todo``, by row key.

        Returns the packs in flight, rebuilt exactly as they were sent (same rows, same order,
        so the same pack key: the job re-attaches to their batch), their rows registered in
        ``packer`` (a pack already answered is split at once and not returned); and the rows
        an open batch of single-row requests holds (a follow-up batch), which ``_resend``
        re-attaches to; and every row of either kind. The other rows are packed afresh."""
        todo = rows.todo.tolist()
        if not todo:
            return [], [], set()
        single = ledger.covering([rows.keys[u] for u in todo])
        in_flight = [u for u in todo if rows.keys[u] in single]
        packs = ledger.held_rows()
        if not packs:
            return [], in_flight, set(in_flight)
        slot = {packed_key(rows.keys[u]): u for u in todo}
        store = packer._store
        report, out, used = packer.report, [], set(in_flight)
        for pack, entries in packs.items():
            found = [slot.get(row) for _, row, _ in sorted(entries)]
            members = [u for u in found if u is not None and u not in used]
            if len(members) < len(found):
                continue  # not all its rows are ours to wait for: they are packed afresh
            rendered = [packer.envelope.content(rows.messages_of(u)) for u in members]
            contents = [c for c in rendered if c is not None]
            if len(contents) < len(rendered):
                continue
            messages = packer.envelope.messages(contents)
            key, body = packer._builder.encode(messages)
            if key != pack:
                log.warning("pandas-llm: a batch in flight holds %d of these rows in a pack this call does not "
                            "rebuild (another template or settings); they are packed again", len(members))  # fmt: skip
                continue
            used.update(members)
            pid = -1 - len(used)  # the packs built afresh have ids from 1 up
            packer._members[pid] = members
            report.prompt_tokens_sent += packer._count(messages) + packer._rf_pack
            report.prompt_tokens_single += sum(packer._single_tokens(rows, u) for u in members)
            cached = [r for r in store.lookup([key]) if r.status == "ok"] if store is not None else []
            if cached:  # answered, not yet split into rows
                settle(packer.rows(pid, cached[0]))
                continue
            report.packs += 1
            out.append((pid, key, body))
        return out, in_flight, used

    def _row_entries(self, keys: list[bytes]) -> list[bytes]:
        row_keys = self.rows.keys
        return [
            row_entry(key, i, packed_key(row_keys[u]))
            for key in keys
            for i, u in enumerate(self._members_of.get(key, ()))
        ]

    def _split(self, u: int, record: Record, store: Store) -> None:
        packer = self.packer
        if self._pids[u] not in packer._members:
            return  # split already (a result seen twice)
        _commit(store, self.rows, packer.rows(self._pids[u], record))  # this poll's sidecar connection

    async def await_done(self) -> None:
        await super().await_done()
        if not self._resent:
            self._resent = True
            await self._resend()
        record_run(RunReport(self.stats, self.rows, self.packer.report))

    async def _resend(self) -> None:
        """Label the rows of packs never answered; send the rows that need their own request;
        then give each row that fell back from a pack its share of that pack (details add up)."""
        try:
            await self._resend_rows()
        finally:
            self.packer.charge_rest(self.rows.outcomes)

    async def _resend_rows(self) -> None:
        rows, packer, packs = self.rows, self.packer, self.plan
        for u, pid in enumerate(self._pids):
            members = packer._members.pop(pid, None)
            if members:  # the API never ran this pack (expired, cancelled, stopped): a rerun submits it
                for m in members:
                    rows.outcomes.status[m] = packs.outcomes.status[u] or "stopped"
                    rows.outcomes.error[m] = packs.outcomes.error[u]
        todo = sorted(set(packer._fallback))
        report = packer.report
        report.fallback_rows = len(todo)
        if not todo or self._cancelled:
            for m in todo:
                if rows.outcomes.status[m] is None:
                    rows.outcomes.status[m] = "cancelled" if self._cancelled else "stopped"
            return
        for m in todo:
            if m not in packer._alone:
                report.prompt_tokens_sent += packer._single_tokens(rows, m)
        rows.todo = np.asarray(todo, dtype=np.int64)
        via = self.settings.packed_fallback
        report.fallback_via = "in realtime" if via == "realtime" else "in a follow-up batch"
        cap, budget = self.settings.max_cost, self._budget
        if cap is not None and budget is not None and cap - budget.spent <= 0:
            for m in todo:
                rows.outcomes.status[m] = "budget"
            return
        left = self.settings.merged(max_cost=None if budget is None else cap - budget.spent)  # what max_cost leaves
        held = set(self._in_flight)
        if via == "realtime" and held:  # rows a follow-up batch of an earlier run holds: wait for it
            rows.todo = np.asarray([u for u in todo if u in held], dtype=np.int64)
            job = BatchJob(rows, left, name=self.name, validate=self._row_validate, sleep=self.sleep)
            await job.await_done()
            self._add(job.stats)
            rows.todo = np.asarray([u for u in todo if u not in held], dtype=np.int64)
            if not len(rows.todo):
                return
        if via == "realtime":
            run = _pipeline.Run(None, None, left.merged(mode="realtime"), validate=self._row_validate, plan=rows)
            await run.execute()
            more = run.stats
        else:
            job = BatchJob(rows, left, name=self.name, validate=self._row_validate, sleep=self.sleep)
            await job.await_done()
            more = job.stats
        self._add(more)

    def _add(self, more: Any) -> None:
        s = self.stats
        s.sent_done += more.sent_done
        s.ok += more.ok
        s.failed.update(more.failed)
        s.prompt_tokens += more.prompt_tokens
        s.completion_tokens += more.completion_tokens
        s.cached_tokens += more.cached_tokens
        s.cost += more.cost
        s.cost_known = s.cost_known and more.cost_known

    def _packing_report(self) -> Any:
        return self.packer.report


def _commit(store: Store, plan: Plan, rows: Rows) -> None:
    """Commit a pack's rows, then fill them (the Batch API's results are written as they are
    read, in transactions: collect.py; no committer thread here)."""
    if rows:
        store.write(r for _, r in rows)
        for u, r in rows:
            plan.outcomes.fill(u, r)
