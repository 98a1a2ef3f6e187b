"""Cache: the SQLite sidecar where every answer is committed as it arrives.

One row per request key (see requests.py) with the answer, its status and usage. The
file is opened in WAL mode so a reader never blocks the writer and two processes can
share it; an answer that is already ``ok`` is never overwritten by a later failure.
Failed requests are stored too (status + error) and retried on the next run.
Schema changes are an append-only list of named migrations (migrations.py); the
file's creation and checks are in files.py.

    >>> s = Store(None)             # in memory, as with cache=False
    >>> s.write([Record(b"k" * 32, "ok", "bonjour")])
    >>> [r.output for r in s.lookup([b"k" * 32])]
    ['bonjour']
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol

from .._errors import ConfigError, StoreError, redact
from .files import ADVICE, check_or_create, secure_files
from .migrations import MIGRATIONS, migrate

__all__ = ["Store", "Record", "MIGRATIONS", "ANSWER_FIELDS", "FileReplaced", "Observer", "observer", "file_id_of"]


class Record(NamedTuple):
    """One request's outcome, as stored."""

    key: bytes
    status: str
    output: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = None
    error: str | None = None
    attempts: int = 1
    model: str | None = None

    def redacted(self) -> Record:
        """This record with any API key in its error text masked (errors.redact)."""
        return self if self.error is None else self._replace(error=redact(self.error))


_COLUMNS = Record._fields
#: The fields of an ``ok`` answer that resume fills a plan's outcomes with (Store.answers).
ANSWER_FIELDS = "key, output, finish_reason, prompt_tokens, completion_tokens, cached_tokens, cost, attempts"


def _bindable(r: Record) -> Record:
    """``r``, or that row's error if a field has a type SQLite must not bind (an output that
    is not text slipped past ``completion_record``): a row's fault, never a crashed run.
    An output is text, or bytes (an embedding's vector)."""
    if type(r.output) in _OUTPUT_TYPES and (r.error is None or type(r.error) is str):
        if r.finish_reason is None or type(r.finish_reason) is str:
            return r
        return r._replace(finish_reason=str(r.finish_reason)[:80])
    bad = r.output if type(r.output) not in _OUTPUT_TYPES else r.error
    return r._replace(status="error", output=None, error=f"the answer was not stored: a value of type "
                      f"{type(bad).__name__} where text was expected: {str(bad)[:200]}")  # fmt: skip


_OUTPUT_TYPES = (type(None), str, bytes)


_UPSERT = f"""
INSERT INTO results ({", ".join(_COLUMNS)}, created_at, updated_at)
VALUES ({", ".join("?" * len(_COLUMNS))}, ?, ?)
ON CONFLICT(key) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])},
    attempts = results.attempts + excluded.attempts,
    updated_at = excluded.updated_at
WHERE results.status != 'ok'
"""


class Observer(Protocol):
    """Told what a Store commits, and asked for answers before a plan reads the file (a Dask
    partition on another host than the driver's: _dask/records.py)."""

    def written(self, records: list[Record]) -> None:
        """``records`` were committed (called on the committing thread, after the commit)."""

    def wanted(self, store: Store, keys: Sequence[bytes]) -> None:
        """A plan is about to look ``keys`` up in ``store``: write in what is known elsewhere."""


#: The observer of the Stores built in this context (read when a Store is built): set by a Dask
#: partition around its run, None everywhere else.
observer: ContextVar[Observer | None] = ContextVar("pandas_llm_store_observer", default=None)


class FileReplaced(StoreError):
    """The cache file was deleted or replaced under an open Store (see ``Store.write``); the
    engine's committer reopens it and writes every answer of the run again."""


#: How long a write waits for another process's lock before handing control back
#: (the committer retries, and shows the wait on the bar).
WRITE_BUSY_TIMEOUT_MS = 200


class Store:
    """The sidecar file (or an in-memory database when ``path`` is None).

    Opening a path proves the file can be written (the file, its ``-wal`` and ``-shm``,
    the directory) and is a pandas-llm cache; otherwise ``ConfigError`` before anything
    is sent. A new file appears complete (built aside, then linked into place), so an
    empty or foreign file at the path is never ours and is refused, not taken over.

    Every write of the package goes through :meth:`transaction`, under one lock: the
    committer's thread, the ledger and the claims share this connection.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else os.fspath(path)
        self.observer = observer.get()
        self._write_lock = threading.RLock()  # re-entrant: reopen() migrates under it
        self._ident: tuple[int, int] | None = None
        self.conn = self._open()
        #: Keys per ``IN (...)`` statement (SQLite's limit on bound parameters, minus one).
        self.max_keys = max(1, min(self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1, 30000))

    @contextlib.contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, under the store's lock: ``BEGIN IMMEDIATE``, then
        ``COMMIT`` (``ROLLBACK`` if the block raises, or with ``commit=False``).

        Raises ``sqlite3.Error``; the caller maps it (``write`` to ``StoreError``).

            >>> s = Store(None)
            >>> with s.transaction() as conn:
            ...     _ = conn.execute("DELETE FROM leases")
        """
        with self._write_lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if commit:
                    conn.execute("COMMIT")
            finally:
                if conn.in_transaction:  # the block raised, COMMIT failed, or commit=False
                    conn.execute("ROLLBACK")

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self.conn = conn
            migrate(self.conn, self.transaction)
            return conn
        path = self.path
        check_or_create(path)  # refuses a read-only file before secure_files would chmod it
        secure_files(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per write batch.
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _unusable(path, exc) from exc
        self.conn = conn
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            _enable_wal(conn)
            # NORMAL in WAL mode: a committed transaction survives a killed process.
            conn.execute("PRAGMA synchronous = NORMAL")
            tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "migrations" not in tables:
                raise ConfigError(
                    f"{path!r} is a SQLite database but not a pandas-llm cache; it was left untouched. "
                    "Pass cache='other/path.sqlite' or cache=False."
                )
            migrate(self.conn, self.transaction)
            secure_files(path)  # -wal and -shm exist now
            self._prove_writable()
            conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")
            st = os.stat(path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _unusable(path, exc) from exc
        except BaseException:
            conn.close()
            raise
        self._ident = (st.st_dev, st.st_ino)
        return conn

    def _prove_writable(self) -> None:
        """Take the write lock and write once, rolled back (it needs the file, -wal and -shm
        open for writing). A lock held by another process is not a fault: commits wait for
        it, on the bar."""
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            with self.transaction(commit=False) as conn:
                # a write statement: a read-only file passes BEGIN but fails here
                conn.execute(
                    "UPDATE migrations SET applied_at = applied_at WHERE rowid = (SELECT min(rowid) FROM migrations)"
                )
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise ConfigError(f"cannot write the cache file {self.path!r} ({exc}). {ADVICE}") from exc

    def reopen(self) -> None:
        """Open the file at ``path`` again (after it was deleted or replaced), creating it if needed."""
        with self._write_lock:
            old = self.conn
            try:
                self._open()
            except BaseException:  # the old connection stays, so reads and claims still work on it
                self.conn = old
                raise
            try:
                old.close()
            except sqlite3.Error:
                pass

    def select_in(self, sql: str, keys: Sequence[Any], step: int | None = None) -> Iterator[tuple[int, list[Any]]]:
        """Run ``sql`` (ending in ``IN``) for ``keys`` chunk by chunk: ``(offset, rows)`` per chunk."""
        step = self.max_keys if step is None else max(1, min(step, self.max_keys))
        conn = self.conn
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            yield start, conn.execute(sql + " (" + ",".join("?" * len(chunk)) + ")", chunk).fetchall()

    def lookup(self, keys: Sequence[bytes]) -> Iterator[Record]:
        """Yield the stored records among ``keys`` (any order; missing keys are skipped)."""
        for _, rows in self.select_in(f"SELECT {', '.join(_COLUMNS)} FROM results WHERE key IN", keys):
            yield from map(Record._make, rows)

    def answers(self, keys: Sequence[bytes], step: int | None = None) -> Iterator[tuple[int, list[tuple]]]:
        """The ``ok`` answers among ``keys``, chunk by chunk: ``(offset of the chunk in keys,
        rows)``, each row holding the fields of :data:`ANSWER_FIELDS` (resume reads these)."""
        return self.select_in(f"SELECT {ANSWER_FIELDS} FROM results WHERE status = 'ok' AND key IN", keys, step)

    def want(self, keys: Sequence[bytes]) -> None:
        """A plan is about to look ``keys`` up: its observer may write in answers known
        elsewhere first (the driver's, for a Dask partition on another host). No-op otherwise."""
        if self.observer is not None and len(keys):
            self.observer.wanted(self, keys)

    def all_answers(self, batch: int) -> Iterator[list[tuple]]:
        """Every ``ok`` answer in the file, ``batch`` rows at a time (fields of :data:`ANSWER_FIELDS`)."""
        cur = self.conn.execute(f"SELECT {ANSWER_FIELDS} FROM results WHERE status = 'ok'")
        while rows := cur.fetchmany(batch):
            yield rows

    def write(self, records: Iterable[Record]) -> None:
        """Commit ``records`` in one transaction; an ``ok`` row is never overwritten.

        Raises ``StoreError`` (``busy=True`` while another process holds the lock) and
        ``FileReplaced`` when the file at ``path`` is no longer the one opened.
        """
        now = time.time()
        rows = [(*(r if r.error is None else r.redacted()), now, now) for r in map(_bindable, records)]
        if not rows:
            return
        with self._write_lock:  # the engine commits on its own thread (committer.py)
            if self._ident is not None:
                try:
                    st = os.stat(self.path)  # type: ignore[arg-type]
                except OSError:
                    st = None
                if st is None or (st.st_dev, st.st_ino) != self._ident:
                    raise FileReplaced(
                        f"the cache file {self.path!r} was deleted or replaced while in use; run the call "
                        "again to write the answers to a new file", path=self.path,
                    )  # fmt: skip
            try:
                with self.transaction() as conn:
                    conn.executemany(_UPSERT, rows)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            if self.observer is not None:
                self.observer.written([Record._make(row[: len(_COLUMNS)]) for row in rows])

    @property
    def file_id(self) -> str | None:
        """This file's random id (kept by a copy, new for a new file at the same path); None in memory."""
        if self.path is None:
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE name = 'file_id'").fetchone()
        return None if row is None else row[0]

    def is_empty(self) -> bool:
        """True when the results table has no row at all (one index step, whatever its size)."""
        return self.conn.execute("SELECT 1 FROM results LIMIT 1").fetchone() is None

    def count(self, status: str | None = None) -> int:
        """Rows in the results table (with ``status``, if given)."""
        if status is None:
            return self.conn.execute("SELECT count(*) FROM results").fetchone()[0]
        return self.conn.execute("SELECT count(*) FROM results WHERE status = ?", (status,)).fetchone()[0]

    def close(self) -> None:
        """Close the connection; waits for a write under way on the commit thread (closing
        SQLite under it crashed the process: a second Ctrl-C at the wrong moment)."""
        with self._write_lock:
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_id_of(path: str) -> str | None:
    """The id of the pandas-llm cache at ``path`` (see ``Store.file_id``), read without creating
    or changing anything; None when there is no such file, or it is not a cache with an id."""
    if not os.path.isfile(path):
        return None
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'file_id'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else row[0]


def _enable_wal(conn: sqlite3.Connection, attempts: int = 50) -> None:
    """Switch to WAL; the switch can report 'locked' at once (busy_timeout does not cover it)
    when another process opens the same new file at the same moment, so try again briefly."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _unusable(path: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"cannot use {path!r} as the pandas-llm cache ({exc}). {ADVICE}")


def _store_error(path: str | None, exc: sqlite3.Error) -> StoreError:
    where = "the in-memory cache" if path is None else repr(path)
    if _is_busy(exc):
        return StoreError(
            f"another process holds the write lock of {where} ({exc}); waiting for it. Close the other "
            "program or notebook using this cache, or pass cache='other/path.sqlite'.",
            path=path, busy=True,
        )  # fmt: skip
    return StoreError(
        f"cannot write {where} ({exc}). Free disk space or fix the file's permissions, "
        "or pass cache='other/path.sqlite' or cache=False.",
        path=path,
    )
