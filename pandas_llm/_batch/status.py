"""What a Batch API job looks like: its live figures, a status snapshot, and its progress bar.

``BatchStats`` extends the engine's ``RunStats`` (observers written for realtime runs
read it unchanged) with the per-batch view; ``BatchStatus`` is what ``job.status()``
returns (a text repr and a notebook table); ``BatchProgress`` is the tqdm bar with each
batch's state and request counts and the money at batch prices in its postfix.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from .._display.progress import TqdmObserver, bar_class
from .._pricing import money
from .._stats import RunStats
from .._store.ledger import Part

__all__ = ["BatchPhase", "BatchProgress", "BatchState", "BatchStats", "BatchStatus", "JobState"]

#: Where a job is: planning its requests, submitting batches, waiting for them, or over.
BatchPhase = Literal["planning", "submitting", "waiting", "done", "cancelled"]
#: What ``job.status().state`` says: batches being created, running, or the job's end.
JobState = Literal["submitting", "in_progress", "done", "partial", "cancelled"]
#: One batch's status as the Batch API reports it (the ledger's ``Part.state`` is one of these,
#: or its own "new", "uploaded", "abandoned" before and after the API knows the batch).
BatchState = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


@dataclass
class BatchStats(RunStats):
    """RunStats plus the batches: ``parts`` (ledger rows, refreshed on every poll)."""

    parts: list[Part] = field(default_factory=list)
    attached: int = 0  # requests found in flight in batches from an earlier run
    submitted: int = 0  # requests in batches this job created
    queued: int = 0  # requests waiting for the enqueued-token budget
    realtime_cost: float = 0.0  # what the collected answers would have cost in realtime
    phase: BatchPhase = "planning"

    @property
    def server_done(self) -> int:
        """Requests the API reports finished in batches not collected yet."""
        return sum(p.completed + p.failed for p in self.parts if p.open)

    @property
    def done_rows(self) -> int:
        return self.cached_unique + min(self.to_send, self.sent_done + self.server_done)

    def states(self) -> Counter:
        return Counter(p.state for p in self.parts)


@dataclass
class BatchStatus:
    """A snapshot of a job: ``state``, one row per batch, and the job's figures."""

    job: str
    state: JobState
    stats: BatchStats
    taken_at: float = field(default_factory=time.time)

    @property
    def parts(self) -> list[Part]:
        return self.stats.parts

    @property
    def done(self) -> bool:
        return self.state in ("done", "partial", "cancelled")

    def counts(self) -> dict[str, int]:
        s = self.stats
        return {
            "rows": s.total,
            "requests": s.unique,
            "from_cache": s.cached_unique,
            "to_send": s.to_send,
            "attached": s.attached,
            "submitted": s.submitted,
            "queued": s.queued,
            "collected": s.sent_done,
            "ok": s.ok,
            "failed": sum(s.failed.values()),
            "skipped": s.skipped,  # rows not sent: a cell the template reads was NA
        }

    def _summary(self) -> str:
        s = self.stats
        c = self.counts()
        saved = ""
        if s.cost_known and s.realtime_cost > s.cost:
            saved = f" (realtime would be {money(s.realtime_cost)})"
        return (
            f"{c['rows']} rows"
            + (f" ({c['skipped']} skipped: NA cells)" if c["skipped"] else "")
            + f", {c['requests']} distinct requests: {c['from_cache']} from cache, "
            f"{c['attached']} re-attached, {c['submitted']} submitted, {c['queued']} queued; "
            f"{c['collected']} collected ({c['ok']} ok, {c['failed']} failed); "
            f"cost at batch prices {money(s.cost if s.cost_known else None)}{saved}"
        )

    def __repr__(self) -> str:
        lines = [f"<BatchJob {self.job}: {self.state}>", self._summary()]
        if self.parts:
            lines.append(f"  {'batch':<34} {'state':<12} {'done':>8} {'failed':>7} {'total':>8}")
            for p in self.parts:
                lines.append(
                    f"  {(p.batch_id or '(' + p.part[:12] + ')'):<34} {p.state:<12} "
                    f"{p.completed:>8} {p.failed:>7} {p.requests:>8}"
                )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td><code>{e(p.batch_id or '(not created)')}</code></td><td>{e(p.state)}</td>"
            f"<td style='text-align:right'>{p.completed:,}</td><td style='text-align:right'>{p.failed:,}</td>"
            f"<td style='text-align:right'>{p.requests:,}</td><td>{e(p.error or '')}</td></tr>"
            for p in self.parts
        )
        table = (
            "<table><thead><tr><th>batch</th><th>state</th><th>done</th><th>failed</th><th>requests</th>"
            f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>"
            if rows
            else ""
        )
        return (
            f"<div class='pandas-llm-batch'><b>BatchJob <code>{e(self.job)}</code>: {e(self.state)}</b>"
            f"<p>{e(self._summary())}</p>{table}</div>"
        )


class BatchProgress(TqdmObserver):
    """The tqdm bar over distinct requests; the postfix names each state's batch count,
    the requests the API has finished, and the cost of what was collected. ``text=True``
    (``progress="text"``): the plain tqdm bar in a notebook too, not tqdm's widget."""

    def __init__(self, *, text: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.text = text

    def start(self, stats: RunStats) -> None:
        tqdm = bar_class(self.text)
        self.bar = tqdm(total=stats.unique, initial=stats.cached_unique, unit="req", desc="pandas-llm batch",
                        **self.kwargs)  # fmt: skip

    def update(self, stats: RunStats, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        bar = self.bar
        bar.n = stats.done_rows
        post: dict[str, Any] = {}
        if isinstance(stats, BatchStats):
            post.update({state: n for state, n in sorted(stats.states().items())})
            if stats.queued:
                post["queued"] = stats.queued
        post["failed"] = sum(stats.failed.values())
        post["cost"] = money(stats.cost if stats.cost_known else None)
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    def close(self, stats: RunStats) -> None:
        """The final figures in this bar's own terms (not the realtime bar's postfix)."""
        self.update(stats, force=True)
        if stats.outcome != "done":
            self.bar.set_description(f"pandas-llm batch ({stats.outcome})", refresh=False)
        self.bar.close()
