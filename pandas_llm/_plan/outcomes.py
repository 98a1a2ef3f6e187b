"""Results: per-request outcomes, assembled into a Series / DataFrame aligned to the input.

Outcomes are kept per distinct request in flat numpy arrays (not one object per row),
then broadcast to rows through the dedup codes at the end.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from .._store.store import Record

__all__ = ["Outcomes", "RowStatus", "STATUS_MEANING", "Unsent"]

#: Why a row was never sent (the engine's own marker for a job it did not send is "unsent").
Unsent = Literal["skipped", "budget", "stopped", "deadline", "expired", "cancelled"]
#: A row's status in ``last_run().details``: "ok", a failure, or why it was never sent.
RowStatus = Literal[
    "ok",
    "error",
    "failed",
    "length",
    "content_filter",
    "refused",
    "empty",
    "invalid",
    "too_long",
    "token_limit",
    Unsent,
]

#: What each per-row status means, for the failure warning and the docs.
STATUS_MEANING: dict[RowStatus, str] = {
    "ok": "answered",
    "skipped": "not sent: a cell used by the template was NA",
    "error": "the endpoint refused the request (HTTP 400 or similar) or answered with an error",
    "failed": "transient errors persisted after every retry",
    "length": "cut off at max_tokens (finish_reason=length)",
    "content_filter": "withheld or refused by the provider's content filter (finish_reason or an HTTP 400 about the prompt's content)",
    "refused": "the model refused to answer",
    "empty": "the model answered with an empty string",
    "invalid": "the answer did not match the schema",
    "budget": "not sent: it could have taken the run over max_cost",
    "too_long": "not sent: the prompt does not fit the model's context window",
    "token_limit": "its batch was refused over the account's enqueued-token limit: lower batch_limits={'enqueued_tokens': ...}",
    "stopped": "not sent, or sent and left without an answer: the run was stopped (interrupt or fatal error)",
    "deadline": "not sent (or its retry not sent): the run's deadline passed first",
    "expired": "its batch expired before answering it; a rerun submits it again",
    "cancelled": "its batch was cancelled before answering it; a rerun submits it again",
}


class Outcomes:
    """One slot per distinct request; filled from the cache and as answers arrive."""

    def __init__(self, n: int):
        self.output = np.full(n, None, dtype=object)
        self.status = np.full(n, None, dtype=object)
        self.error = np.full(n, None, dtype=object)
        self.finish_reason = np.full(n, None, dtype=object)
        self.prompt_tokens = np.zeros(n, dtype=np.int64)
        self.completion_tokens = np.zeros(n, dtype=np.int64)
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        self.cost = np.full(n, np.nan)
        self.attempts = np.zeros(n, dtype=np.int64)
        self.from_cache = np.zeros(n, dtype=bool)
        self.elsewhere = np.zeros(n, dtype=bool)  # answered by another run of this process, which paid

    def fill(self, u: int, r: Record, *, from_cache: bool = False) -> None:
        self.output[u] = r.output
        self.status[u] = r.status
        self.error[u] = r.error
        self.finish_reason[u] = r.finish_reason
        self.prompt_tokens[u] = r.prompt_tokens
        self.completion_tokens[u] = r.completion_tokens
        self.cached_tokens[u] = r.cached_tokens
        self.cost[u] = np.nan if r.cost is None else r.cost
        self.attempts[u] = r.attempts
        self.from_cache[u] = from_cache
        self.elsewhere[u] = False

    def paid_elsewhere(self, u: int) -> None:
        """Slot ``u`` was answered by another run of this process (``RunStats.shared``): its
        tokens and cost are that run's figures, so its rows show 0 in this run's details."""
        self.elsewhere[u] = True

    def records(self, keys: Any, model: str | None = None) -> list[Record]:
        """A Record for every slot with an outcome from the endpoint or the cache (not the
        unsent ones): what a recreated cache file must hold again."""
        unsent = {None, "unsent", *get_args(Unsent)}
        out = []
        for u in np.flatnonzero([st not in unsent for st in self.status]).tolist():
            cost = self.cost[u]
            out.append(Record(
                keys[u], self.status[u], self.output[u], self.finish_reason[u], int(self.prompt_tokens[u]),
                int(self.completion_tokens[u]), int(self.cached_tokens[u]), None if np.isnan(cost) else float(cost),
                self.error[u], int(self.attempts[u]), model,
            ))  # fmt: skip
        return out

    def mark_unsent(self, status: Unsent) -> int:
        """Label every slot that got no outcome (the run stopped before sending it); return how many."""
        empty = self.status == None  # noqa: E711 - elementwise
        self.status[empty] = status
        return int(empty.sum())

    def _answers(self) -> np.ndarray:
        """Each request's output where it is ok, None elsewhere."""
        out = self.output.copy()
        out[self.status != "ok"] = None
        return out

    def series(self, codes: np.ndarray, index: pd.Index, name: Any = None) -> pd.Series:
        """The answers per row: string dtype, NA where a row was skipped or failed."""
        values = _take(self._answers(), codes, None)
        return pd.Series(pd.array(values, dtype="string"), index=index, name=name, copy=False)

    def details(self, codes: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """Per row (aligned to ``index``): ``output`` and ``status`` / ``error`` / ``finish_reason``
        (string), ``prompt_tokens`` / ``completion_tokens`` / ``cached_tokens`` (Int64),
        ``cost`` and ``saved_cost`` (Float64, USD), ``attempts`` (Int64), ``from_cache`` (bool).

        The figures are additive: summed over the rows they give the run's own (``RunStats``'
        ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``cost`` and ``saved_cost``).
        Rows with the same request (duplicates, sent once) each show an equal share of it, integer
        tokens split so they add up exactly (the remainder on the first rows, in input order), as
        the rows of a pack share their pack's. A row answered from the cache shows 0 tokens and 0
        cost (this run paid nothing); ``saved_cost`` is its share of what its answer cost when it
        was paid for (0 on the other rows). A row another run of this process answered while
        both ran (``RunStats.shared``) shows 0 too: that run counts it. ``cost`` is NA where the price is unknown or nothing
        was billed for a row that got no answer; ``attempts`` is its request's HTTP attempts."""
        n = len(self.status)
        rows = np.bincount(codes[codes >= 0], minlength=n) if n else np.zeros(0, dtype=np.int64)
        rank = _rank(codes)
        fresh = ~self.from_cache & ~self.elsewhere

        def tokens(per_request: np.ndarray) -> pd.arrays.IntegerArray:
            due = _take(np.where(fresh, per_request, 0), codes, 0).astype(np.int64)
            q, r = np.divmod(due, np.maximum(_take(rows, codes, 1).astype(np.int64), 1))
            return pd.array(q + (rank < r), dtype="Int64")

        def money(per_request: np.ndarray) -> pd.arrays.FloatingArray:
            each = per_request / np.maximum(rows, 1)
            return pd.array(_take(each, codes, np.nan).astype(float), dtype="Float64")

        frame = pd.DataFrame(
            {
                "output": pd.array(_take(self._answers(), codes, None), dtype="string"),
                "status": pd.array(_take(self.status, codes, "skipped"), dtype="string"),
                "error": pd.array(_take(self.error, codes, None), dtype="string"),
                "finish_reason": pd.array(_take(self.finish_reason, codes, None), dtype="string"),
                "prompt_tokens": tokens(self.prompt_tokens),
                "completion_tokens": tokens(self.completion_tokens),
                "cached_tokens": tokens(self.cached_tokens),
                "cost": money(np.where(fresh, self.cost, 0.0)),
                "saved_cost": money(np.where(self.from_cache, self.cost, 0.0)),
                "attempts": pd.array(_take(self.attempts, codes, 0), dtype="Int64"),
                "from_cache": _take(self.from_cache, codes, False).astype(bool),
            },
            index=index,
        )
        return frame

    def row_status_counts(self, codes: np.ndarray) -> Counter:
        statuses = _take(self.status, codes, "skipped")
        return Counter(statuses.tolist())


def _rank(codes: np.ndarray) -> np.ndarray:
    """Each row's position among the rows with the same code, in input order (0 for the first).

    >>> _rank(np.array([2, 0, 2, -1, 2, 0])).tolist()
    [0, 0, 1, 0, 2, 1]
    """
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(codes) else np.zeros(0, np.int64)
    first = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - first
    return rank


def _take(per_unique: np.ndarray, codes: np.ndarray, fill: Any) -> np.ndarray:
    """Broadcast per-request values to rows; code -1 (a skipped row) gets ``fill``."""
    if len(codes) == 0:
        return per_unique[:0]
    out = per_unique[np.maximum(codes, 0)] if len(per_unique) else np.full(len(codes), fill, dtype=object)
    skipped = codes < 0
    if skipped.any():
        out = out.astype(object) if out.dtype != object and fill is None else out.copy()
        out[skipped] = fill
    return out
