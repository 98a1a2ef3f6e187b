"""``max_cost`` across a Dask compute: one cap for all the partitions of one verb call.

Each run on a partition keeps the pandas :class:`~pandas_llm._run.budget.Budget` (a
request's worst case reserved before it is sent, settled at its real cost), but its room
is an *allowance* taken in blocks from one :class:`Purse` per verb call, held by the same
coordinator as the account limits (a scheduler plugin on a distributed cluster, an
object in this process with Dask's threaded or synchronous scheduler).

The purse's invariant: the allowances handed out, summed over every run, never exceed the
cap, and a run never reserves past its allowance, so the compute's real cost stays under
the cap (given, as in pandas, that the endpoint bills no more than the worst case). A run
whose next request does not fit its allowance asks the purse (handing back what it does
not hold for requests in flight); the purse grants a block (up to 16 worst cases, less as
the room runs out), or says *wait* while some run still holds room it may give back (its
requests in flight settle below their worst case, or it ends), or *out* when nothing can
free room: the budget is exhausted, and the runs leave the rows they did not send as
``budget``, as pandas does. An overrun (the endpoint billed more than the worst case) seen
by any run scales every run's later reservations.

A partition computed again (its worker died, or the same lazy result is computed a second
time) is a new *execution*, and a worker that leaves the cluster is seen by the scheduler
plugin: the runs of the earlier execution (of the worker) are counted at everything
they were allowed (what they spent is not known for sure), and they are refused any more.
So the cap covers one verb call's collection, however many times it is computed: money
spent by an earlier compute counts against it. Call the verb again for a new cap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._run.budget import Budget

__all__ = ["ClusterBudget", "Purse", "local_purse"]

log = logging.getLogger("pandas_llm")

#: A block of allowance is at most this many worst cases (one ask per ~16 requests).
BLOCK_REQUESTS = 16
#: A run that has not asked for this long (seconds) no longer makes the others wait for its room: a worker
#: that died holding it must not hold the compute up for ever. On a distributed cluster the scheduler
#: says at once when a worker leaves (:meth:`Purse.worker_gone`); this is for what it cannot see.
STALE = 120.0
#: While the purse says wait, a run asks again after this many seconds (or when its own request settles).
POLL = 0.1
_EPS = 1e-12


class _Run:
    __slots__ = ("allowance", "done", "execution", "seen", "spent", "where")

    def __init__(self, execution: str, where: str | None):
        self.execution = execution
        self.where = where  # the worker's address (None: in this process)
        self.seen = 0.0
        self.allowance = 0.0  # dollars this run may have committed (spent + reserved + unused)
        self.spent = 0.0
        self.done = False


class Purse:
    """One verb call's ``max_cost`` for all its partitions. Its methods are called one at a time."""

    def __init__(self, cap: float, *, clock: Callable[[], float] = time.monotonic):
        self.cap = cap
        self.clock = clock
        self.runs: dict[str, _Run] = {}
        self.current: dict[Any, str] = {}  # partition -> its latest execution
        self.superseded: set[str] = set()
        self.exhausted = False
        self.overrun = 1.0
        self.asks = 0

    @property
    def committed(self) -> float:
        """Dollars the runs may have spent or may spend: the sum of their allowances."""
        return sum(r.allowance for r in self.runs.values())

    def worker_gone(self, where: str) -> None:
        """The worker at ``where`` left the cluster (it died): its runs keep all they held, as spent."""
        for r in self.runs.values():
            if r.where == where and not r.done:
                r.spent, r.done = r.allowance, True

    def ask(self, part: Any, execution: str, run: str, spent: float, reserved: float, want: float,
            overrun: float = 1.0, done: bool = False, *, where: str | None = None) -> tuple[str, float, float]:  # fmt: skip
        """A run of ``part``'s ``execution`` holds ``spent + reserved`` and wants ``want`` more
        (``done``: it ended, holding ``spent``). Returns ``(verdict, granted, overrun)``:
        ``"grant"`` (its allowance is now ``spent + reserved + granted``), ``"wait"`` (ask again
        once something settled; its allowance is ``spent + reserved``), ``"out"`` (exhausted)."""
        self.asks += 1
        self.overrun = max(self.overrun, overrun)
        latest = self.current.get(part)
        if execution in self.superseded:
            return "out", 0.0, self.overrun  # an earlier execution of a partition computed again
        if latest != execution:
            if latest is not None:  # the partition is computed again: its earlier runs keep all they held
                self.superseded.add(latest)
                for r in self.runs.values():
                    if r.execution == latest:
                        r.spent, r.done = r.allowance, True
            self.current[part] = execution
        rec = self.runs.setdefault(run, _Run(execution, where))
        if rec.done and not done:
            return "out", 0.0, self.overrun  # its worker was given up for dead
        rec.spent = spent
        now = rec.seen = self.clock()
        if done:
            rec.allowance, rec.done = spent, True
            return "done", 0.0, self.overrun
        rec.allowance = spent + reserved  # what it held but not for requests in flight comes back
        if not self.exhausted:
            free = self.cap - self.committed
            if want <= free + _EPS:
                granted = min(free, max(want, min(BLOCK_REQUESTS * want, free / 4)))
                rec.allowance += granted
                return "grant", granted, self.overrun
            holding = reserved > _EPS or any(
                r.allowance > r.spent + _EPS and now - r.seen < STALE
                for r in self.runs.values()
                if r is not rec and not r.done
            )
            if holding:
                return "wait", 0.0, self.overrun
            self.exhausted = True
        return "out", 0.0, self.overrun


_purses: dict[str, Purse] = {}
_lock = threading.Lock()


def local_purse(call: str, cap: float) -> Callable[..., tuple[str, float, float]]:
    """``ask`` for the in-process purse of verb call ``call`` (partitions run by threads)."""
    with _lock:
        purse = _purses.setdefault(call, Purse(cap))

    def ask(*args: Any, **kwargs: Any) -> tuple[str, float, float]:
        with _lock:
            return purse.ask(*args, **kwargs)

    return ask


class ClusterBudget(Budget):
    """A run's Budget whose room is an allowance from the verb call's :class:`Purse`.

    ``ask(run, spent, reserved, want, overrun, done)`` reaches the purse (a blocking call:
    it runs on a thread, except the one at :meth:`close`)."""

    def __init__(self, cap: float, meter: Any, *, stats: Any = None, ask: Callable[..., tuple[str, float, float]]):
        super().__init__(cap, meter, stats=stats)
        self.allowance = 0.0
        self._ask = ask
        self._run = uuid.uuid4().hex
        self._asking: asyncio.Lock | None = None
        self._asked = False
        self._wait_until = 0.0

    def try_reserve(self, amount: float) -> bool | None:
        """Reserve ``amount`` in this run's allowance: True done; None ask the purse; False exhausted."""
        if self.exhausted:
            return False
        if self.spent + self.reserved + amount <= self.allowance + _EPS:
            self.reserved += amount
            self.holders += 1
            self._show()
            return True
        return None

    async def reserve(self, amount: float) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            decision = self.try_reserve(amount)
            if decision is not None:
                return decision
            if self._asking is None:
                self._asking = asyncio.Lock()
            if loop.time() >= self._wait_until:
                async with self._asking:  # one ask at a time: the purse's view of the allowance is the last one
                    decision = self.try_reserve(amount)
                    if decision is not None:
                        return decision
                    held = self.spent + self.reserved
                    self.allowance = held  # nothing reserves in the unused part while the purse takes it back
                    self._asked = True
                    verdict, granted, overrun = await asyncio.to_thread(
                        self._ask, self._run, self.spent, self.reserved, amount, self.overrun, False
                    )
                    self.overrun = max(self.overrun, overrun)
                    self.allowance = held + granted
                    if verdict == "grant":
                        continue
                    if verdict == "out":
                        self.exhausted = True
                        if self.stats is not None:
                            self.stats.budget_reached = True
                        return False
                    self._wait_until = loop.time() + POLL
            if self._changed is None:
                self._changed = asyncio.Event()
            try:  # a request of this run settles, or the purse may have room again
                await asyncio.wait_for(self._changed.wait(), max(0.0, self._wait_until - loop.time()) or POLL)
            except TimeoutError:
                pass
            else:
                self._wait_until = 0.0

    def close(self) -> None:
        """The run ended: hand back the allowance it did not spend (requests it abandoned in
        flight, if any, count at their worst case: they may have been billed)."""
        if not self._asked:
            return
        try:
            self._ask(self._run, self.spent + self.reserved, 0.0, 0.0, self.overrun, True)
        except Exception:  # the purse is unreachable: other runs may wait for this one's room
            log.warning("pandas-llm: could not hand back a run's unspent max_cost allowance", exc_info=True)
