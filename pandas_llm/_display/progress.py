"""Progress observers: they read RunStats when the engine reports, and hold nothing it needs.

The run calls ``start(stats)`` before the first request, ``update(stats)`` after each
commit batch and from a 0.25 s ticker, and ``close(stats)`` once it has ended (done,
interrupted, stopped by a fatal error). A display draws at most once per
``min_interval`` (0.1 s by default, so at most ~10 draws a second however many answers
arrive); a throttled ``update`` costs one clock read. Time is injected (``clock=``).

``make_observer(True)`` picks the ipywidgets display in a Jupyter kernel that can import
ipywidgets (widget.py) and a tqdm bar elsewhere; ``"text"`` the tqdm bar everywhere (a
kernel included: for frontends that cannot draw widgets); ``False`` draws nothing; any
object with ``start/update/close`` is used as given. Every run also logs its summary on the
``pandas_llm`` logger (INFO); nothing here configures logging. A display that raises is
switched off with a log message: drawing never stops a run.

    >>> from pandas_llm._stats import RunStats
    >>> s = RunStats(total=10, unique=10, to_send=10, sent_done=4, ok=4, cost=0.02, started=0.0)
    >>> snap = Snapshot.of(s, now=2.0)
    >>> snap.rate, snap.eta, round(snap.projected, 4)
    (2.0, 3.0, 0.05)
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._plan.outcomes import STATUS_MEANING
from .._pricing import money
from .._stats import RunStats

__all__ = [
    "Observer",
    "Observers",
    "LogObserver",
    "Snapshot",
    "ThrottledObserver",
    "TqdmObserver",
    "in_notebook",
    "make_observer",
]

log = logging.getLogger("pandas_llm")


class Observer(Protocol):
    def start(self, stats: RunStats) -> None: ...

    def update(self, stats: RunStats) -> None: ...

    def close(self, stats: RunStats) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    """The figures a display shows, computed from RunStats at one instant (``now``)."""

    outcome: str
    rows: int  # rows in the frame
    total: int  # distinct requests
    done: int  # distinct requests settled: from cache + sent and committed
    cached: int  # distinct requests answered by the cache
    sent: int  # sent and committed (ok or failed)
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

    @classmethod
    def of(cls, stats: RunStats, now: float) -> Snapshot:
        end = stats.finished if stats.finished is not None else now
        elapsed = max(0.0, end - stats.started)
        sent = stats.sent_done
        remaining = max(0, stats.to_send - sent)
        rate = sent / elapsed if sent and elapsed > 0 else None
        eta = remaining / rate if rate else (0.0 if not remaining else None)
        cost = stats.cost if stats.cost_known else None
        projected = None
        if cost is not None:
            projected = cost + remaining * (cost / sent) if sent else (cost if not remaining else None)
        return cls(
            outcome=stats.outcome,
            rows=stats.total,
            total=stats.unique,
            done=stats.done_rows,
            cached=stats.cached_unique,
            sent=sent,
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

    def counts(self) -> str:
        return (
            f"{self.ok:,} ok · {self.n_failed:,} failed · {self.cached:,} from cache"
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
            if self.outcome == "running" and self.projected is not None and self.to_send > self.sent:
                parts.append(f"~{money(self.projected)} projected")
        if self.lost_answers:
            parts.append(self.lost())
        if self.max_cost is not None:
            parts.append(f"max_cost {money(self.max_cost)}")
        if self.saved > 0:
            parts.append(f"cache saved {money(self.saved)}")
        return " · ".join(parts)

    def lost(self) -> str:
        """``up to $0.0123 possibly billed (3 answers lost)``: sent, no answer, maybe paid for."""
        amount = "price unknown" if self.cost is None else f"up to {money(self.possibly_billed)}"
        n = self.lost_answers
        return f"{amount} possibly billed ({n:,} answer{'s' if n != 1 else ''} lost)"

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
        for status, n in sorted(self.unsent.items(), key=lambda kv: -kv[1]):
            words.append(f"{n:,} not sent ({_UNSENT.get(status, status)})")
        return "; ".join(words) or None

    def verdict(self) -> str:
        """The headline once the run has ended: ``done in 12.3 s``, ``interrupted after 3.0 s``..."""
        if self.outcome == "interrupted":
            return f"interrupted after {self.elapsed:.1f} s"
        if self.outcome in ("failed", "stopped"):
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
        if self.outcome in ("failed", "stopped"):
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


_UNSENT = {"budget": "max_cost reached", "stopped": "the run stopped first", "deadline": "the deadline passed first"}


def duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``.

    >>> duration(7.4), duration(723), duration(3723)
    ('0:07', '12:03', '1:02:03')
    """
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ThrottledObserver:
    """Draws a Snapshot at most once per ``min_interval``; ``close`` always draws."""

    def __init__(self, *, min_interval: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.min_interval = min_interval
        self.clock = clock
        self.draws = 0
        self._last = float("-inf")

    def start(self, stats: RunStats) -> None:
        self._open(stats)
        self._draw_now(stats, final=False)

    def update(self, stats: RunStats) -> None:
        now = self.clock()
        if now - self._last < self.min_interval:
            return
        self._draw_now(stats, final=False, now=now)

    def close(self, stats: RunStats) -> None:
        self._draw_now(stats, final=True)
        self._close()

    def _draw_now(self, stats: RunStats, *, final: bool, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._last = now
        self.draws += 1
        self.draw(Snapshot.of(stats, now), final=final)

    # a display implements these
    def _open(self, stats: RunStats) -> None:
        pass

    def draw(self, snap: Snapshot, *, final: bool) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class TqdmObserver(ThrottledObserver):
    """A tqdm bar over distinct requests (terminals, plain IPython), figures in its postfix."""

    def __init__(self, *, min_interval: float = 0.1, clock: Callable[[], float] = time.monotonic, **tqdm_kwargs: Any):
        super().__init__(min_interval=min_interval, clock=clock)
        self.kwargs = tqdm_kwargs
        self.bar: Any = None

    def _open(self, stats: RunStats) -> None:
        from tqdm.std import tqdm  # not tqdm.auto: the notebook case is the widget's

        self.bar = tqdm(
            total=stats.unique, initial=stats.cached_unique, unit="req", desc="pandas-llm",
            dynamic_ncols=True, **self.kwargs,
        )  # fmt: skip

    def draw(self, snap: Snapshot, *, final: bool) -> None:
        bar = self.bar
        bar.n = snap.done
        post: dict[str, Any] = {"failed": snap.n_failed, "cached": snap.cached}
        if snap.skipped:
            post["skipped_na"] = snap.skipped
        if not final:
            post["in_flight"] = snap.in_flight
        post["tokens"] = f"{_short(snap.prompt_tokens)}/{_short(snap.completion_tokens)}"
        if snap.reasoning_tokens:
            post["reasoning"] = _short(snap.reasoning_tokens)
        if snap.cost is None:
            post["cost"] = "unknown"
        else:
            post["cost"] = money(snap.cost)
            if not final and snap.projected is not None and snap.to_send > snap.sent:
                post["projected"] = money(snap.projected)
        if snap.saved > 0:
            post["saved"] = money(snap.saved)
        if snap.lost_answers:
            post["possibly_billed"] = money(snap.possibly_billed) if snap.cost is not None else "unknown"
        if snap.paused > 0:
            post["paused"] = f"{snap.paused:.1f}s"
        if snap.retries:
            post["retries"] = snap.retries
        if snap.rate_limited:
            post["rate_limited"] = snap.rate_limited
        if snap.overloaded:
            post["overloaded"] = snap.overloaded
        if snap.timeouts:
            post["timeouts"] = snap.timeouts
        if snap.budget_reached:
            post["budget"] = "reached"
        if snap.stopping:
            post["stopping"] = f"finishing {snap.in_flight} in flight"
        if snap.store_trouble:
            post["cache"] = snap.store_trouble
        bar.set_postfix(post, refresh=False)
        if final and (snap.outcome != "done" or snap.budget_reached):
            state = snap.outcome if snap.outcome != "done" else "max_cost reached"
            bar.set_description(f"pandas-llm ({state})", refresh=False)
        bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


class LogObserver:
    """Logs the run's summary on the ``pandas_llm`` logger when it ends."""

    def start(self, stats: RunStats) -> None:
        log.debug(
            "pandas-llm run started: %d rows, %d distinct requests, %d to send",
            stats.total,
            stats.unique,
            stats.to_send,
        )

    def update(self, stats: RunStats) -> None:
        pass

    def close(self, stats: RunStats) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("%s", Snapshot.of(stats, time.monotonic()).summary())


class Observers:
    """Several observers as one; one that raises is dropped (logged), the run goes on."""

    def __init__(self, *observers: Any):
        self.observers = [o for o in observers if o is not None]

    def _each(self, method: str, stats: RunStats) -> None:
        for o in list(self.observers):
            try:
                getattr(o, method)(stats)
            except Exception:
                log.warning("pandas-llm: progress display %s failed; it is switched off for this run",
                            type(o).__name__, exc_info=True)  # fmt: skip
                self.observers.remove(o)

    def start(self, stats: RunStats) -> None:
        self._each("start", stats)

    def update(self, stats: RunStats) -> None:
        self._each("update", stats)

    def close(self, stats: RunStats) -> None:
        self._each("close", stats)


def in_notebook() -> bool:
    """True in a Jupyter kernel (ipykernel shell) that can import ipywidgets."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it loaded already
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def make_observer(progress: Any) -> Observer:
    """The observers of one run: the display ``progress`` asks for, plus the log summary.

    ``True``: the widget in a Jupyter kernel, else the tqdm bar; ``"text"``: the tqdm bar
    everywhere; ``False``/``None``: no display; anything else is used as the display.
    """
    if progress is False or progress is None:
        display = None
    elif progress == "text":
        display = TqdmObserver()
    elif progress is True:
        if in_notebook():
            from .notebook import WidgetObserver

            display = WidgetObserver()
        else:
            display = TqdmObserver()
    else:
        display = progress  # a user's own observer object
    return Observers(display, LogObserver())
