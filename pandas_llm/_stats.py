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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from ._errors import StoreError
from ._pricing import money

__all__ = ["RunOutcome", "RunStats", "RunReport", "last_run", "record_run", "cached_share", "requests"]

#: How a run (or a Batch API job) stands: under way, or how it ended.
RunOutcome = Literal["running", "done", "interrupted", "failed"]


@dataclass
class RunStats:
    """Live counters of one run; observers read them, the engine (or a Batch API job) writes them.

    The request counts are of distinct requests (``unique``; with ``rows_per_request>1`` or a
    grouped endpoint each row's own request counts once, the pack or group it went in does not)
    and keep these identities, whatever ended the run: done, ``deadline=`` (a 429's wait
    ending past it included), ``max_cost`` reached, a stop (Jupyter's stop button, Ctrl-C,
    a cancel), a fatal API error, a store error:

    - ``unique == cached_unique + to_send``, always (a request another process answers during
      the run moves from ``to_send`` to ``cached_unique``);
    - ``sent_done == ok + sum(failed.values())``, always;
    - once the run has ended (``outcome != "running"``) every request to send is in exactly one
      of three counts: ``to_send == sent_done + sum(cut_short.values()) + sum(unsent.values())``
      (while it runs, the difference is in flight or not taken yet).

    ``sent_done``: settled, its record committed (ok, or failed after its attempts). All of them
    were sent by this run except ``shared`` (answered by another run of this process, ok) and
    ``failed["too_long"]`` (refused before sending). ``cut_short``: sent (one HTTP attempt
    at least; for a row of a pack or group, or of a Batch API job, the request holding it),
    no answer kept, by why: ``"deadline"``, ``"stopped"`` (a stop or a fatal error abandoned
    it in flight or cut its retry short), ``"budget"``, and for a batch whose batch never ran
    them ``"expired"``, ``"cancelled"``. ``unsent``: never sent, by why (``"deadline"``,
    ``"stopped"``, ``"budget"``; a batch job's ``"cancelled"`` too). So :attr:`sent` (requests
    this run sent) and :attr:`not_sent` add up with the others:
    ``cached_unique + sent + shared + not_sent == unique`` once the run has ended.
    ``attempts`` counts HTTP attempts (each send and each retry; a pack or a group is one),
    never requests; a Batch API job makes none. Not kept yet: a packed Batch API job
    (``mode="batch"`` with ``rows_per_request>1``) counts its packs in ``sent_done`` and
    its rows elsewhere.

        >>> s = RunStats(unique=5, to_send=5, sent_done=1, ok=1, attempts=12,
        ...              cut_short=Counter(deadline=2), unsent=Counter(deadline=2), outcome="done")
        >>> s.sent, s.not_sent, s.cached_unique + s.sent + s.shared + s.not_sent
        (3, 2, 5)
    """

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
    cut_short: Counter = field(default_factory=Counter)  # distinct requests sent, no answer kept, by why
    unsent: Counter = field(default_factory=Counter)  # distinct requests never sent, by why
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
    def sent(self) -> int:
        """Distinct requests this run sent (settled or cut short); see the identities above."""
        return self.sent_done - self.shared - self.failed["too_long"] + sum(self.cut_short.values())

    @property
    def not_sent(self) -> int:
        """Distinct requests never sent: ``unsent`` and those refused before sending (too_long)."""
        return sum(self.unsent.values()) + self.failed["too_long"]

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
        """Per row, aligned to the input: output, status, error, finish_reason (string),
        prompt_tokens, completion_tokens, cached_tokens (Int64), cost, saved_cost (Float64,
        USD), attempts (Int64), from_cache (bool).

        Additive: ``details[col].sum()`` is ``stats.<col>`` for the tokens, ``cost`` and
        ``saved_cost``. Duplicate rows (one request) each show an equal share of their
        request (integer tokens adding up exactly, the remainder on the first rows); a row
        answered from the cache shows 0 tokens and cost, and in ``saved_cost`` its share of
        what the answer cost when it was paid for. ``attempts`` is the request's."""
        return self.plan.outcomes.details(self.plan.codes, self.plan.index)

    @property
    def failures(self) -> pd.DataFrame:
        """The rows without an answer, with their status and error."""
        d = self.details
        return d[d["status"] != "ok"]

    def summary(self) -> str:
        """One line: rows (and how many were skipped for an NA cell), distinct requests and where
        each went, tokens, cost, time. The request
        counts add up to the distinct requests (``RunStats``' identities): from the cache, sent
        (ok, failed, cut short by the deadline / a stop / max_cost; with the HTTP attempts when
        retries made more), answered by another run of this process, not sent (by why)."""
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
            f"{s.total} rows, "
            + (f"{s.skipped} skipped (NA), " if s.skipped else "")
            + f"{s.unique} distinct requests: {s.cached} rows from cache"
            + (f" ({s.cached_unique} requests)" if s.cached_unique != s.cached else "")
            + f", {requests(s)}, {s.prompt_tokens} prompt{cached_share(s)} + "
            f"{s.completion_tokens} completion tokens, {cost}, {s.elapsed:.1f}s"
            + (f"; {self.packing}" if self.packing is not None else "")
        )

    def __repr__(self) -> str:
        return f"<RunReport {self.stats.outcome}: {self.summary()}>"


#: How the summary says why a request sent was cut short (``RunStats.cut_short``' keys).
CUT_BY = {
    "deadline": "cut short by the deadline",
    "stopped": "cut short by the stop",
    "budget": "cut short at max_cost",
    "expired": "in a batch that expired",
    "cancelled": "in a batch cancelled",
}


def requests(stats: RunStats) -> str:
    """The requests to send, in counts that add up to them: ``3 requests sent (1 ok, 2 cut short
    by the deadline, 12 HTTP attempts), 2 not sent (deadline)``.

        >>> requests(RunStats(to_send=4, sent_done=3, ok=2, failed=Counter(failed=1), attempts=9,
        ...                   unsent=Counter(budget=1), outcome="done"))
        '3 requests sent (2 ok, 1 failed, 9 HTTP attempts), 1 not sent (budget)'
    """
    s = stats
    sent = s.sent
    parts = [f"{s.ok - s.shared} ok"]
    failed = sum(s.failed.values()) - s.failed["too_long"]
    if failed:
        parts.append(f"{failed} failed")
    for why, n in sorted(s.cut_short.items(), key=lambda kv: -kv[1]):
        if n:
            parts.append(f"{n} {CUT_BY.get(why, f'cut short ({why})')}")
    if s.attempts > sent:  # retries
        parts.append(f"{s.attempts} HTTP attempts")
    text = f"{sent} requests sent ({', '.join(parts)})"
    if s.shared:
        text += f", {s.shared} answered by another run of this process"
    not_sent = s.not_sent
    if not_sent:
        why = Counter(s.unsent)
        why["too_long"] += s.failed["too_long"]
        reasons = [(k, n) for k, n in sorted(why.items(), key=lambda kv: -kv[1]) if n]
        text += (
            f", {not_sent} not sent ("
            + (reasons[0][0] if len(reasons) == 1 else ", ".join(f"{n} {k}" for k, n in reasons))
            + ")"
        )
    if s.outcome == "running":
        pending = s.to_send - s.sent_done - sum(s.cut_short.values()) - sum(s.unsent.values())
        if pending > 0:
            text += f", {pending} in flight or to send"
    return text


def cached_share(stats: RunStats) -> str:
    """`` (N from the provider's prompt cache, P%)`` when some prompt tokens were, else ""."""
    if not stats.cached_tokens or not stats.prompt_tokens:
        return ""
    return f" ({stats.cached_tokens} from the provider's prompt cache, {stats.cached_tokens / stats.prompt_tokens:.0%})"


_last: RunReport | None = None


def last_run() -> RunReport | None:
    """The report of the most recent run in this process (``None`` before the first).

    After a Dask compute of a ``ddf.llm`` verb's result returns on the driver
    (``.compute()``, ``dask.compute()``, ``client.compute(...).result()``, ``persist()``
    once its futures are done), it is a ``ClusterReport`` of that compute: the figures of
    every partition it computed, each once, summed (``partitions`` says how many, of
    ``npartitions``), ``outcome`` ``"done"`` or ``"failed"``, never one still running.
    While a compute runs (another thread, a pending future), it is that compute's live
    figures. Calling a verb on a Dask collection runs nothing and leaves it as it was.

    >>> last_run() is None or isinstance(last_run(), RunReport)
    True
    """
    report = _last
    settle = getattr(report, "_settle", None)
    if settle is not None:
        settle()  # a Dask compute of some partitions only ends its report here (_dask/progress.py)
    return _last


def record_run(report: RunReport) -> None:
    """Make ``report`` what :func:`last_run` returns (the Batch API's jobs report here too)."""
    global _last
    _last = report


@contextmanager
def unrecorded() -> Iterator[None]:
    """Runs inside leave :func:`last_run` as it was (the empty run that gives a Dask verb its meta)."""
    global _last
    before = _last
    try:
        yield
    finally:
        _last = before
