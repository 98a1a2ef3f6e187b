"""Progress observers: they read RunStats when the engine reports, and hold nothing it needs.

``make_observer(True)`` gives a tqdm bar (terminal) — the notebook widget comes with the
notebook work; ``False`` gives a silent observer.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from .scheduler import RunStats

__all__ = ["Observer", "make_observer", "NullObserver", "TqdmObserver"]

log = logging.getLogger("pandas_llm")


class Observer(Protocol):
    def start(self, stats: RunStats) -> None: ...

    def update(self, stats: RunStats) -> None: ...

    def close(self, stats: RunStats) -> None: ...


class NullObserver:
    def start(self, stats: RunStats) -> None:
        pass

    def update(self, stats: RunStats) -> None:
        pass

    def close(self, stats: RunStats) -> None:
        log.info(
            "pandas-llm run %s: %d rows, %d from cache, %d sent, %d ok, %d failed, %.1fs",
            stats.outcome, stats.total, stats.cached, stats.sent_done, stats.ok,
            sum(stats.failed.values()), stats.elapsed,
        )


class TqdmObserver(NullObserver):
    """A tqdm bar over distinct requests, with live figures in its postfix; throttled."""

    def __init__(self, *, min_interval: float = 0.1, clock: Callable[[], float] = time.monotonic, **tqdm_kwargs: Any):
        self.min_interval = min_interval
        self.clock = clock
        self.kwargs = tqdm_kwargs
        self._last = -1e9
        self.bar: Any = None

    def start(self, stats: RunStats) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=stats.unique, initial=stats.cached_unique, unit="req", desc="pandas-llm", **self.kwargs)

    def update(self, stats: RunStats, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        bar = self.bar
        bar.n = stats.done_rows
        post = {"cached": stats.cached_unique, "failed": sum(stats.failed.values()), "in_flight": stats.in_flight}
        if stats.rate_limited:
            post["429s"] = stats.rate_limited
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    def close(self, stats: RunStats) -> None:
        if self.bar is not None:
            self.update(stats, force=True)
            if stats.outcome != "done":
                self.bar.set_description(f"pandas-llm ({stats.outcome})")
            self.bar.close()
        super().close(stats)


def make_observer(progress: Any) -> Observer:
    if progress is False or progress is None:
        return NullObserver()
    if progress is True:
        return TqdmObserver()
    return progress  # a user's own observer object
