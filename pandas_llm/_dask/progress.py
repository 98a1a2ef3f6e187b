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
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._display.progress import make_observer
from .._errors import ConfigError
from .._pricing import money
from .._run.run import RunWarning, unanswered_message
from .._stats import RunReport, RunStats, record_run
from .events import send

__all__ = ["ClusterReport", "PartitionReporter", "Tally", "call_label"]

#: A partition sends its figures at most this often while it runs (seconds), plus at start and end.
INTERVAL = 0.5

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
    """``last_run()`` after a Dask compute: the partitions' figures summed (no per-row details)."""

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

    def __call__(self, msg: dict[str, Any]) -> None:
        part, execution, final = msg["p"], msg["x"], bool(msg["final"])
        if execution in self.superseded:
            return  # an earlier execution of a partition computed again
        held = self.parts.get(part)
        if self.closed:
            if held is None or held[0] == execution or not held[2]:
                return  # a late message of the compute that ended
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
        stats = self.stats
        assert stats is not None
        self._sum(stats)
        done = len(self.parts) >= self.npartitions and all(f for _, _, f in self.parts.values())
        if done or (final and msg["s"].get("outcome") != "done"):
            self._end(stats)
        elif self.observer is None:
            self.observer = make_observer(self.progress)
            self.observer.start(stats)
        else:
            self.observer.update(stats)

    def _begin(self) -> None:
        self.superseded.update(x for x, _, _ in self.parts.values())
        self.parts = {}
        self.gone = []
        self.closed = False
        self.stats = RunStats(max_cost=self.max_cost)
        self.observer = None
        self.report = ClusterReport(self.stats, None)
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
        started = len(self.parts)
        if 0 < started < self.npartitions and not self.closed:
            # the rows of partitions not started yet are not known: the display's total is the
            # started ones' rows scaled to every partition (so it does not reach 100% early)
            stats.total = max(stats.total, round(stats.total * self.npartitions / started))

    def _end(self, stats: RunStats) -> None:
        self.closed = True
        self._sum(stats)  # the rows' real total, not the display's estimate
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


def reporter_settings(settings: Any, reporter: PartitionReporter) -> Any:
    """The partition's settings with ``reporter`` as its progress display."""
    return dataclasses.replace(settings, progress=reporter)
