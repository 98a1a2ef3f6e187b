"""Progress and ``last_run()`` of a Dask compute, on the driver, from the partitions' figures.

On the worker, a :class:`PartitionReporter` is the progress observer of the partition's
runs (the ``progress`` setting there): it sends the figures of the partition's latest run
(its ``RunStats``, as ``last_run()`` would report them on that worker) over the verb
call's events channel (events.py) when the run starts, at most every :data:`INTERVAL`
seconds while it runs, and once more, *final*, when the partition returns or fails.

On the driver a :class:`Tally` receives them: the figures of each partition are kept by
partition number, the last execution's winning (a partition Dask computes again, because
its worker died, replaces its earlier figures instead of adding to them), and summed into
one ``RunStats``. What the earlier execution had paid when it last reported (its cost,
and its requests in flight at their worst case) is not lost: it is in
``possibly_billed``, its requests in ``lost_answers`` (its answers may be in the cache:
the rerun then counts them as cached). The driver's display (the same observers a pandas run uses: the tqdm bar
or the notebook widget, as ``progress=`` says) opens at the first message and closes when
every partition has sent its final figures (or one failed); ``last_run()`` is then one
:class:`ClusterReport` of the whole compute, its ``elapsed`` the driver's wall time from
the first message to the last. A later compute of the same lazy result starts a new one.

Every message of a compute reaches the driver before the compute returns (events.py), but
the driver does not see where a compute ends when it computes some partitions only
(``head()``, ``.partitions[i]``, a ``.loc`` Dask prunes): :func:`settle` ends such a report
once no compute runs (computes.py says when), with the partitions it computed, so
``last_run()`` is never a report still "running" after its compute, and the next compute
of the same lazy result starts a new one instead of taking the earlier partitions as its own.
The report's ``total`` is always the computed partitions' rows; only the display scales it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._display.progress import make_observer
from .._errors import ConfigError
from .._pricing import money
from .._run.run import RunWarning, unanswered_message
from .._stats import RunReport, RunStats, record_run
from . import computes
from .events import send

__all__ = ["ClusterReport", "PartitionReporter", "Tally", "call_label", "settle"]

#: A partition sends its figures at most this often while it runs (seconds), plus at start and end.
INTERVAL = 0.5
#: Seconds ``last_run()`` waits, once per compute, for the final figures of partitions that started
#: once the compute is over (they come before its result: a safeguard, not a delay).
FINAL_WAIT = 5.0

_SUMS = (
    "total", "unique", "skipped", "cached", "cached_unique", "to_send", "sent_done", "ok", "in_flight", "retries",
    "attempts", "rate_limited", "overloaded", "timeouts", "prompt_tokens", "completion_tokens", "reasoning_tokens",
    "cached_tokens", "cost", "saved_cost", "reserved_cost", "lost_answers", "possibly_billed", "shared", "unsaved",
)  # fmt: skip
_ANY = ("budget_reached", "deadline_reached", "stopping")


def call_label(verb: str, template: Any, *, width: int = 40) -> str:
    """The verb call as its driver warning names it: ``map('Translate to French: {text}')``, a
    long template cut to ``width`` characters, a function template by its name."""
    if isinstance(template, str):
        text = " ".join(template.split())
        return f"{verb}({(text if len(text) <= width else text[: width - 1] + '…')!r})"
    return f"{verb}({getattr(template, '__qualname__', None) or type(template).__name__})"


def figures(stats: RunStats | None, outcome: str | None = None) -> dict[str, Any]:
    """``stats`` as a small msgpack-able dict (None: a partition that ran no run)."""
    if stats is None:
        return {"outcome": outcome or "done"}
    out: dict[str, Any] = {k: getattr(stats, k) for k in _SUMS + _ANY}
    out["failed"] = dict(stats.failed)
    out["cut_short"] = dict(stats.cut_short)
    out["unsent"] = dict(stats.unsent)
    out["cost_known"] = stats.cost_known
    out["paused"] = max(0.0, stats.paused_until - time.monotonic())
    out["note"] = stats.stop_note or stats.store_trouble
    out["outcome"] = outcome or stats.outcome
    return out


class PartitionReporter:
    """The observer of one partition's runs, on its worker: sends their figures to ``topic``."""

    def __init__(self, topic: str, part: Any, execution: str, *, clock: Callable[[], float] = time.monotonic):
        self.topic, self.part, self.execution = topic, part, execution
        self.clock = clock
        self.stats: RunStats | None = None
        self.unanswered: Counter[str] = Counter()  # rows without an answer, by status (the driver warns)
        self._last = -math.inf

    def _send(self, final: bool, outcome: str | None = None) -> None:
        self._last = self.clock()
        figs = figures(self.stats, outcome)
        if final and self.unanswered:
            figs["unanswered"] = dict(self.unanswered)
        send(self.topic, {"p": self.part, "x": self.execution, "final": final, "s": figs})

    def add_unanswered(self, bad: dict[str, int]) -> None:
        """A run's rows left without an answer (``run.unanswered_sink``): sent with the final figures."""
        self.unanswered.update(bad)

    def start(self, stats: RunStats) -> None:
        self.stats = stats
        self._send(False)

    def update(self, stats: RunStats) -> None:
        self.stats = stats
        if self.clock() - self._last >= INTERVAL:
            self._send(False)

    def close(self, stats: RunStats) -> None:
        self.stats = stats  # the partition's final message says it (another run of the verb may follow)

    def finish(self, failed: bool) -> None:
        """The partition returned (or raised: ``failed``): its final figures."""
        self._send(True, "failed" if failed else None)


class ClusterReport(RunReport):
    """``last_run()`` after a Dask compute: the partitions' figures summed (no per-row details).

    ``partitions`` (int): how many partitions' figures it sums, each once (a partition Dask
    computed again counts its last execution); ``npartitions`` (int): how many the verb's
    result has. They differ after a compute of some partitions only (``head()``,
    ``.partitions[i]``), or while the compute runs."""

    partitions: int = 0
    npartitions: int = 0
    _tally: Tally | None = None

    def _settle(self) -> None:
        """Called by ``last_run()``: end this report if its compute is over (see :func:`settle`)."""
        if self._tally is not None:
            self._tally.settle()

    @property
    def details(self) -> Any:
        raise ConfigError(
            "last_run() of a Dask compute sums the partitions' figures; the per-row details stayed on the "
            "workers. Pass details=True to the verb (ddf.llm.map(..., details=True)) to compute them as a "
            "Dask DataFrame."
        )

    @property
    def failures(self) -> Any:
        return self.details


class Tally:
    """The driver's end: one display and one ``last_run()`` for a verb call's computes.
    Call it with each message (the events channel's handler); messages come one at a time.
    ``label`` (:func:`call_label`) starts its warning: one compute may end several verb calls."""

    def __init__(self, progress: Any, npartitions: int, max_cost: float | None, label: str | None = None):
        self.progress, self.npartitions, self.max_cost, self.label = progress, npartitions, max_cost, label
        self.parts: dict[Any, tuple[str, dict[str, Any], bool]] = {}  # part -> (execution, figures, final)
        self.superseded: set[str] = set()
        self.gone: list[dict[str, Any]] = []  # the last figures of executions computed again (a worker died)
        self.stats: RunStats | None = None
        self.observer: Any = None
        self.report: ClusterReport | None = None
        self.closed = False
        self.failed = False  # the compute ended at a partition's failure (others may still send)
        self.futures_at: dict[Any, frozenset[Any]] = {}  # part -> the client's pending futures at its final figures
        self._lock = threading.RLock()  # messages come on the client's loop, settle() on the caller's thread
        self._changed = threading.Condition(self._lock)
        self._waited = False  # settle() waited for final figures in this compute (it does not again)
        self.remote = False  # messages came from distributed workers (through the scheduler)

    def __call__(self, msg: dict[str, Any]) -> None:
        with self._lock:
            self._take(msg)
            self._changed.notify_all()

    def _take(self, msg: dict[str, Any]) -> None:
        part, execution, final = msg["p"], msg["x"], bool(msg["final"])
        if execution in self.superseded:
            return  # an earlier execution of a partition computed again
        held = self.parts.get(part)
        if self.stats is not None and not self.closed and self._over():
            self._end(self.stats)  # the compute the others' final figures came in is over: this one is new
        if self.closed:
            if held is not None and (held[0] == execution or not held[2]):
                return  # a late message of the compute that ended
            if held is None and self.failed:
                return  # a partition of the failed compute still running (Dask raised at the first failure)
            self._begin()  # a partition computed again after the compute ended: a new compute
            held = None
        elif self.stats is None:
            self._begin()
        if held is not None and held[0] != execution:
            self.superseded.add(held[0])
            self.gone.append(held[1])
        if held is not None and held[0] == execution and held[2]:
            return  # its final figures are in
        self.parts[part] = (execution, msg["s"], final)
        self.remote = self.remote or msg.get("worker") is not None
        if final and msg.get("worker") is not None:  # from a distributed worker: its compute's futures
            self.futures_at[part] = computes.pending_futures()
        stats = self.stats
        assert stats is not None
        self._sum(stats)
        done = len(self.parts) >= self.npartitions and all(f for _, _, f in self.parts.values())
        if done or (final and msg["s"].get("outcome") != "done"):
            self._end(stats)
        elif self.observer is None:
            self.observer = make_observer(self.progress)
            self.observer.start(self._shown(stats))
        else:
            self.observer.update(self._shown(stats))

    def _over(self) -> bool:
        """Whether the compute every partition heard from sent its final figures in is over
        (distributed: none of the client's futures pending then is pending now), so the next
        message is a new compute's, not Dask computing a partition again after a worker died.
        False when it cannot be told (threads: computes.py ends their reports)."""
        if not self.parts or any(not f for _, _, f in self.parts.values()) or len(self.futures_at) < len(self.parts):
            return False
        keys = frozenset().union(*self.futures_at.values())
        return bool(keys) and not (keys & computes.pending_futures())

    def settle(self) -> None:
        """End the report if its compute is over but not every partition was computed
        (``head()``, ``.partitions[i]``): once no compute runs in this process (computes.py)
        and every partition it heard from has sent its final figures. A partition that
        started and whose final figures are not in yet (they come before the compute's
        result: events.py) is waited for, up to :data:`FINAL_WAIT` seconds, once."""
        with self._lock:
            if self.closed or self.stats is None:
                return
        if computes.computing():
            return
        with self._lock:
            waits = self.remote and not self._waited  # in this process (threads) every message is in
            deadline = time.monotonic() + (FINAL_WAIT if waits else 0.0)
            while not self.closed and not self._all_final() and (left := deadline - time.monotonic()) > 0:
                self._waited = True
                self._changed.wait(left)
            if not self.closed and self.stats is not None and self._all_final():
                self._end(self.stats)

    def _all_final(self) -> bool:
        return all(f for _, _, f in self.parts.values())

    def _begin(self) -> None:
        self.superseded.update(x for x, _, _ in self.parts.values())
        self.parts = {}
        self.futures_at = {}
        self.gone = []
        self.closed = self.failed = self._waited = self.remote = False
        self.stats = RunStats(max_cost=self.max_cost)
        self.observer = None
        self.report = ClusterReport(self.stats, None)
        self.report.npartitions = self.npartitions
        self.report._tally = self
        _open.add(self)
        record_run(self.report)

    def _sum(self, stats: RunStats) -> None:
        figs = [f for _, f, _ in self.parts.values()]
        for k in _SUMS:
            setattr(stats, k, sum(f.get(k, 0) for f in figs))
        for k in _ANY:
            setattr(stats, k, any(f.get(k, False) for f in figs))
        stats.failed = sum((Counter(f.get("failed", {})) for f in figs), Counter())
        stats.cut_short = sum((Counter(f.get("cut_short", {})) for f in figs), Counter())
        stats.unsent = sum((Counter(f.get("unsent", {})) for f in figs), Counter())
        stats.cost_known = all(f.get("cost_known", True) for f in figs)
        stats.paused_until = time.monotonic() + max((f.get("paused", 0.0) for f in figs), default=0.0)
        stats.stop_note = next((f["note"] for f in figs if f.get("note")), None)
        outcomes = {f.get("outcome", "running") for f in figs}
        for f in self.gone:  # what a dead execution paid is not in its rerun's cost: counted as possibly billed
            stats.lost_answers += f.get("sent_done", 0) + f.get("in_flight", 0) + f.get("lost_answers", 0)
            stats.possibly_billed += f.get("cost", 0.0) + f.get("reserved_cost", 0.0) + f.get("possibly_billed", 0.0)
        stats.outcome = "failed" if "failed" in outcomes else "interrupted" if "interrupted" in outcomes else "running"
        if self.report is not None:
            self.report.partitions = len(self.parts)

    def _shown(self, stats: RunStats) -> RunStats:
        """What the display shows while the compute runs: the rows of partitions not started
        yet are not known, so its total is the started ones' rows scaled to every partition
        (so it does not reach 100% early). The report keeps the rows counted."""
        started = len(self.parts)
        if not 0 < started < self.npartitions:
            return stats
        return dataclasses.replace(stats, total=max(stats.total, round(stats.total * self.npartitions / started)))

    def _end(self, stats: RunStats) -> None:
        self.closed = True
        _open.discard(self)
        self._sum(stats)
        self.failed = stats.outcome == "failed"
        stats.finished = time.monotonic()
        if stats.outcome == "running":
            stats.outcome = "done"
        stats.in_flight = 0
        if self.observer is None:
            self.observer = make_observer(self.progress)
            self.observer.start(stats)
        self.observer.close(stats)
        self.closed = True
        assert self.report is not None
        record_run(self.report)  # again: partitions run in this process (threads) record their own runs
        self._warn(stats)

    def _warn(self, stats: RunStats) -> None:
        """One RunWarning for the compute's rows without an answer, here on the driver (the
        partitions' own would stay in the workers' logs)."""
        bad: Counter[str] = Counter()
        for _, f, _ in self.parts.values():
            bad.update(f.get("unanswered", {}))
        if not bad:
            return
        budget = ""
        if self.max_cost is not None:
            budget = (f". max_cost={money(self.max_cost)} stopped the compute after {money(stats.cost)}"
                      " (raise max_cost, or set max_tokens for a tighter worst case per request)")  # fmt: skip
        deadline = f". deadline stopped the sending: {stats.stop_note.rstrip('.')}" if stats.stop_note else ""
        see = "pass details=True to the verb for each row's status and error (last_run() sums the partitions)"
        text = unanswered_message(dict(bad), stats.total, budget_note=budget, deadline_note=deadline, see=see,
                                  again="Computing it again")  # fmt: skip
        if self.label:
            text = f"{self.label}: {text}"
        warnings.warn(text, RunWarning, stacklevel=2)


_open: weakref.WeakSet[Tally] = weakref.WeakSet()  # tallies with a compute begun and not ended


def settle() -> None:
    """End the reports of computes that are over (no compute runs in this process): see
    :meth:`Tally.settle`. Called when a local compute ends, and by ``last_run()``."""
    for tally in list(_open):
        tally.settle()


def reporter_settings(settings: Any, reporter: PartitionReporter) -> Any:
    """The partition's settings with ``reporter`` as its progress display."""
    return dataclasses.replace(settings, progress=reporter)
