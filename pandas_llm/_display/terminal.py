"""The terminal display: a tqdm bar over distinct requests, its figures in the postfix."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._pricing import money
from .._stats import RunStats
from .observer import ThrottledObserver
from .snapshot import Snapshot

__all__ = ["TqdmObserver"]


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
        if bar.total != snap.total:  # a Dask compute learns its partitions' requests as they start
            bar.total = snap.total
        bar.n = snap.done
        post: dict[str, Any] = {"failed": snap.n_failed, "cached": snap.cached}
        if snap.n_cut_short:  # sent, no answer kept (the deadline, a stop)
            post["cut_short"] = snap.n_cut_short
        if snap.n_unsent:
            post["not_sent"] = snap.n_unsent
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
            if not final and snap.projected is not None and snap.to_send > snap.settled:
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
        if final and (snap.outcome != "done" or snap.budget_reached or snap.deadline_reached):
            state = (
                snap.outcome if snap.outcome != "done" else "max_cost reached" if snap.budget_reached else "deadline"
            )
            bar.set_description(f"pandas-llm ({state})", refresh=False)
        bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)
