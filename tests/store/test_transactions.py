"""One transaction helper: every write of the package goes through Store.transaction, under
the store's lock, and only pandas_llm._store speaks SQL."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest

import pandas_llm
from pandas_llm._store.leases import Claims
from pandas_llm._store.ledger import Ledger
from pandas_llm._store.store import Record, Store

PACKAGE = Path(pandas_llm.__file__).parent


def held_by_another_thread(store: Store):
    """Enter ``store.transaction()`` on a thread; returns (entered, release, thread)."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction():
            entered.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert entered.wait(30)
    return release, t


@pytest.mark.parametrize(
    "write",
    [
        lambda s: Ledger(s).add_job("j", endpoint="e", model="m", rows=1, requests=1),
        lambda s: Claims(s, lambda u, r: None).release(),
        lambda s: s.write([Record(b"k" * 32, "ok", "x")]),
    ],
    ids=["ledger", "claims", "results"],
)
def test_every_write_waits_for_the_store_lock(tmp_path, write):
    with Store(tmp_path / "c.sqlite") as store:
        release, holder = held_by_another_thread(store)
        errors: list[BaseException] = []
        done = threading.Event()

        def writer() -> None:
            try:
                write(store)
            except BaseException as exc:  # without the lock: "cannot start a transaction within a transaction"
                errors.append(exc)
            done.set()

        w = threading.Thread(target=writer)
        w.start()
        try:
            assert not done.wait(0.3), errors  # it waits for the transaction under way
        finally:
            release.set()
            holder.join()
        w.join(30)
        assert done.is_set() and not errors


def test_a_transaction_rolls_back_on_error_and_releases_the_lock():
    with Store(None) as store:
        with pytest.raises(ZeroDivisionError), store.transaction() as conn:
            conn.execute("INSERT INTO leases VALUES (?, 'me', 1.0)", (b"k",))
            raise ZeroDivisionError
        assert not store.conn.in_transaction
        assert store.conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
        with store.transaction(commit=False) as conn:
            conn.execute("INSERT INTO leases VALUES (?, 'me', 1.0)", (b"k",))
        assert store.conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
        done = []
        t = threading.Thread(target=lambda: done.append(store.write([Record(b"k" * 32, "ok", "x")])))
        t.start()
        t.join(30)
        assert done and store.count("ok") == 1


def test_a_failed_commit_is_rolled_back(tmp_path):
    path = tmp_path / "c.sqlite"
    with Store(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM results").fetchone()  # a reader: fine in WAL
        with store.transaction() as conn:
            conn.execute("INSERT INTO leases VALUES (?, 'me', 1.0)", (b"k",))
        other.execute("ROLLBACK")
        other.close()
        assert not store.conn.in_transaction


SQL = re.compile(r"""\.execute(many)?\(\s*f?["']|\.conn\b|BEGIN IMMEDIATE|import sqlite3""")


def test_only_the_store_speaks_sql():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("_store/", "testing/")):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SQL.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_begin_immediate_is_written_once():
    hits = [
        p.name
        for p in (PACKAGE / "_store").glob("*.py")
        for _ in re.finditer(re.escape('execute("BEGIN IMMEDIATE'), p.read_text())
    ]
    assert hits == ["store.py"]


def test_close_waits_for_a_write_under_way(tmp_path):
    """The engine commits on its own thread; closing SQLite under a write crashed the process
    (a second Ctrl-C landing between the run's end and its commit)."""
    store = Store(str(tmp_path / "c.sqlite"))
    release, holder = held_by_another_thread(store)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.3)
    try:
        assert closer.is_alive(), "close() did not wait for the transaction under way"
    finally:
        release.set()
        holder.join(30)
        closer.join(30)
    assert not closer.is_alive()
