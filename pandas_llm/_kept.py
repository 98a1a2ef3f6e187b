"""Small JSON files that keep what one process learned for the next: a speed-up, never a need.

A :class:`KeptFile` is one JSON object in the user's cache folder
(``$XDG_CACHE_HOME/pandas-llm``, by default ``~/.cache/pandas-llm``) mapping a name to an
entry, a JSON object stamped with the time it was written (``"at"``, seconds since the
epoch). The rate limits learned from headers (_run/learned.py) and the prices looked up
in the price table (_pricing.py) are kept this way, so a restarted kernel starts where
the last one stopped.

- The file is read once per process (and per path: ``XDG_CACHE_HOME`` may change), at
  the first :meth:`KeptFile.get`; entries older than the file's ``ttl`` are not used.
- :meth:`KeptFile.put` writes on a thread of its own (an event loop never waits for the
  disk; the interpreter waits for it at exit): it reads the file again, drops the stale entries, sets its own and replaces the
  file atomically (a reader sees the old file or the new one, never half of one). Two
  processes writing at once may lose one's entry: the next run learns it again.
- A file that cannot be read or written is as good as empty: a debug log line on the
  ``pandas_llm`` logger says why, and the run goes on as if nothing were kept.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from typing import Any

__all__ = ["KeptFile", "user_cache_dir"]

log = logging.getLogger("pandas_llm")


def user_cache_dir() -> str:
    """The user's cache folder: ``$XDG_CACHE_HOME``, else ``~/.cache`` (pandas-llm keeps its
    own files in a ``pandas-llm`` folder there: learned rate limits, table prices, Dask's
    local sidecars)."""
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


class KeptFile:
    """The entries kept in ``<user cache folder>/pandas-llm/<filename>``.

    ``ttl``: seconds an entry is used for after it was written; ``what``: the words for
    the log lines ("learned limits"); ``thread``: the name of the threads that write it
    (tests join them).
    """

    def __init__(self, filename: str, *, ttl: float, what: str, thread: str):
        self.filename = filename
        self.ttl = ttl
        self.what = what
        self.thread = thread
        self._lock = threading.Lock()
        self._entries: dict[str, Any] | None = None  # the file's entries, read at the first get
        self._read_from: str | None = None  # the path they were read from

    @property
    def path(self) -> str:
        return os.path.join(user_cache_dir(), "pandas-llm", self.filename)

    def get(self, name: str, *, ttl: float | None = None) -> dict[str, Any] | None:
        """The entry kept under ``name`` if it was written less than ``ttl`` seconds ago
        (by default the file's), else None."""
        with self._lock:
            entry = self._load().get(name)
        return entry if isinstance(entry, dict) and self._fresh(entry, self.ttl if ttl is None else ttl) else None

    def put(self, name: str, fields: dict[str, Any], *, rewrite_after: float | None = None) -> None:
        """Keep ``fields`` under ``name`` (written on a thread of its own). Nothing is
        written when the file holds the same fields already, written less than
        ``rewrite_after`` seconds ago (by default ``ttl / 7``)."""
        kept = self.get(name, ttl=self.ttl / 7 if rewrite_after is None else rewrite_after)
        if kept is not None and {k: v for k, v in kept.items() if k != "at"} == fields:
            return
        # Not a daemon: a script that ends right after its run still writes what it learned.
        threading.Thread(target=self._write, args=(name, fields), name=self.thread).start()

    def forget(self) -> None:
        """Read the file again at the next :meth:`get` (as a new process would)."""
        with self._lock:
            self._entries = None

    def _fresh(self, entry: dict[str, Any], ttl: float) -> bool:
        at = entry.get("at")
        return isinstance(at, int | float) and not isinstance(at, bool) and 0 <= time.time() - at < ttl

    def _load(self) -> dict[str, Any]:
        """The file's entries, read once per process and path (called under the lock)."""
        path = self.path
        if self._entries is None or self._read_from != path:
            self._entries, self._read_from = self._read(path), path
        return self._entries

    def _read(self, path: str) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.debug("pandas-llm: %s not read from %s (%s)", self.what, path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, name: str, fields: dict[str, Any]) -> None:
        path = self.path
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = {k: v for k, v in self._read(path).items() if isinstance(v, dict) and self._fresh(v, self.ttl)}
            data[name] = {**fields, "at": time.time()}
            fd, tmp = tempfile.mkstemp(prefix=".kept-", suffix=".json", dir=os.path.dirname(path))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=0)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except (OSError, TypeError, ValueError) as exc:
            log.debug("pandas-llm: %s not written to %s (%s)", self.what, path, exc)
            return
        with self._lock:
            self._entries, self._read_from = data, path
