"""Cache: the SQLite sidecar where every answer is committed as it arrives.

One row per request key (see requests.py) with the answer, its status and usage. The
file is opened in WAL mode so a reader never blocks the writer and two processes can
share it; an answer that is already ``ok`` is never overwritten by a later failure.
Failed requests are stored too (status + error) and retried on the next run.
Schema changes are an append-only list of named migrations.

    >>> s = Store(None)             # in memory, as with cache=False
    >>> s.write([Record(b"k" * 32, "ok", "bonjour")])
    >>> [r.output for r in s.lookup([b"k" * 32])]
    ['bonjour']
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from .._errors import ConfigError, StoreError, redact

__all__ = ["Store", "Record", "MIGRATIONS"]


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


#: Append-only: never edit or reorder an applied migration, add a new one.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_results",
        """
        CREATE TABLE results (
            key BLOB PRIMARY KEY,
            status TEXT NOT NULL,
            output TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 1,
            model TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # Batch API jobs (ledger.py): one row per submit, one per uploaded batch ("part"), and the
    # request keys each open part covers (deleted when the part is collected).
    (
        "002_batch_jobs",
        """
        CREATE TABLE batch_jobs (
            job TEXT PRIMARY KEY,
            endpoint TEXT NOT NULL,
            model TEXT,
            rows INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0,
            meta TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
    (
        "003_batch_parts",
        """
        CREATE TABLE batch_parts (
            part TEXT PRIMARY KEY,
            job TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            batch_id TEXT UNIQUE,
            input_file_id TEXT,
            output_file_id TEXT,
            error_file_id TEXT,
            state TEXT NOT NULL,
            open INTEGER NOT NULL DEFAULT 1,
            requests INTEGER NOT NULL,
            tokens INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
    (
        "004_batch_keys",
        "CREATE TABLE batch_keys (part TEXT NOT NULL, key BLOB NOT NULL, PRIMARY KEY (part, key)) WITHOUT ROWID",
    ),
    ("005_batch_keys_by_key", "CREATE INDEX batch_keys_by_key ON batch_keys (key)"),
    # Requests a run is sending, so another process on this file waits for them (leases.py).
    (
        "006_leases",
        "CREATE TABLE leases (key BLOB PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    ),
]

_UPSERT = f"""
INSERT INTO results ({", ".join(_COLUMNS)}, created_at, updated_at)
VALUES ({", ".join("?" * len(_COLUMNS))}, ?, ?)
ON CONFLICT(key) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])},
    attempts = results.attempts + excluded.attempts,
    updated_at = excluded.updated_at
WHERE results.status != 'ok'
"""


class FileReplaced(StoreError):
    """The cache file was deleted or replaced under an open Store (see ``Store.write``); the
    engine's committer reopens it and writes every answer of the run again."""


#: How long a write waits for another process's lock before handing control back
#: (the committer retries, and shows the wait on the bar).
WRITE_BUSY_TIMEOUT_MS = 200
_MAGIC = b"SQLite format 3\x00"


class Store:
    """The sidecar file (or an in-memory database when ``path`` is None).

    Opening a path proves the file can be written (the file, its ``-wal`` and ``-shm``,
    the directory) and is a pandas-llm cache; otherwise ``ConfigError`` before anything
    is sent. A new file appears complete (built aside, then linked into place), so an
    empty or foreign file at the path is never ours and is refused, not taken over.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else os.fspath(path)
        self._write_lock = threading.Lock()
        self._ident: tuple[int, int] | None = None
        self.conn = self._open()
        self._chunk = max(1, min(self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1, 30000))

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self.conn = conn
            self._migrate()
            return conn
        path = self.path
        _check_or_create(path)  # refuses a read-only file before secure_files would chmod it
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
            self._migrate()
            secure_files(path)  # -wal and -shm exist now
            _prove_writable(conn, path)
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

    def reopen(self) -> None:
        """Open the file at ``path`` again (after it was deleted or replaced), creating it if needed."""
        with self._write_lock:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = self._open()

    def _migrate(self) -> None:
        conn = self.conn
        conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {name for (name,) in conn.execute("SELECT name FROM migrations")}
        if all(name in done for name, _ in MIGRATIONS):
            return
        conn.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
        try:
            done = {name for (name,) in conn.execute("SELECT name FROM migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    conn.execute(sql)
                    conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def lookup(self, keys: Sequence[bytes]) -> Iterator[Record]:
        """Yield the stored records among ``keys`` (any order; missing keys are skipped)."""
        sql_head = f"SELECT {', '.join(_COLUMNS)} FROM results WHERE key IN "
        step = self._chunk
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            sql = sql_head + "(" + ",".join("?" * len(chunk)) + ")"
            for row in self.conn.execute(sql, chunk):
                yield Record._make(row)

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
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_UPSERT, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self.conn.execute("SELECT count(*) FROM results").fetchone()[0]
        return self.conn.execute("SELECT count(*) FROM results WHERE status = ?", (status,)).fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


PRIVATE_DIR_NAME = ".pandas_llm"


def _create_private(path: str) -> None:
    """Create the file readable by its owner only (answers can be sensitive); a folder we
    create is 0700 whatever the umask, and the default ``.pandas_llm`` folder is kept so."""
    _private_folder(path)
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)


def _private_folder(path: str) -> None:
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _chmod(folder, 0o700)  # makedirs' mode goes through the umask
    elif folder and os.path.basename(os.path.normpath(folder)) == PRIVATE_DIR_NAME:
        _chmod(folder, 0o700)


def secure_files(path: str) -> None:
    """Set the sidecar and its ``-wal``/``-shm`` files to 0600 (owner only), on every open:
    a file made by an older version, another tool or a loose umask is tightened too.
    Files another user owns are left as they are (chmod is not ours to do there)."""
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        _chmod(name, 0o600)


def _chmod(name: str, mode: int) -> None:
    try:
        if os.stat(name).st_mode & 0o777 != mode:
            os.chmod(name, mode)
    except (FileNotFoundError, PermissionError):
        pass


def _check_or_create(path: str) -> None:
    """Refuse what is not ours at ``path``; create a new cache there, complete from its first byte."""
    folder = os.path.dirname(path) or "."
    try:
        _private_folder(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the cache directory {folder!r} ({exc}). {_ADVICE}") from exc
    if not os.path.lexists(path):
        _build_aside(path, folder)
    if not os.path.isfile(path):
        raise ConfigError(f"the cache path {path!r} is not a regular file. {_ADVICE}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except OSError as exc:
        raise ConfigError(f"cannot read the cache file {path!r} ({exc}). {_ADVICE}") from exc
    if head != _MAGIC:
        what = "is empty" if not head else "is not a SQLite database"
        raise ConfigError(f"{path!r} {what}, so it is not a pandas-llm cache; it was left untouched. {_ADVICE}")
    for p, what in ((folder, "directory"), (path, "file"), (path + "-wal", "file"), (path + "-shm", "file")):
        if os.path.exists(p) and not _writable(p):
            raise ConfigError(f"the cache {what} {p!r} is read-only. Make it writable, or {_ADVICE_LOWER}")


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def _build_aside(path: str, folder: str) -> None:
    """Build an empty cache beside ``path``, then link it into place: another process never
    sees a half-made file, so an empty file at a cache path is never one of ours."""
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        _create_private(tmp)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        finally:
            conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:
            if not os.path.lexists(path):  # no hard links on this filesystem
                os.replace(tmp, path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot create the cache file {path!r} ({exc}). {_ADVICE}") from exc
    finally:
        for p in (tmp, tmp + "-wal", tmp + "-shm"):
            try:
                os.remove(p)
            except OSError:
                pass


def _prove_writable(conn: sqlite3.Connection, path: str) -> None:
    """Take the write lock and write once, rolled back (it needs the file, -wal and -shm open
    for writing).
    A lock held by another process is not a fault: commits wait for it, on the bar."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # a write statement (rolled back): a read-only file passes BEGIN but fails here
            conn.execute(
                "UPDATE migrations SET applied_at = applied_at WHERE rowid = (SELECT min(rowid) FROM migrations)"
            )
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise ConfigError(f"cannot write the cache file {path!r} ({exc}). {_ADVICE}") from exc


_ADVICE = "Pass cache='other/path.sqlite' or cache=False."
_ADVICE_LOWER = "pass cache='other/path.sqlite' or cache=False."


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _unusable(path: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"cannot use {path!r} as the pandas-llm cache ({exc}). {_ADVICE}")


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
