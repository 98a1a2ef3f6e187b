"""Grouping: many rows in one request for endpoints that take a list of texts.

The plan's distinct texts are sent ``inputs_per_request`` at a time (and under the
endpoint's token cap per request); each answer is split back into one record per row,
under the row's own key (endpoints.py), and committed by the engine like any answer:
a rerun finds every row again whatever it was grouped with, and a kill -9 loses only
the requests in flight.

A text over the model's token limit is that row's ``too_long`` error before anything is
sent. A request the endpoint refuses (HTTP 400: OpenAI refuses the whole list for one
bad text) is split and sent again: the text the error names (``input[i]``) alone and the
rest together, or the two halves when it names none, so only the bad rows end as errors.
Other failures (after the engine's retries) are every row's of that request, a retry the
deadline (or a stop) cut short too: every row is ``deadline`` (``stopped``), never stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .._plan.endpoints import PER_TOKEN_LIST
from .._plan.planner import Plan
from .._store.store import Record, Store
from .send import NOT_AGAIN
from .stopping import ShapeWatch

__all__ = ["Grouper", "GroupingReport"]

_NAMED = re.compile(r"input\[(\d+)\]")
_ABOUT_INPUT = re.compile(r"\binput\b", re.I)


@dataclass
class GroupingReport:
    """What grouping did in one run; ``str()`` is a one-line summary."""

    inputs_per_request: int
    requests: int = 0  # requests sent (first sends and resends after a split)
    splits: int = 0  # refused requests split and sent again
    too_long: int = 0  # rows over the model's token limit, never sent

    def __str__(self) -> str:
        return (
            f"up to {self.inputs_per_request} inputs/request: {self.requests} requests"
            + (f", {self.splits} split after a refusal" if self.splits else "")
            + (f", {self.too_long} rows over the token limit" if self.too_long else "")
        )


class Grouper:
    """The packing seam of ``pipeline.Run`` for list-input endpoints (``prepare`` then ``send``)."""

    def __init__(self, kind: Any, settings: Any, inputs_per_request: int | None = None):
        self.kind = kind
        self.k = min(inputs_per_request or kind.max_inputs, kind.max_inputs)
        self.cap = kind.max_request_tokens
        self.limit = kind.max_input_tokens(settings.model)
        self.model = settings.model
        self.report = GroupingReport(self.k)
        self._base: dict[str, Any] = {}
        self._members: dict[int, list[tuple[int, bytes, str, int]]] = {}
        self._next: list[list[tuple[int, bytes, str, int]]] = []
        self._too_long: list[tuple[int, Record]] = []
        self._refused: dict[int, Record] = {}  # rows of a request refused, to send again: row -> its record
        self._pid = 0
        self._shape = _OneInputShapeWatch()
        self._plan: Plan | None = None
        self._store: Store | None = None

    def prepare(self, plan: Plan, store: Store) -> None:
        self._plan, self._store = plan, store
        self._base = plan.builder.base

    async def send(self, plan: Plan, engine: Callable[..., Any]) -> None:
        groups: Iterable[list[tuple[int, bytes, str, int]]] = self._groups(plan)
        while True:
            self._next = []
            run = engine(split=self._split, shape=self._shape)
            await run.run(self._jobs(groups, run.settle))
            if not self._next:
                return
            groups = self._next

    # -- requests ------------------------------------------------------------------------
    def _groups(self, plan: Plan) -> Iterator[list[tuple[int, bytes, str, int]]]:
        """Rows in plan order, ``k`` at a time and under the token cap; too-long rows set aside."""
        group: list[tuple[int, bytes, str, int]] = []
        tokens = 0
        loads, k, cap, limit = orjson.loads, self.k, self.cap, self.limit
        for u, key, body in plan.jobs():
            text = loads(body)["input"]
            n = len(text.encode())  # tokens <= UTF-8 bytes: exact counts only for long texts
            if n > 1000 and (limit is not None or cap is not None):
                n = self._count(text)
            if limit is not None and n > limit:
                error = (f"the text has {n} tokens, over the {limit}-token input limit of {self.model}; "
                         "shorten it (it was not sent)")  # fmt: skip
                self._too_long.append((u, Record(key, "too_long", error=error, attempts=0, model=self.model)))
                continue
            if group and (len(group) >= k or (cap is not None and tokens + n > cap)):
                yield group
                group, tokens = [], 0
            group.append((u, key, text, n))
            tokens += n
        if group:
            yield group

    def _count(self, text: str) -> int:
        from .._cost.tokens import count_text_tokens, encoding_name_for

        if encoding_name_for(self.model) is None:
            return len(text.encode())
        return count_text_tokens(text, self.model)

    def _jobs(
        self, groups: Iterable[list[tuple[int, bytes, str, int]]], settle: Callable[[list[tuple[int, Record]]], None]
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """The requests of ``groups``; the rows found too long meanwhile go to ``settle`` (the
        engine commits them, then counts them like any failure)."""
        for group in groups:
            self._settle_too_long(settle)
            if len(group) > self.k:  # k dropped to 1 (see _split) after this group was made
                self._next.extend([m] for m in group)
                continue
            self._pid += 1
            self._members[self._pid] = group
            self.report.requests += 1
            yield self._pid, group[0][1], self.kind.request(self._base, [m[2] for m in group])
        self._settle_too_long(settle)

    # -- answers -------------------------------------------------------------------------
    def _split(self, job: tuple[int, bytes, bytes], record: Record) -> list[tuple[int, Record]]:
        """The engine's hook: one request's record -> one record per row (or a resend)."""
        group = self._members.pop(job[0])
        if record.status == "ok":
            outputs = record.output
            if isinstance(outputs, list) and len(outputs) == len(group):
                return self._rows(group, record, outputs)
            got = len(outputs) if isinstance(outputs, list) else 0
            record = record._replace(status="error", output=None, error=f"the endpoint answered {got} results "
                                     f"for {len(group)} inputs")  # fmt: skip
        if record.status == "error" and len(group) > 1:  # sent again, split: sent already if the run ends first
            self._refused.update((m[0], record._replace(key=m[1], output=None)) for m in group)
        if record.status == "error" and len(group) > 1 and PER_TOKEN_LIST in (record.error or ""):
            self.k = 1  # this server cannot answer lists faithfully: one text per request from now on
            self._next.extend([m] for m in group)
            return []
        if record.status == "error" and len(group) > 1:
            self.report.splits += 1
            named = _named_input(record.error, len(group))
            if named is not None:
                parts = [[group[named]], group[:named] + group[named + 1 :]]
            else:
                half = len(group) // 2
                parts = [group[:half], group[half:]]
            self._next.extend(p for p in parts if p)
            return []
        return [(m[0], record._replace(key=m[1], output=None)) for m in group]

    def _rows(
        self, group: list[tuple[int, bytes, str, int]], record: Record, outputs: list[Any]
    ) -> list[tuple[int, Record]]:
        """Per-row records; the request's tokens and cost shared in proportion to each text's size."""
        sizes = np.fromiter((max(m[3], 1) for m in group), dtype=np.float64, count=len(group))
        weights = sizes / sizes.sum()
        tokens = _split_int(record.prompt_tokens, weights)
        cost = None if record.cost is None else (record.cost * weights).tolist()
        return [
            (
                m[0],
                Record(
                    m[1],
                    "ok",
                    out,
                    None,
                    int(t),
                    0,
                    0,
                    None if cost is None else cost[i],
                    None,
                    record.attempts,
                    record.model,
                ),
            )  # fmt: skip
            for i, (m, out, t) in enumerate(zip(group, outputs, tokens))
        ]

    def unanswered(self, status: str) -> list[tuple[int, Record]]:
        """The rows of a refused request that the run ended before sending again (``status``: why
        it ended, ``deadline`` / ``stopped`` / ``budget``): each is cut short (sent, no answer
        kept), with the refusal. Rows answered since are skipped."""
        plan = self._plan
        if plan is None:
            return []
        status_of = plan.outcomes.status
        return [
            (
                u,
                r._replace(
                    status=status,
                    error=f"{r.error} (its request of several inputs was refused; not sent again: {NOT_AGAIN[status]})",
                ),
            )  # fmt: skip
            for u, r in self._refused.items()
            if status_of[u] is None
        ]

    def _settle_too_long(self, settle: Callable[[list[tuple[int, Record]]], None]) -> None:
        """Rows refused before sending: committed, shown and counted like any failure."""
        rows, self._too_long = self._too_long, []
        if rows:
            self.report.too_long += len(rows)
            settle(rows)


class _OneInputShapeWatch(ShapeWatch):
    """The engine's watch for refusals of the request's shape (the same refusal of the first
    requests stops the run), not told of a list refused for its input (``'$.input' is
    invalid``, ``input[3]``): that may be one bad text's fault, and the list is split."""

    def refused(self, exc: Any, body: bytes) -> Any:
        inputs = orjson.loads(body).get("input")
        if isinstance(inputs, list) and len(inputs) > 1 and _ABOUT_INPUT.search(str(exc)):
            return None
        return super().refused(exc, body)


def _named_input(error: str | None, n: int) -> int | None:
    """The index of the text a 400 names (``input[3]``), if it names one in range."""
    m = _NAMED.search(error or "")
    if m is None:
        return None
    i = int(m.group(1))
    return i if 0 <= i < n else None


def _split_int(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split by ``weights`` into integers that add up to it exactly."""
    raw = total * weights
    out = np.floor(raw).astype(np.int64)
    rest = int(total - out.sum())
    if rest > 0:
        out[np.argsort(out - raw)[:rest]] += 1
    return out
