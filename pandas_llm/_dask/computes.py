"""Whether a Dask compute is running in this process: where a compute ends, for progress.py.

The partitions' messages say when each partition ends, not when the compute does: a
compute of some partitions only (``head()``, ``.partitions[i]``) never sends the rest.

- Dask's local schedulers (sync, threads, processes) call a global Dask callback,
  installed by the first verb call (:func:`watch`), when a compute starts and ends; at
  the end of the last one running, the reports of computes that are over end.
- A ``distributed`` client's compute is running while the client holds a future that is
  not done yet (``.compute()`` and ``.result()`` return once the result is in; ``persist()``
  returns at once, its futures pending until the partitions end). A partition's final
  figures come while its compute's futures are pending: when the same partition starts
  again once they are all done, it is a new compute (not a worker's death).

Two local computes run from two threads at once: Dask calls the callbacks of the first
only, so the second is not seen (a head() ending meanwhile may end a report too early).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .events import current_client

__all__ = ["computing", "pending_futures", "watch"]

_lock = threading.Lock()
_running = 0
_watch: Any = None
_idle: Callable[[], None] | None = None


def computing() -> bool:
    """True while a local compute or a compute of the ``distributed`` client runs."""
    if _running:
        return True
    client = current_client()
    if client is None:
        return False
    try:
        return any(st.status == "pending" for st in list(client.futures.values()))
    except RuntimeError:  # the client's loop changed the dict meanwhile: say running, ask again later
        return True


def pending_futures() -> frozenset[Any]:
    """The keys of the ``distributed`` client's futures not done yet (empty without a client).
    Call it on the client's event loop (an event handler), where the futures change."""
    client = current_client()
    if client is None:
        return frozenset()
    return frozenset(k for k, st in list(client.futures.items()) if st.status == "pending")


def watch(idle: Callable[[], None]) -> None:
    """Call ``idle()`` whenever the last local compute running ends (the callback is installed
    once; again if a compute that swapped Dask's callbacks out meanwhile dropped it)."""
    global _watch, _idle
    from dask.callbacks import Callback

    with _lock:
        _idle = idle
        if _watch is None:
            _watch = Callback(start=_started, finish=_finished)
        if _watch._callback not in Callback.active:
            _watch.register()


def _started(dsk: Any) -> None:
    global _running
    with _lock:
        _running += 1


def _finished(dsk: Any, state: Any, errored: bool) -> None:
    global _running
    with _lock:
        _running = max(0, _running - 1)
        idle = _idle if _running == 0 else None
    if idle is not None:
        idle()
