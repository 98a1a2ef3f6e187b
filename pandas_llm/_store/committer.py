"""Cache writes on their own thread: the event loop never waits for SQLite.

A commit of answers keyed by sha256 touches one random page per answer, and every
1,000 pages SQLite copies the log back into the file with an fsync inside whichever
commit crosses the mark: 13 ms stalls at the 99th percentile, ~20 µs a row of wall time
on top of ~11 µs of CPU, all of it on the loop that should be sending requests.

The engine hands each batch to :class:`Committer`, whose single thread commits batches
in order (SQLite releases the GIL while it works) and then calls back on the loop, where
the batch is counted done: a result is still on disk before it counts. The engine hands
an answer over as soon as the writer is idle and batches only while it is busy
(``on_idle``), so an answer waits at most for the commit before its own: that, plus the
requests in flight, is all a kill -9 can lose. At most ``max_pending`` batches wait;
past that, workers wait for the oldest (back-pressure, so a slow disk cannot make
memory grow).

A commit that fails (another process holds the lock, an I/O error, a full disk) is
retried with backoff on the writer thread; meanwhile ``healthy`` is clear, the engine
sends nothing new and ``on_trouble`` says why (the bar shows it). After ``patience``
seconds of failing, the committer gives up: the batches it could not write go to
``on_lost`` (they are returned in the result, flagged as not on disk). A cache file
deleted or replaced during the run is reopened (recreated) and receives every answer
of the run (``everything``), with ``on_replaced``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._errors import ConfigError, StoreError
from .store import FileReplaced, Record, Store

__all__ = ["Committer"]

#: Seconds a commit keeps failing before the committer gives up (module-level: tests shorten it).
PATIENCE = 60.0


class Committer:
    def __init__(
        self,
        store: Store,
        on_committed: Callable[[Any], None],
        *,
        max_pending: int = 8,
        on_idle: Callable[[], None] = lambda: None,
        on_trouble: Callable[[StoreError | None], None] = lambda e: None,
        on_lost: Callable[[Any, StoreError], None] | None = None,
        everything: Callable[[], list[Record]] | None = None,
        on_replaced: Callable[[int], None] = lambda n: None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.on_committed = on_committed
        self.max_pending = max_pending
        self.on_idle = on_idle
        self.on_trouble = on_trouble
        self.on_lost = on_lost
        self.everything = everything
        self.on_replaced = on_replaced
        self.sleep = sleep
        self.clock = clock
        self.error: BaseException | None = None  # an unexpected error (a bug): raised by the engine
        self.gave_up: StoreError | None = None
        self.healthy = asyncio.Event()
        self.healthy.set()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[asyncio.Future] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def submit(self, batch: Sequence[tuple[int | None, Record]]) -> None:
        """Commit ``batch`` on the writer thread, then ``on_committed(batch)`` on the loop."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="pandas-llm-commit")
            self._loop = asyncio.get_running_loop()
        records = [r for _, r in batch]
        fut = self._loop.run_in_executor(self._pool, self._write, records)  # type: ignore[union-attr]
        self._pending.append(fut)
        fut.add_done_callback(lambda f: self._done(f, batch))

    # -- on the writer thread --------------------------------------------------------
    def _write(self, records: list[Record]) -> None:
        failing_since = None
        delay = 0.05
        while True:
            if self.gave_up is not None:
                raise self.gave_up
            try:
                try:
                    self.store.write(records)
                except FileReplaced as replaced:
                    try:
                        records = self._recreate(records)
                    except ConfigError as exc:  # no new file can be made there (its folder became a file)
                        raise StoreError(
                            f"the cache file {replaced.path!r} was deleted or replaced during the run and cannot "
                            f"be created again: {exc}",
                            path=replaced.path,
                        ) from exc
                    continue
            except StoreError as exc:
                now = self.clock()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= PATIENCE:
                    self.gave_up = exc
                    raise
                self._on_loop(self._trouble, exc)
                self.sleep(delay)
                delay = min(2 * delay, 1.0)
                continue
            if failing_since is not None:
                self._on_loop(self._trouble, None)
            return

    def _recreate(self, records: list[Record]) -> list[Record]:
        """The file was deleted or replaced: open (create) it again; the next write holds
        every answer of the run so far, so a rerun pays for none of them."""
        self.store.reopen()
        if self.everything is None:
            return records
        before = asyncio.run_coroutine_threadsafe(self._everything(), self._loop).result()  # type: ignore[arg-type]
        mine = {r.key for r in records}
        merged = [r for r in before if r.key not in mine] + records
        self._on_loop(self.on_replaced, len(merged))
        return merged

    async def _everything(self) -> list[Record]:
        await asyncio.sleep(0)  # let the callbacks of batches already committed run first
        return self.everything()  # type: ignore[misc]

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]

    # -- on the loop -----------------------------------------------------------------
    def _trouble(self, exc: StoreError | None) -> None:
        if exc is None:
            self.healthy.set()
        else:
            self.healthy.clear()
        self.on_trouble(exc)

    def _done(self, fut: asyncio.Future, batch: Any) -> None:
        self._pending.remove(fut)
        exc = None if fut.cancelled() else fut.exception()
        if exc is None:
            self.on_committed(batch)
        elif isinstance(exc, StoreError) and self.on_lost is not None:
            self.healthy.set()  # nothing more to wait for: the engine sees gave_up and stops
            self.on_lost(batch, exc)
        else:
            self.error = self.error or exc
        if not self._pending:
            self.on_idle()

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
