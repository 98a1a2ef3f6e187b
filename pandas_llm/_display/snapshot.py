"""What every display shows: one pure view of RunStats at an instant, in the words they share.

``Snapshot.of(stats, now)`` computes the figures (rate, ETA, projected cost, ...) once;
the terminal bar, the notebook widget and the log summary all read it.

    >>> from pandas_llm._stats import RunStats
    >>> s = RunStats(total=10, unique=10, to_send=10, sent_done=4, ok=4, cost=0.02, started=0.0)
    >>> snap = Snapshot.of(s, now=2.0)
    >>> snap.rate, snap.eta, round(snap.projected, 4)
    (2.0, 3.0, 0.05)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._plan.outcomes import STATUS_MEANING, Unsent
from .._pricing import money
from .._stats import CUT_BY, RunOutcome, RunStats

__all__ = ["Snapshot", "duration"]


@dataclass(frozen=True)
class Snapshot:
    """The figures a display shows, computed from RunStats at one instant (``now``)."""

    outcome: RunOutcome
    rows: int  # rows in the frame
    total: int  # distinct requests
    done: int  # distinct requests settled: from cache + sent and committed
    cached: int  # distinct requests answered by the cache
    settled: int  # sent and committed (ok or failed): RunStats.sent_done
    to_send: int
    ok: int  # answered, cache included
    failed: dict  # sent but failed, by status
    unsent: dict  # never sent ("budget", "stopped"), by status
    in_flight: int
    elapsed: float
    rate: float | None  # requests per second answered by the endpoint
    eta: float | None  # seconds until the last request is answered
    prompt_tokens: int
    completion_tokens: int  # reasoning tokens included
    reasoning_tokens: int  # a reasoning model's hidden output tokens (billed as output)
    cost: float | None  # None: price unknown
    projected: float | None  # cost of the whole run at the current cost per request
    saved: float  # what the cached answers cost when they were paid for
    retries: int
    rate_limited: int  # 429s at the account's limit
    overloaded: int  # 429s from a busy server, the limit not reached (retried, no pause)
    timeouts: int  # attempts that got no answer within the timeout
    paused: float  # seconds left in a rate-limit pause (0: not paused)
    max_cost: float | None
    budget_reached: bool
    deadline_reached: bool = False
    skipped: int = 0  # rows not sent because a cell the template reads was NA
    lost_answers: int = 0  # attempts sent whose answer was lost (timeouts, dropped connections)
    possibly_billed: float = 0.0  # their worst case, USD: not in ``cost``, counted in max_cost
    stopping: bool = False  # stopped by the user: finishing the requests in flight
    store_trouble: str | None = None  # commits are waiting (a lock held by another process, ...)
    sent: int = 0  # requests this run sent: settled or cut short (RunStats.sent)
    cut_short: dict = field(default_factory=dict)  # sent, no answer kept ("deadline", "stopped"), by why

    @classmethod
    def of(cls, stats: RunStats, now: float) -> Snapshot:
        end = stats.finished if stats.finished is not None else now
        elapsed = max(0.0, end - stats.started)
        settled = stats.sent_done
        remaining = max(0, stats.to_send - settled)
        rate = settled / elapsed if settled and elapsed > 0 else None
        eta = remaining / rate if rate else (0.0 if not remaining else None)
        cost = stats.cost if stats.cost_known else None
        projected = None
        if cost is not None:
            projected = cost + remaining * (cost / settled) if settled else (cost if not remaining else None)
        return cls(
            outcome=stats.outcome,
            rows=stats.total,
            total=stats.unique,
            done=stats.done_rows,
            cached=stats.cached_unique,
            settled=settled,
            sent=stats.sent,
            cut_short=dict(stats.cut_short),
            to_send=stats.to_send,
            ok=stats.cached_unique + stats.ok,
            failed=dict(stats.failed),
            unsent=dict(stats.unsent),
            in_flight=stats.in_flight,
            elapsed=elapsed,
            rate=rate,
            eta=eta,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            reasoning_tokens=stats.reasoning_tokens,
            cost=cost,
            projected=projected,
            saved=stats.saved_cost,
            retries=stats.retries,
            rate_limited=stats.rate_limited,
            overloaded=stats.overloaded,
            timeouts=stats.timeouts,
            paused=max(0.0, stats.paused_until - now) if stats.finished is None else 0.0,
            max_cost=stats.max_cost,
            budget_reached=stats.budget_reached,
            deadline_reached=stats.deadline_reached,
            skipped=stats.skipped,
            lost_answers=stats.lost_answers,
            possibly_billed=stats.possibly_billed,
            stopping=stats.stopping and stats.finished is None,
            store_trouble=stats.store_trouble if stats.finished is None else None,
        )

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    # -- the words every display uses -------------------------------------------------
    def position(self) -> str:
        """``412 / 1,000 requests`` (with the row count when dedup made them differ)."""
        rows = f" ({self.rows:,} rows)" if self.rows != self.total else ""
        return f"{self.done:,} / {self.total:,} requests{rows}"

    def speed(self) -> str:
        if self.outcome != "running":
            return f"{self.elapsed:.1f} s"
        rate = f"{self.rate:,.1f} req/s" if self.rate else "-- req/s"
        eta = duration(self.eta) if self.eta is not None else "--:--"
        return f"{rate} · ETA {eta}"

    @property
    def n_cut_short(self) -> int:
        return sum(self.cut_short.values())

    @property
    def n_unsent(self) -> int:
        return sum(self.unsent.values())

    def counts(self) -> str:
        return (
            f"{self.ok:,} ok · {self.n_failed:,} failed · {self.cached:,} from cache"
            + (f" · {self.n_cut_short:,} cut short" if self.n_cut_short else "")
            + (f" · {self.n_unsent:,} not sent" if self.n_unsent else "")
            + (f" · {self.skipped:,} rows skipped (NA)" if self.skipped else "")
            + (f" · {self.in_flight:,} in flight" if self.outcome == "running" else "")
        )

    def money(self) -> str:
        tokens = f"tokens {self.prompt_tokens:,} in / {self.completion_tokens:,} out"
        if self.reasoning_tokens:
            tokens += f" ({self.reasoning_tokens:,} reasoning)"
        if self.cost is None:
            parts = [tokens, "price unknown"]
        else:
            parts = [tokens, f"{money(self.cost)} spent"]
            if self.outcome == "running" and self.projected is not None and self.to_send > self.settled:
                parts.append(f"~{money(self.projected)} projected")
        if self.lost_answers:
            parts.append(self.lost())
        if self.max_cost is not None:
            parts.append(f"max_cost {money(self.max_cost)}")
        if self.saved > 0:
            parts.append(f"cache saved {money(self.saved)}")
        return " · ".join(parts)

    def lost(self) -> str:
        """``up to $0.0123 possibly billed (3 answers lost)``: sent, no answer, maybe paid for
        (``3 answers lost, possibly billed`` when the price is unknown)."""
        n = self.lost_answers
        lost = f"{n:,} answer{'s' if n != 1 else ''} lost"
        if self.cost is None:
            return f"{lost}, possibly billed"
        return f"up to {money(self.possibly_billed)} possibly billed ({lost})"

    def trouble(self) -> str | None:
        """Retries, timeouts, rate-limit pauses and the budget, while they matter; else None."""
        parts = []
        if self.stopping:
            parts.append(f"stopping: finishing {self.in_flight:,} in flight (interrupt again to abandon them)")
        if self.store_trouble:
            parts.append(self.store_trouble)
        if self.paused > 0:
            parts.append(f"rate limited: paused {self.paused:.1f} s")
        if self.rate_limited:
            parts.append(f"{self.rate_limited:,} rate-limit 429s")
        if self.overloaded:
            parts.append(f"{self.overloaded:,} overloaded 429s (limit not reached)")
        if self.retries:
            parts.append(f"{self.retries:,} retries")
        if self.timeouts:
            parts.append(f"{self.timeouts:,} timeouts")
        if self.budget_reached and self.outcome == "running":
            parts.append("max_cost reached: no new requests, finishing those in flight")
        return " · ".join(parts) or None

    def failures(self) -> str | None:
        """One line: the failures by kind and what was not sent, or None if all went well."""
        words = []
        for status, n in sorted(self.failed.items(), key=lambda kv: -kv[1]):
            meaning = STATUS_MEANING.get(status)
            words.append(f"{n:,} {status}" + (f" ({meaning})" if meaning else ""))
        for status, n in sorted(self.cut_short.items(), key=lambda kv: -kv[1]):
            words.append(f"{n:,} sent, {CUT_BY.get(status, f'cut short ({status})')} (no answer)")
        for status, n in sorted(self.unsent.items(), key=lambda kv: -kv[1]):
            words.append(f"{n:,} not sent ({_UNSENT.get(status, status)})")
        return "; ".join(words) or None

    def verdict(self) -> str:
        """The headline once the run has ended: ``done in 12.3 s``, ``interrupted after 3.0 s``..."""
        if self.outcome == "interrupted":
            return f"interrupted after {self.elapsed:.1f} s"
        if self.outcome == "failed":
            return f"stopped after {self.elapsed:.1f} s"
        if self.budget_reached:
            return f"stopped at max_cost after {self.elapsed:.1f} s"
        if self.deadline_reached:
            return f"stopped at the deadline after {self.elapsed:.1f} s"
        if self.to_send == 0 and self.total:
            return "all from cache"
        return f"done in {self.elapsed:.1f} s"

    def advice(self) -> str | None:
        """What to do next, once a run has ended early; None if it did not."""
        if self.outcome == "interrupted":
            return f"{self.ok:,} answers are kept in the cache: run the same call again to resume"
        if self.outcome == "failed":
            return "the run stopped on an error (see it); answers so far are kept in the cache"
        if self.budget_reached:
            return "max_cost reached: run again with a higher max_cost to send the rest"
        if self.deadline_reached:
            return "deadline reached: run the same call again to send the rest"
        return None

    def summary(self) -> str:
        """A one-paragraph account of a finished run, for the log."""
        cost = "price unknown" if self.cost is None else money(self.cost)
        text = (
            f"pandas-llm run {self.outcome}: {self.rows:,} rows, {self.total:,} distinct requests, "
            f"{self.cached:,} from cache, {self.sent:,} sent, {self.ok:,} ok, {self.n_failed:,} failed"
            + (f", {self.n_cut_short:,} cut short" if self.n_cut_short else "")
            + (f", {self.n_unsent:,} not sent" if self.n_unsent else "")
            + (f", {self.skipped:,} rows skipped (NA cells, not sent)" if self.skipped else "")
            + "; "
            f"{self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion tokens, {cost}"
            + (f" (cache saved {money(self.saved)})" if self.saved > 0 else "")
            + (f", {self.lost()}" if self.lost_answers else "")
            + (f"; {self.timeouts:,} timeouts" if self.timeouts else "")
            + f"; {self.elapsed:.1f} s"
        )
        failures = self.failures()
        return text + (f". Failures: {failures}" if failures else "")


_UNSENT: dict[Unsent, str] = {
    "budget": "max_cost reached",
    "stopped": "the run stopped first",
    "deadline": "the deadline passed first",
}


def duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``.

    >>> duration(7.4), duration(723), duration(3723)
    ('0:07', '12:03', '1:02:03')
    """
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
