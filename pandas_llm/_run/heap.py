"""Keep CPython's full garbage collections over the whole heap off a run's hot path.

A run makes tens of thousands of containers (a request, a record, a parsed answer per
row). Once enough of them have lived through two young collections, CPython collects its
oldest generation, and that walks every tracked object of the process: pandas', numpy's,
the user's frames. Measured in a process that imported pandas: 27-32 ms, once in a
5,000-row call, during which no answer is read and no request goes out (about 1% of that
call's wall time at 100 ms latency, concurrency 200).

While a realtime run of at least :data:`MIN_REQUESTS` requests sends, :func:`frozen_heap`
moves the objects that existed before it out of the collector's view (``gc.freeze()``).
Collections still run, young and old, over what was made since; when the last run open at
once ends, every object goes back to the oldest generation (``gc.unfreeze()``). What a
user can see: a garbage cycle made before the run is freed after it, not during it.

Left alone:
- a process that froze its heap itself before the first run started
  (``gc.get_freeze_count() > 0``, as servers that fork after loading do);
- ``PANDAS_LLM_FREEZE_GC=0`` (only ``0``) turns it off: set it in a process that calls
  ``gc.freeze()`` while a run may be open on another thread, since the run's
  ``gc.unfreeze()`` would undo that freeze (telling it apart would mean counting the frozen
  objects, ~4 ms per 70,000 on CPython 3.11, twice per run);
- a child forked during a run starts thawed.
The Batch API's wait is never frozen (it sends one file, not one request per row).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

__all__ = ["frozen_heap", "MIN_REQUESTS"]

#: Runs with fewer requests to send make too few objects to set off a full collection, and
#: checking ``gc.get_freeze_count()`` walks the frozen objects (O(n) on CPython 3.11).
MIN_REQUESTS = 500

_lock = threading.Lock()
_open = 0  # runs inside frozen_heap now
_ours = False  # whether the freeze in force is ours to undo


@contextlib.contextmanager
def frozen_heap(requests: int) -> Iterator[None]:
    """Freeze the heap while a run of ``requests`` requests lasts (runs may overlap across threads)."""
    global _open, _ours
    if requests < MIN_REQUESTS or os.environ.get("PANDAS_LLM_FREEZE_GC", "1") == "0":
        yield
        return
    with _lock:
        if _open == 0 and gc.get_freeze_count() == 0:  # an empty frozen list: no walk
            gc.freeze()
            _ours = True
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0 and _ours:
                gc.unfreeze()
                _ours = False


def _thaw_in_child() -> None:
    """A child forked during a run: that run is not the child's to end."""
    global _lock, _open, _ours
    _lock = threading.Lock()
    if _ours:
        gc.unfreeze()
    _open, _ours = 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_thaw_in_child)
