"""Packing at run time: several rows in one request (``rows_per_request=k``), one value per row back.

The request and answer format (the envelope) is ``_structured/packing.py``; this module
sends the packs through the engine and falls back row by row. Every id must come back
exactly once with a valid value. A row whose item fails validation, every row of a pack
whose answer's ids are not exactly 1..n once each (one missing, repeated or foreign: the
model did not read the items as framed, so no entry is trusted), and every row of a pack
that failed as a whole (invalid JSON after the retries, cut off at max_tokens, an HTTP 400)
is sent again on its own, automatically, after the packs. Rows that cannot be packed (a
template function returning its own system message or several messages) are simply sent
on their own. A pack whose retry the deadline (or a stop) cut short is not sent again,
alone or packed: its rows are status ``deadline`` (``stopped``) with the pack's last
error, as a single row's would be (send.CUT_SHORT).

Every write goes through the engine's committer: the engine's ``split`` hook turns a
pack's answer into its rows' records, committed in ONE transaction with the pack's own
answer (stored under the pack's request key, not counted), and each row is counted as a
request once committed: the counts come out right without patching. A pack whose answer
is on disk but whose rows are not (a file written by an older version, killed between
its two commits) is split again without being sent (``Engine.settle``).

Cache: rows are stored under :func:`packed_key`, so a rerun with any ``rows_per_request``
reuses them, whatever rows they were packed with; ``k`` only decides which rows share a
request. A packed run also reuses single-row answers (looked up first), and rows that
fell back are stored under their single-row keys, so a later run without packing reuses
those. A run without packing does not reuse packed answers: they answered a different
request.

Tokens saved: :class:`PackingReport` compares, with offline token counts, the prompt
tokens of what was sent (packs + fallbacks) with what the same rows would have taken
one request each (messages + ``response_format``); see ``pandas_llm.last_run().packing``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._config import Settings, Structured
from .._errors import ConfigError
from .._plan.planner import Plan, Sized
from .._plan.requests import RequestBuilder
from .._store.store import Record, Store
from .._structured.packing import Envelope, _counter, _rf_tokens, envelope_error, packed_key, shares
from .._structured.schema import Schema
from .send import CUT_SHORT, NOT_AGAIN

__all__ = ["Packer", "PackingReport", "Rows"]

#: Row records to commit: ``(row slot, record)``; slot None: stored only, not counted.
Rows = list[tuple[Any, Record]]


@dataclass
class PackingReport:
    """What packing did in one run; ``str()`` is a one-line summary."""

    rows_per_request: int
    packs: int = 0  # packed requests sent
    rows_packed: int = 0  # rows answered by a packed request
    reused: int = 0  # rows answered by packed answers already in the cache
    fallback_rows: int = 0  # rows sent again on their own
    fallback_reasons: Counter = field(default_factory=Counter)
    prompt_tokens_single: int = 0  # estimate: the sent rows as one request each
    prompt_tokens_sent: int = 0  # estimate: the packs and the fallback requests
    fallback_via: str = ""  # with the Batch API: "in realtime" | "in a follow-up batch"

    @property
    def saved_prompt_tokens(self) -> int:
        return self.prompt_tokens_single - self.prompt_tokens_sent

    @property
    def saved_fraction(self) -> float:
        return self.saved_prompt_tokens / self.prompt_tokens_single if self.prompt_tokens_single else 0.0

    def __str__(self) -> str:
        why = ", ".join(f"{n} {k}" for k, n in self.fallback_reasons.most_common())
        return (
            f"packing {self.rows_per_request} rows/request: {self.packs} packs answered "
            f"{self.rows_packed} rows, {self.fallback_rows} rows sent alone"
            + (f" ({why})" if why else "")
            + (f" {self.fallback_via}" if self.fallback_via and self.fallback_rows else "")
            + f"; prompt tokens ~{self.prompt_tokens_sent} instead of ~{self.prompt_tokens_single} "
            f"(saved ~{self.saved_prompt_tokens}, {self.saved_fraction:.0%})"
        )


class Packer:
    """Packs a plan's rows ``k`` at a time (``prepare`` then ``send``; see run.Run).

    ``row``, ``single_system``, ``head``, ``template``: see ``Envelope``.
    """

    def __init__(
        self, settings: Settings, k: int, *, row: Schema | None, single_system: str | None, head: str | None,
        structured: Structured, template: Any = None,
    ):  # fmt: skip
        if k < 2:
            raise ConfigError("packing needs rows_per_request >= 2")
        if row is not None and row.schema is None:
            raise ConfigError("rows_per_request > 1 needs a schema with properties, not plain 'json_object'")
        if row is None and "response_format" in settings.params:
            raise ConfigError("rows_per_request > 1 with response_format=: pass the schema as schema= instead")
        self.k = k
        self.report = PackingReport(k)
        self.envelope = Envelope(
            k, row, single_system=single_system, head=head, structured=structured, template=template
        )
        self._builder = RequestBuilder(
            _scaled(settings, k), extra={"response_format": self.envelope.response_format(structured)}
        )
        self._count = _counter(settings.model)
        self._rf_single = _rf_tokens(row.response_format(structured) if row is not None else None, self._count)
        self._rf_pack = _rf_tokens(self._builder.base["response_format"], self._count)
        self._members: dict[int, list[int]] = {}
        self._fallback: list[int] = []
        self._sent: dict[int, tuple[str, int]] = {}  # fell back from a pack sent: row -> (why, its attempts)
        # fell back from a pack answered: row -> its share of the pack's tokens and cost, which the
        # row's own outcome carries (the run paid it: details add up to RunStats)
        self._spent: dict[int, tuple[int, int, int, float | None]] = {}
        self._alone: set[int] = set()  # rows that could not be packed at all
        self._plan: Plan | None = None
        self._store: Store | None = None

    # -- before sending ------------------------------------------------------------------
    def prepare(self, plan: Plan, store: Store) -> None:
        """Fill rows already answered in a pack from the cache; the rest stay in ``plan.todo``."""
        self._plan, self._store = plan, store
        todo = plan.todo
        if not len(todo):
            return
        wanted = [packed_key(plan.keys[u]) for u in todo.tolist()]
        store.want(wanted)
        found = {r.key: r for r in store.lookup(wanted) if r.status == "ok"}
        if not found:
            return
        keep = np.ones(len(todo), dtype=bool)
        for i, (u, key) in enumerate(zip(todo.tolist(), wanted)):
            record = found.get(key)
            if record is not None:
                plan.outcomes.fill(u, record, from_cache=True)
                keep[i] = False
        self.report.reused = int((~keep).sum())
        plan.answered(todo[~keep])
        plan.todo = todo[keep]

    # -- sending -------------------------------------------------------------------------
    async def send(self, plan: Plan, engine: Callable[..., Any]) -> None:
        """Send the packs, then every row that needs its own request."""
        packs = engine(validate=envelope_error, split=self.split)
        await packs.run(Sized(self.jobs(plan, packs.settle), -(-len(plan.todo) // self.k)))
        if self._fallback:
            rows = sorted(self._fallback)
            self.report.fallback_rows = len(rows)
            alone = self._alone
            for u in rows:
                if u not in alone:  # rows never packed would have been sent alone anyway
                    self.report.prompt_tokens_sent += self._single_tokens(plan, u)
            fill = plan.outcomes.fill
            alone_run = engine(on_result=lambda u, record: fill(u, self.charged(u, record)))
            await alone_run.run(Sized(((u, plan.keys[u], plan.body_of(u)) for u in rows), len(rows)))

    def jobs(self, plan: Plan, settle: Callable[[Rows], None]) -> Iterator[tuple[int, bytes, bytes]]:
        """The packs of ``plan.todo`` to send, ``(pack id, key, body)``; a pack answered before
        a crash (its answer on disk, its rows not) is not sent: its rows go to ``settle``."""
        store = self._store
        pid = 0
        todo = plan.todo.tolist()
        for start in range(0, len(todo), self.k):
            members: list[int] = []
            contents: list[str] = []
            for u in todo[start : start + self.k]:
                content = self.envelope.content(plan.messages_of(u))
                if content is None:
                    self._alone.add(u)
                    self._fall_back(u, "not packable")
                else:
                    members.append(u)
                    contents.append(content)
            if not members:
                continue
            messages = self.envelope.messages(contents)
            key, body = self._builder.encode(messages)
            pid += 1
            self._members[pid] = members
            report = self.report
            report.prompt_tokens_sent += self._count(messages) + self._rf_pack
            report.prompt_tokens_single += sum(self._single_tokens(plan, u) for u in members)
            cached = [r for r in store.lookup([key]) if r.status == "ok"] if store is not None else []
            if cached:  # answered before a crash, not yet split into rows
                settle(self.rows(pid, cached[0]))
                continue
            report.packs += 1
            yield pid, key, body

    def layout(self, plan: Plan) -> Iterator[tuple[list[dict[str, Any]], int]]:
        """``(messages, rows)`` of every request a run of ``plan.todo`` would send first (packs,
        and rows that cannot be packed, alone), without sending: for estimates."""
        todo = plan.todo.tolist()
        for start in range(0, len(todo), self.k):
            contents = []
            for u in todo[start : start + self.k]:
                messages = plan.messages_of(u)
                content = self.envelope.content(messages)
                if content is None:
                    yield messages, 1
                else:
                    contents.append(content)
            if contents:
                yield self.envelope.messages(contents), len(contents)

    @property
    def response_format_tokens(self) -> tuple[int, int]:
        """Prompt tokens the response_format adds: (a single-row request, a pack)."""
        return self._rf_single, self._rf_pack

    # -- answers -------------------------------------------------------------------------
    def split(self, job: tuple[int, bytes, bytes], record: Record) -> Rows:
        """The engine's hook: a pack's answer -> its rows' records, and the pack's own answer
        (stored beside them in the same commit, not counted: its rows are); a pack whose retry
        was cut short (``CUT_SHORT``, never stored) -> its rows' records alone."""
        if record.status in CUT_SHORT:
            return self.rows(job[0], record)
        return [*self.rows(job[0], record), (None, record)]

    def rows(self, pid: int, record: Record) -> Rows:
        """Split pack ``pid``'s answer into its rows' records; queue the other rows for fallback."""
        members = self._members.pop(pid)
        plan = self._plan
        assert plan is not None
        if record.status in CUT_SHORT:  # its retry was cut short: so are its rows' (never stored)
            return [(u, record._replace(key=packed_key(plan.keys[u]))) for u in members]
        parts = shares(record.prompt_tokens, record.completion_tokens, record.cached_tokens, record.cost, len(members))
        if record.status != "ok":
            for u, part in zip(members, parts):
                self._spent[u] = part
                self._fall_back(u, f"pack {record.status}", record.attempts)
            return []
        rows: Rows = []
        values = self.envelope.values(record.output, len(members))
        for u, (output, why), (p, c, cached, cost) in zip(members, values, parts):
            if why is not None:
                self._spent[u] = (p, c, cached, cost)
                self._fall_back(u, why, record.attempts)
                continue
            rows.append((u, Record(packed_key(plan.keys[u]), "ok", output, record.finish_reason, p, c, cached, cost,
                                   None, 1, record.model)))  # fmt: skip
        self.report.rows_packed += len(rows)
        return rows

    def charged(self, u: int, record: Record) -> Record:
        """Row ``u``'s own outcome, plus its share of the pack it fell back from (for the run's
        details only: the stored answer keeps what its own request cost)."""
        spent = self._spent.pop(u, None)
        if spent is None:
            return record
        p, c, cached, cost = spent
        return record._replace(
            prompt_tokens=record.prompt_tokens + p,
            completion_tokens=record.completion_tokens + c,
            cached_tokens=record.cached_tokens + cached,
            cost=None if record.cost is None and cost is None else (record.cost or 0.0) + (cost or 0.0),
        )

    def charge_rest(self, outcomes: Any) -> None:
        """Add to ``outcomes`` the pack shares no row's own outcome took (``charged``): the
        Batch API's packed jobs fill their fallback rows elsewhere (_batch/packed.py)."""
        for u, (p, c, cached, cost) in self._spent.items():
            outcomes.prompt_tokens[u] += p
            outcomes.completion_tokens[u] += c
            outcomes.cached_tokens[u] += cached
            if cost is not None:
                outcomes.cost[u] = cost if np.isnan(outcomes.cost[u]) else outcomes.cost[u] + cost
        self._spent.clear()

    def _fall_back(self, u: int, reason: str, attempts: int = 0) -> None:
        """Queue row ``u`` to be sent alone; ``attempts``: its pack's, when the pack was sent."""
        self._fallback.append(u)
        if attempts:
            self._sent[u] = (reason, attempts)
        self.report.fallback_reasons[reason] += 1

    def unanswered(self, status: str) -> Rows:
        """The rows sent in a pack that gave them no value and that the run ended before sending
        alone (``status``: why it ended, ``deadline`` / ``stopped`` / ``budget``): each is cut
        short (sent, no answer kept), with the pack's reason. Rows answered since are skipped."""
        plan = self._plan
        if plan is None:
            return []
        status_of = plan.outcomes.status
        return [
            (
                u,
                self.charged(
                    u,
                    Record(
                        plan.keys[u],
                        status,
                        error=f"its pack's answer had no value for it ({why}); not sent again alone: {NOT_AGAIN[status]}",
                        attempts=attempts,
                    ),
                ),
            )  # fmt: skip
            for u, (why, attempts) in self._sent.items()
            if status_of[u] is None
        ]

    def _single_tokens(self, plan: Plan, u: int) -> int:
        return self._count(plan.messages_of(u)) + self._rf_single


def _scaled(settings: Settings, k: int) -> Settings:
    """A pack answers k rows: give it k times the output budget (plus room for ids)."""
    params = dict(settings.params)
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(params.get(name), int):
            params[name] = params[name] * k + 16 * k
    return settings.merged(params=params) if params != dict(settings.params) else settings
