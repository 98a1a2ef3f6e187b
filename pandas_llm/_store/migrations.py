"""The sidecar's schema: an append-only list of named migrations, applied in order.

Each file records the names it has applied (table ``migrations``), so opening a file made
by an older version adds only what it lacks, and two processes opening one new file at
the same moment apply each migration once (the check is repeated inside the write
transaction).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

__all__ = ["MIGRATIONS", "migrate"]

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
    # Facts about the file itself; ``file_id`` is random per file (a copy keeps it, a new file at the
    # same path does not), so a Dask worker can tell the driver's sidecar from another (Store.file_id).
    ("007_meta", "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"),
    ("008_file_id", "INSERT INTO meta (name, value) VALUES ('file_id', lower(hex(randomblob(16))))"),
]


def migrate(conn: sqlite3.Connection, transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
    """Apply the migrations the file behind ``conn`` lacks (another process may be applying
    them too), the writes inside the store's ``transaction()``."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {name for (name,) in conn.execute("SELECT name FROM migrations")}
    if all(name in done for name, _ in MIGRATIONS):
        return
    with transaction() as conn:
        done = {name for (name,) in conn.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name not in done:
                conn.execute(sql)
                conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
