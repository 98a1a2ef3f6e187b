"""Keep CPython's full garbage collections over the whole heap off a run's hot path.

A run makes tens of thousands of containers (a request, a record, a parsed answer per
row). Once enough of them have lived through two young collections, CPython collects its
oldest generation, and that walks every tracked object of the process: pandas', numpy's,
the user's frames. Measured in a process that imported pandas: 27-32 ms, once in a
5,000-row call, during which no answer is read and no request goes out (about 1% of that
call's wall time at 100 ms latency, concurrency 200).

While a run lasts, :func:`frozen_heap` moves the objects that existed before it out of the
collector's view (``gc.freeze()``). Collections still run, young and old, over what was made
since; when the last run open at once ends, every object goes back to the oldest generation
(``gc.unfreeze()``). The one difference a user can see: a garbage cycle made before the run
is freed after it, not during it.

Left alone: a process that froze its heap itself (``gc.get_freeze_count() > 0`` when the
first run starts, as servers that fork after loading do), and ``PANDAS_LLM_FREEZE_GC=0``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

__all__ = ["frozen_heap"]

_lock = threading.Lock()
_open = 0  # runs inside frozen_heap now
_ours = False  # whether the freeze in force is ours to undo


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap for the duration of a run (runs may nest and overlap across threads)."""
    global _open, _ours
    with _lock:
        if _open == 0:
            _ours = os.environ.get("PANDAS_LLM_FREEZE_GC", "1") != "0" and gc.get_freeze_count() == 0
            if _ours:
                gc.freeze()
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0 and _ours:
                _ours = False
                gc.unfreeze()
