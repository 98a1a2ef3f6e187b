"""The sidecar is checked before paying, and a commit is never dropped.

- A path that cannot be written (read-only file, a read-only -shm left by an earlier
  run, a read-only directory) or that is not ours (empty, not SQLite, another
  program's database) is refused with ConfigError before any request: the loopback
  server's counters prove nothing was sent.
- Another connection holding the write lock: the run waits (the bar says so), sends
  nothing new meanwhile, and commits everything once the lock is released. Held past
  the committer's patience: the answers come back in the result with a warning that
  they are not on disk.
- The cache file (or its directory) deleted during a run: detected at the next commit,
  recreated with every answer of the run, with a warning; a rerun pays nothing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import pandas_llm
from helpers import check_counts
from pandas_llm import ConfigError, RunWarning, StoreError
from pandas_llm._store import committer as committer_module
from pandas_llm._store.store import Record, Store

ROWS = 200


def frame(n: int = ROWS) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"row {i}" for i in range(n)]})


def expected(n: int = ROWS) -> list[str]:
    return [f"echo: Say row {i}" for i in range(n)]


# -- refused before paying ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content, words",
    [(b"", "is empty"), (b"just some notes\n" * 50, "is not a SQLite database")],
)
def test_a_file_that_is_not_a_cache_is_refused_and_left_untouched(server, opts, tmp_path, content, words):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=words) as info:
        frame().llm.map("Say {t}", cache=path, **opts)
    assert "cache=False" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == content and not Path(f"{path}-wal").exists()
    assert server.requests == 0


def test_another_programs_sqlite_database_is_refused(server, opts, tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    with pytest.raises(ConfigError, match="not a pandas-llm cache"):
        frame().llm.map("Say {t}", cache=path, **opts)
    with sqlite3.connect(path) as conn:
        assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master")] == ["customers"]
    conn.close()
    assert server.requests == 0


def make_read_only(p: Path) -> None:
    """chmod for an ordinary user; root writes through any mode, so for root the file is made
    immutable (chattr +i), which root cannot write either."""
    if os.geteuid() != 0:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
        return
    res = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"running as root and chattr +i is not available here: {res.stderr.strip()}")


def make_writable(p: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(p)], capture_output=True)
    else:
        os.chmod(p, 0o700)


@pytest.mark.parametrize("checks", ["file modes", "sqlite only"])
@pytest.mark.parametrize(
    "case", ["read-only file", "read-only -shm", "read-only directory", "new file, read-only directory"]
)
def test_a_cache_that_cannot_be_written_is_refused_before_paying(server, opts, tmp_path, monkeypatch, case, checks):
    if checks == "sqlite only":  # the write SQLite is made to attempt catches it without the mode checks
        import pandas_llm._store.files

        monkeypatch.setattr(pandas_llm._store.files, "_writable", lambda p: True)
    folder = tmp_path / "caches"
    folder.mkdir()
    cache = folder / "cache.sqlite"
    if case != "new file, read-only directory":
        Store(cache).close()
    target = {"read-only file": cache, "read-only -shm": Path(f"{cache}-shm")}.get(case, folder)
    if case == "read-only -shm":
        target.write_bytes(b"")  # left by an earlier run
    make_read_only(target)
    try:
        with pytest.raises(ConfigError) as info:
            frame().llm.map("Say {t}", cache=cache, **opts)
    finally:
        make_writable(target)
    message = str(info.value)
    assert "cache=False" in message and str(folder) in message
    assert server.requests == 0  # refused before anything was sent or paid


def test_sqlite_errors_reach_the_user_as_store_errors(tmp_path):
    path = tmp_path / "c.sqlite"
    store = Store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="write lock") as info:
            store.write([Record(b"k" * 32, "ok", "x")])
        assert info.value.busy and info.value.path == str(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.write([Record(b"k" * 32, "ok", "x")])
    store.close()


# -- commits that fail -------------------------------------------------------------------


def hold_lock(path: Path, after_ok: int, seconds: float, stop: threading.Event, seen: list) -> threading.Thread:
    """Take the write lock once ``after_ok`` answers are on disk; hold it ``seconds``."""

    def run() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            while not stop.is_set():
                if path.exists() and conn.execute("SELECT count(*) FROM results").fetchone()[0] >= after_ok:
                    break
                time.sleep(0.01)
            conn.execute("BEGIN EXCLUSIVE")
            seen.append(("locked", time.monotonic()))
            end = time.monotonic() + seconds
            while time.monotonic() < end and not stop.is_set():
                report = pandas_llm.last_run()
                if report is not None and report.stats.store_trouble:
                    seen.append(("shown", report.stats.store_trouble, report.stats.in_flight))
                time.sleep(0.01)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_held_lock_pauses_sending_and_every_answer_is_committed_after(tmp_path):
    from pandas_llm.testing import LLMServer

    path = tmp_path / "c.sqlite"
    Store(path).close()
    stop, seen = threading.Event(), []
    with LLMServer(latency=0.01) as srv:
        holder = hold_lock(path, 20, 0.8, stop, seen)
        out = frame().llm.map("Say {t}", cache=path, base_url=srv.base_url, api_key="x", concurrency=4, progress=False)
        stop.set()
        holder.join()
        billed = srv.completed
    assert out.tolist() == expected()
    shown = [s for s in seen if s[0] == "shown"]
    assert shown and shown[0][1] == "waiting for the cache lock"
    assert shown[-1][2] == 0  # sending stopped while the commits waited
    assert billed == ROWS  # nothing paid twice, nothing lost
    with Store(path) as s:
        assert s.count("ok") == ROWS


def test_a_lock_held_past_patience_returns_the_answers_with_a_warning(tmp_path, monkeypatch):
    from pandas_llm.testing import LLMServer

    monkeypatch.setattr(committer_module, "PATIENCE", 0.3)
    path = tmp_path / "c.sqlite"
    Store(path).close()
    stop, seen = threading.Event(), []
    with LLMServer(latency=0.01) as srv:
        holder = hold_lock(path, 20, 1.0, stop, seen)
        with pytest.warns(RunWarning) as warned:
            out = frame().llm.map(
                "Say {t}", cache=path, base_url=srv.base_url, api_key="x", concurrency=4, progress=False
            )
        stop.set()
        holder.join()
        billed = srv.completed
    stats = pandas_llm.last_run().stats
    text = " ".join(str(w.message) for w in warned)
    assert "NOT in the cache file" in text and "StoreError" in text
    assert isinstance(stats.store_error, StoreError) and stats.unsaved > 0
    assert out.notna().sum() == billed  # every answer paid for is in the result
    assert out.dropna().tolist() == [v for v in expected() if v in set(out.dropna())]
    assert out.isna().sum() == ROWS - billed  # the rest was never sent
    report = pandas_llm.last_run()
    check_counts(report)
    assert f"{billed} requests sent ({billed} ok), {ROWS - billed} not sent (stopped)" in report.summary()
    with Store(path) as s:
        assert s.count("ok") == billed - stats.unsaved


# -- the file deleted or replaced during a run --------------------------------------------


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_cache_deleted_during_a_run_is_recreated_with_every_answer(tmp_path, what):
    from pandas_llm.testing import LLMServer

    path = tmp_path / "sub" / "c.sqlite"
    df = frame()
    done = threading.Event()

    def delete_midway() -> None:
        while not done.is_set():
            report = pandas_llm.last_run()
            if report is not None and report.stats.sent_done >= 40:
                if what == "directory":
                    shutil.rmtree(path.parent)
                else:
                    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                        p.unlink(missing_ok=True)
                return
            time.sleep(0.005)

    with LLMServer(latency=0.01) as srv:
        pandas_llm._stats._last = None
        deleter = threading.Thread(target=delete_midway, daemon=True)
        deleter.start()
        with pytest.warns(RunWarning, match="deleted or replaced"):
            out = df.llm.map("Say {t}", cache=path, base_url=srv.base_url, api_key="x", concurrency=4, progress=False)
        done.set()
        deleter.join()
        assert out.tolist() == expected()
        assert srv.completed == ROWS
        again = df.llm.map("Say {t}", cache=path, base_url=srv.base_url, api_key="x", progress=False)
        assert again.tolist() == expected()
        assert srv.completed == ROWS  # the rerun paid for nothing
    with Store(path) as s:
        assert s.count("ok") == ROWS


def test_a_cache_folder_replaced_by_a_file_returns_the_answers_with_a_store_error(tmp_path, monkeypatch):
    """The file cannot be created again (its folder is now a file): the commits wait out
    their patience, then the answers come back with a warning, not a raw sqlite3 error."""
    from pandas_llm.testing import MockBackend

    monkeypatch.setattr(committer_module, "PATIENCE", 0.3)
    path = tmp_path / "sub" / "c.sqlite"

    def handler(request):
        if request["messages"][-1]["content"] == "Say row 20" and path.parent.is_dir():
            shutil.rmtree(path.parent)
            path.parent.write_text("not a folder")
        return "ok"

    with pytest.warns(RunWarning, match="NOT in the cache file"):
        out = frame(40).llm.map("Say {t}", cache=path, client=MockBackend(handler), concurrency=2, progress=False)
    stats = pandas_llm.last_run().stats
    assert out.tolist() == ["ok"] * 40
    assert stats.outcome == "done" and isinstance(stats.store_error, StoreError)
    assert "cannot be created again" in str(stats.store_error)
