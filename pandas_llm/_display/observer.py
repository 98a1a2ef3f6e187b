"""The observer seam: what a run calls on its displays, and the displays every run has.

The run calls ``start(stats)`` once its first requests are out (drawing the first bar costs
CPU they should not wait for; before any update in any case), ``update(stats)`` after each
commit batch and from a 0.25 s ticker, and ``close(stats)`` once it has ended (done,
interrupted, failed). ``ThrottledObserver`` draws a Snapshot at most once per
``min_interval`` (0.1 s by default, so at most ~10 draws a second however many answers
arrive); a throttled ``update`` costs one clock read. Time is injected (``clock=``).
``LogObserver`` logs every run's summary on the ``pandas_llm`` logger (INFO); nothing here
configures logging. ``Observers`` holds several as one: a display that raises is switched
off with a log message, drawing never stops a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .._stats import RunStats
from .snapshot import Snapshot

__all__ = ["LogObserver", "Observer", "Observers", "ThrottledObserver"]

log = logging.getLogger("pandas_llm")


class Observer(Protocol):
    def start(self, stats: RunStats) -> None: ...

    def update(self, stats: RunStats) -> None: ...

    def close(self, stats: RunStats) -> None: ...


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
