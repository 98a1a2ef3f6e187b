"""What a run did, below the engine and the displays: the live counters (``RunStats``)
and the report ``pandas_llm.last_run()`` returns (``RunReport``).

The engine and the Batch API write the counters, the observers (_display) read them; the
report is recorded by whichever of a realtime run or a batch job ran last.

    >>> s = RunStats(total=4, unique=3, cached_unique=1, sent_done=1)
    >>> s.done_rows
    2
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from ._errors import StoreError
from ._pricing import money

__all__ = ["RunOutcome", "RunStats", "RunReport", "last_run", "record_run", "cached_share"]

#: How a run (or a Batch API job) stands: under way, or how it ended.
RunOutcome = Literal["running", "done", "interrupted", "failed"]


@dataclass
class RunStats:
    """Live counters of one run; observers read them, the engine writes them."""

    total: int = 0  # rows in the frame
    unique: int = 0  # distinct requests among them
    skipped: int = 0  # rows not sent (NA cells)
    cached: int = 0  # rows answered from the cache
    cached_unique: int = 0  # distinct requests answered from the cache
    to_send: int = 0  # distinct requests that need the endpoint
    sent_done: int = 0  # of those, finished (ok or failed), committed
    ok: int = 0  # of those, succeeded
    failed: Counter = field(default_factory=Counter)  # by status / error kind
    in_flight: int = 0
    retries: int = 0
    attempts: int = 0  # HTTP attempts (a request's first send and each retry)
    rate_limited: int = 0  # 429s at the account's limit (every worker paused)
    overloaded: int = 0  # 429s with the limit not reached (server busy): that request retried
    timeouts: int = 0  # attempts that got no answer within the timeout
    prompt_tokens: int = 0
    completion_tokens: int = 0  # every output token billed, reasoning tokens included
    reasoning_tokens: int = 0  # of those, a reasoning model's hidden ones
    cached_tokens: int = 0
    cost: float = 0.0
    cost_known: bool = True
    saved_cost: float = 0.0  # what the cached rows cost when they were paid for
    max_cost: float | None = None  # the budget cap, if any (budget.py)
    reserved_cost: float = 0.0  # worst cases reserved by requests in flight
    budget_reached: bool = False  # the next request could have gone over max_cost
    lost_answers: int = 0  # attempts sent whose answer was lost (timed out, dropped): maybe billed
    possibly_billed: float = 0.0  # their worst case, USD: counted in max_cost, not in cost
    unsent: Counter = field(default_factory=Counter)  # distinct requests never sent, by status
    deadline_reached: bool = False  # the deadline passed (or a 429's wait ended after it): sending stopped
    stop_note: str | None = None  # why sending stopped early, for the failure warning (a 429's message)
    paused_until: float = 0.0
    stopping: bool = False  # stopped by the user: finishing the requests in flight
    store_trouble: str | None = None  # why commits are waiting ("waiting for the cache lock")
    store_error: StoreError | None = None  # the committer gave up: some answers are not on disk
    unsaved: int = 0  # distinct answers in the result but not on disk (store_error)
    store_notes: list = field(default_factory=list)  # warnings for the user (cache file recreated)
    shared: int = 0  # distinct requests answered by another run of this process in flight
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    outcome: RunOutcome = "running"

    @property
    def done_rows(self) -> int:
        """Distinct requests settled: from cache plus finished sends."""
        return self.cached_unique + self.sent_done

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


@dataclass
class RunReport:
    """What the last run did: its figures, and per-row details on demand."""

    stats: RunStats
    plan: Any  # planner.Plan (or what a batch job reports with: codes, index, outcomes)
    packing: Any = None  # packing.PackingReport when rows_per_request > 1

    @property
    def details(self) -> pd.DataFrame:
        """Per row: output, status, error, finish_reason, tokens, cost, attempts, from_cache."""
        return self.plan.outcomes.details(self.plan.codes, self.plan.index)

    @property
    def failures(self) -> pd.DataFrame:
        """The rows without an answer, with their status and error."""
        d = self.details
        return d[d["status"] != "ok"]

    def summary(self) -> str:
        s = self.stats
        cost = money(s.cost if s.cost_known else None)
        if s.lost_answers:  # sent, answer lost: the provider may bill them
            lost = f"{s.lost_answers} answer{'s' if s.lost_answers != 1 else ''} lost"
            cost += (
                f" + up to {money(s.possibly_billed)} possibly billed ({lost})"
                if s.cost_known
                else f" ({lost}, possibly billed)"
            )
        return (
            (
                f"{s.total} rows, {s.unique} distinct requests: {s.cached} rows from cache, "
                f"{s.sent_done} requests sent ({s.ok} ok"
                + (f", {s.attempts} HTTP attempts" if getattr(s, "attempts", 0) > s.sent_done else "")  # retries
                + f"), {s.prompt_tokens} prompt{cached_share(s)} + "
                f"{s.completion_tokens} completion tokens, {cost}, {s.elapsed:.1f}s"
            )
            + (f"; {self.packing}" if self.packing is not None else "")
        )

    def __repr__(self) -> str:
        return f"<RunReport {self.stats.outcome}: {self.summary()}>"


def cached_share(stats: RunStats) -> str:
    """`` (N from the provider's prompt cache, P%)`` when some prompt tokens were, else ""."""
    if not stats.cached_tokens or not stats.prompt_tokens:
        return ""
    return f" ({stats.cached_tokens} from the provider's prompt cache, {stats.cached_tokens / stats.prompt_tokens:.0%})"


_last: RunReport | None = None


def last_run() -> RunReport | None:
    """The report of the most recent run in this process (``None`` before the first)."""
    return _last


def record_run(report: RunReport) -> None:
    """Make ``report`` what :func:`last_run` returns (the Batch API's jobs report here too)."""
    global _last
    _last = report
