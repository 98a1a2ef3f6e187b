"""The account limits' coordinators on the Dask scheduler (imported only with ``distributed``).

One :class:`~pandas_llm._dask.limit.Coordinator` per account (endpoint, model) lives in a
scheduler plugin, reached by the workers through two scheduler handlers. On the scheduler,
not in an actor on a worker: a worker can die mid-compute (its tasks are rerun elsewhere),
the scheduler is the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import sync

from .budget import Purse
from .events import current_worker
from .limit import Coordinator

__all__ = ["LimitsPlugin", "ensure_plugin", "remote_coordinator", "remote_purse"]

NAME = "pandas-llm-limits"


class LimitsPlugin(SchedulerPlugin):
    name = NAME

    def __init__(self) -> None:
        self.coordinators: dict[str, Coordinator] = {}
        self.purses: dict[str, Purse] = {}  # a verb call's max_cost (budget.py), by call id

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers["pandas_llm_grant"] = self.grant
        scheduler.handlers["pandas_llm_pause"] = self.pause
        scheduler.handlers["pandas_llm_purse"] = self.purse

    def grant(self, account: str, tokens: int, rpm: float | None, tpm: float | None, known: bool) -> Any:
        coord = self.coordinators.setdefault(account, Coordinator())
        return list(coord.grant(tokens, rpm, tpm, known))

    def pause(self, account: str, seconds: float) -> None:
        self.coordinators.setdefault(account, Coordinator()).pause(seconds)

    def purse(self, call: str, cap: float, args: list[Any], where: str | None = None) -> Any:
        return list(self.purses.setdefault(call, Purse(cap)).ask(*args, where=where))

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        for purse in self.purses.values():  # its runs' room is not coming back: no one waits for it
            purse.worker_gone(worker)


def ensure_plugin(client: Any) -> None:
    """Install the plugin on ``client``'s scheduler unless it is there (its coordinators stay)."""
    there = client.run_on_scheduler(lambda dask_scheduler: NAME in dask_scheduler.plugins)
    if not there:
        client.register_plugin(LimitsPlugin(), name=NAME)


def remote_coordinator(account: str) -> tuple[Callable[..., Any], Callable[[float], None]] | None:
    """``(ask, pause)`` reaching the scheduler's coordinator of ``account`` from this worker
    (blocking calls, for any thread of the worker's process); None outside a worker."""
    worker = current_worker()
    if worker is None:
        return None
    scheduler, loop = worker.scheduler, worker.loop

    def ask(tokens: int, rpm: float | None, tpm: float | None, known: bool) -> tuple[float, int, int, float]:
        out = sync(loop, scheduler.pandas_llm_grant, account=account, tokens=tokens, rpm=rpm, tpm=tpm, known=known)
        return tuple(out)

    def pause(seconds: float) -> None:
        sync(loop, scheduler.pandas_llm_pause, account=account, seconds=seconds)

    return ask, pause


def remote_purse(call: str, cap: float) -> Callable[..., tuple[str, float, float]] | None:
    """``ask`` reaching the scheduler's purse of verb call ``call`` (budget.py) from this worker
    (a blocking call, for any thread of the worker's process but its event loop's); None
    outside a worker."""
    worker = current_worker()
    if worker is None:
        return None
    scheduler, loop, where = worker.scheduler, worker.loop, worker.address

    def ask(*args: Any) -> tuple[str, float, float]:
        return tuple(sync(loop, scheduler.pandas_llm_purse, call=call, cap=cap, args=list(args), where=where))

    return ask
