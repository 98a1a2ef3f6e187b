"""The ledger: what the sidecar knows about Batch API jobs, so a kernel restart loses nothing.

A *job* is one ``submit`` (or ``map(mode="batch")``); it is split into *parts*, one
uploaded file and one batch each. A part is written here, with the request keys it
covers, **before** its file is uploaded; its file id is written as soon as the upload
returns, its batch id as soon as the batch exists. So after a crash at any point a
rerun finds, by request key, every part that may be in flight and never submits those
keys again (a part whose batch id was lost is found again through the batch metadata).

A part of packed requests (``rows_per_request=k``) also lists, for each pack, its rows
(``row_entry``: pack key, position, the row's packed key), so a rerun that groups the
rows left into other packs still finds by row key every pack in flight (``held_rows``)
and rebuilds it as it was sent, instead of packing its rows again.

A part stays *open* until its results are written to the results table; closing it
drops its key list (the results table is the record from then on).

    >>> from pandas_llm._store.store import Store
    >>> led = Ledger(Store(None))
    >>> led.add_job("j1", endpoint="http://x/v1", model="m", rows=2, requests=2)
    >>> led.add_part("p1", job="j1", endpoint="http://x/v1", keys=[b"a" * 32, b"b" * 32], tokens=10, nbytes=99)
    >>> led.covering([b"a" * 32, b"c" * 32])
    {b'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa': 'p1'}
    >>> led.close("p1", "completed")
    >>> led.covering([b"a" * 32])
    {}
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import pandas as pd

from .store import Store

__all__ = ["Ledger", "Part", "list_batches"]

ROW_MARK = b"row:"  # a pack's row entry in batch_keys: ROW_MARK + pack key + position (2 bytes) + row key
_ROW_LEN = len(ROW_MARK) + 32 + 2 + 32


def row_entry(pack: bytes, position: int, row: bytes) -> bytes:
    """The batch_keys entry saying that row key ``row`` is item ``position`` of pack ``pack``."""
    return ROW_MARK + pack + position.to_bytes(2, "big") + row


def _is_row(key: bytes) -> bool:
    return len(key) == _ROW_LEN and key.startswith(ROW_MARK)


class Part(NamedTuple):
    """One batch of a job, as the sidecar knows it."""

    part: str
    job: str
    endpoint: str
    batch_id: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    state: str  # new | uploaded | a Batch API status | abandoned
    open: int
    requests: int
    tokens: int
    bytes: int
    completed: int
    failed: int
    error: str | None
    created_at: float
    updated_at: float


_PART_COLUMNS = ", ".join(Part._fields)


class Ledger:
    """Batch jobs, parts and covered keys in the sidecar's tables (migrations 002-005)."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def conn(self) -> Any:
        return self.store.conn  # read at each use: the store may have reopened its file

    def _tx(self, statements: Iterable[tuple[str, Sequence[Any]]], many: tuple[str, Iterable] | None = None) -> None:
        """One write transaction through the store (under its lock: the committer's thread
        writes on the same connection)."""
        with self.store.transaction() as conn:
            for sql, args in statements:
                conn.execute(sql, args)
            if many is not None:
                conn.executemany(*many)

    def add_job(self, job: str, *, endpoint: str, model: str | None, rows: int, requests: int,
                meta: dict[str, Any] | None = None) -> None:  # fmt: skip
        now = time.time()
        self._tx(
            [(
                "INSERT OR IGNORE INTO batch_jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job, endpoint, model, rows, requests, orjson.dumps(meta or {}).decode(), now, now),
            )]
        )  # fmt: skip

    def add_part(self, part: str, *, job: str, endpoint: str, keys: Sequence[bytes], tokens: int, nbytes: int,
                 rows: Sequence[bytes] = ()) -> None:  # fmt: skip
        """Record a part and its keys (and its packs' ``row_entry``s) in one transaction,
        before anything is uploaded."""
        now = time.time()
        self._tx(
            [(
                "INSERT INTO batch_parts (part, job, endpoint, state, requests, tokens, bytes, created_at, updated_at)"
                " VALUES (?, ?, ?, 'new', ?, ?, ?, ?, ?)",
                (part, job, endpoint, len(keys), tokens, nbytes, now, now),
            )],
            ("INSERT OR IGNORE INTO batch_keys VALUES (?, ?)", ((part, k) for k in [*keys, *rows])),
        )  # fmt: skip

    def set_file(self, part: str, file_id: str) -> None:
        self._tx(
            [(
                "UPDATE batch_parts SET input_file_id = ?, state = 'uploaded', updated_at = ? WHERE part = ?",
                (file_id, time.time(), part),
            )]
        )  # fmt: skip

    def update(self, part: str, info: Any) -> None:
        """Store what the API says about the part's batch (a ``backends.batch.BatchInfo``)."""
        self._tx(
            [(
                "UPDATE batch_parts SET batch_id = ?, input_file_id = coalesce(?, input_file_id),"
                " output_file_id = ?, error_file_id = ?, state = ?, completed = ?, failed = ?,"
                " error = coalesce(?, error), updated_at = ? WHERE part = ?",
                (info.id, info.input_file_id, info.output_file_id, info.error_file_id, info.status,
                 info.completed, info.failed, info.errors, time.time(), part),
            )]
        )  # fmt: skip

    def close(self, part: str, state: str, error: str | None = None) -> None:
        """The part's results are in the results table (or it was never sent): forget its keys."""
        self._tx(
            [
                (
                    "UPDATE batch_parts SET open = 0, state = ?, error = coalesce(?, error), updated_at = ?"
                    " WHERE part = ?",
                    (state, error, time.time(), part),
                ),
                ("DELETE FROM batch_keys WHERE part = ?", (part,)),
            ]
        )

    def covering(self, keys: Sequence[bytes]) -> dict[bytes, str]:
        """``{key: part}`` for the keys among ``keys`` that an open part covers."""
        out: dict[bytes, str] = {}
        if not keys or not self._any_open():
            return out
        for _, rows in self.store.select_in("SELECT key, part FROM batch_keys WHERE key IN", keys):
            for key, part in rows:
                out[bytes(key)] = part
        return out

    def _any_open(self) -> bool:
        return self.conn.execute("SELECT 1 FROM batch_parts WHERE open = 1 LIMIT 1").fetchone() is not None

    def keys_of(self, part: str) -> list[bytes]:
        """The request keys of ``part`` (its lines' custom ids; not its row entries)."""
        keys = (bytes(k) for (k,) in self.conn.execute("SELECT key FROM batch_keys WHERE part = ?", (part,)))
        return [k for k in keys if not _is_row(k)]

    def held_rows(self) -> dict[bytes, list[tuple[int, bytes, str]]]:
        """``{pack key: [(position, row key, part), ...]}`` for every pack an open part holds."""
        out: dict[bytes, list[tuple[int, bytes, str]]] = {}
        if not self._any_open():
            return out
        sql = ("SELECT k.key, k.part FROM batch_keys k JOIN batch_parts p ON p.part = k.part"
               " WHERE p.open = 1 AND k.key >= ? AND k.key < ?")  # fmt: skip
        for key, part in self.conn.execute(sql, (ROW_MARK, ROW_MARK[:-1] + bytes([ROW_MARK[-1] + 1]))):
            key = bytes(key)
            if _is_row(key):
                n = len(ROW_MARK)
                pack, pos, row = key[n : n + 32], int.from_bytes(key[n + 32 : n + 34], "big"), key[n + 34 :]
                out.setdefault(pack, []).append((pos, row, part))
        return out

    def part(self, part: str) -> Part | None:
        row = self.conn.execute(f"SELECT {_PART_COLUMNS} FROM batch_parts WHERE part = ?", (part,)).fetchone()
        return None if row is None else Part._make(row)

    def parts(self, *, job: str | None = None, open_only: bool = False) -> list[Part]:
        sql = f"SELECT {_PART_COLUMNS} FROM batch_parts"
        where, args = [], []
        if job is not None:
            where.append("job = ?")
            args.append(job)
        if open_only:
            where.append("open = 1")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Part._make(r) for r in self.conn.execute(sql + " ORDER BY created_at, part", args)]


def list_batches(cache: str | os.PathLike | bool = True) -> pd.DataFrame:
    """Every batch the sidecar knows, newest last: job, batch and file ids, state, counts, times.

    For finding batches after a restart without re-running the cell; ``open`` marks the
    ones whose results are not collected yet (re-running the same call collects them).
    """
    from .._config import DEFAULT_CACHE

    path = DEFAULT_CACHE if cache is True else None if cache is False else os.fspath(cache)
    if path is None or not os.path.exists(path):
        return pd.DataFrame(columns=list(Part._fields))
    with Store(path) as store:
        parts = Ledger(store).parts()
    frame = pd.DataFrame(parts, columns=list(Part._fields))
    for col in ("created_at", "updated_at"):
        frame[col] = pd.to_datetime(frame[col], unit="s")
    frame["open"] = frame["open"].astype(bool)
    return frame
