"""Cache writes on their own thread: the event loop never waits for SQLite.

A commit of answers keyed by sha256 touches one random page per answer, and every
1,000 pages SQLite copies the log back into the file with an fsync inside whichever
commit crosses the mark: 13 ms stalls at the 99th percentile, ~20 µs a row of wall time
on top of ~11 µs of CPU, all of it on the loop that should be sending requests.

The engine hands each batch to :class:`Committer`, whose single thread commits batches
in order (SQLite releases the GIL while it works) and then calls back on the loop, where
the batch is counted done: a result is still on disk before it counts. At most
``max_pending`` batches wait; past that, workers wait for the oldest (back-pressure, so
a slow disk cannot make memory grow).
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from .cache import Record, Store

__all__ = ["Committer"]


class Committer:
    def __init__(self, store: Store, on_committed: Callable[[Any], None], *, max_pending: int = 8):
        self.store = store
        self.on_committed = on_committed
        self.max_pending = max_pending
        self.error: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[asyncio.Future] = deque()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def submit(self, batch: Sequence[tuple[int, Record]]) -> None:
        """Commit ``batch`` on the writer thread, then ``on_committed(batch)`` on the loop."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="pandas-llm-commit")
        records = [r for _, r in batch]
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self.store.write, records)
        self._pending.append(fut)
        fut.add_done_callback(lambda f: self._done(f, batch))

    def _done(self, fut: asyncio.Future, batch: Any) -> None:
        self._pending.remove(fut)
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self.error = self.error or exc
            return
        self.on_committed(batch)

    async def wait_oldest(self) -> None:
        """Back-pressure: wait while ``max_pending`` batches are still being written."""
        while len(self._pending) >= self.max_pending:
            await asyncio.wait([self._pending[0]])

    async def drain(self) -> None:
        """Wait for every batch handed over so far, then stop the thread. A cancel while
        waiting (Ctrl-C) is held until the writes are done: they take milliseconds, and the
        store must not close under them."""
        cancelled = False
        while self._pending:
            try:
                await asyncio.wait(list(self._pending))
            except asyncio.CancelledError:
                cancelled = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if cancelled:
            raise asyncio.CancelledError
