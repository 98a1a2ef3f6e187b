"""The SQLite sidecar: file mode, migrations, upsert rules, two processes on one file."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from contextlib import closing

import pandas as pd
import pytest

from pandas_llm import ConfigError
from pandas_llm._store.migrations import MIGRATIONS
from pandas_llm._store.store import Record, Store


def test_default_path_and_private_mode(opts):
    pd.DataFrame({"text": ["a"]}).llm.map("{text}", **opts)
    path = os.path.join(".pandas_llm", "cache.sqlite")
    assert os.path.exists(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_api_key_is_never_stored(opts, tmp_path):
    pd.DataFrame({"text": ["a"]}).llm.map("{text}", **opts)
    for name in os.listdir(".pandas_llm"):
        with open(os.path.join(".pandas_llm", name), "rb") as f:
            assert b"sk-test" not in f.read()


def test_stores_everything_about_an_answer(opts):
    pd.DataFrame({"text": ["a"]}).llm.map("{text}", max_tokens=50, **opts)
    with closing(sqlite3.connect(".pandas_llm/cache.sqlite")) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM results").fetchone())
    assert row["status"] == "ok" and row["output"] == "echo: a"
    assert row["finish_reason"] == "stop" and row["model"] == "gpt-4o-mini"
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["attempts"] == 1 and row["created_at"] <= row["updated_at"]


def test_ok_is_never_overwritten_by_a_failure():
    with Store(None) as s:
        s.write([Record(b"k" * 32, "ok", "good")])
        s.write([Record(b"k" * 32, "failed", error="boom")])
        assert [r.output for r in s.lookup([b"k" * 32])] == ["good"]
        s.write([Record(b"f" * 32, "failed", error="boom")])
        s.write([Record(b"f" * 32, "ok", "fixed")])
        (rec,) = s.lookup([b"f" * 32])
        assert rec.status == "ok" and rec.attempts == 2


def test_migrations_are_recorded_once(tmp_path):
    path = tmp_path / "c.sqlite"
    Store(path).close()
    Store(path).close()
    with closing(sqlite3.connect(path)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM migrations")]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert names == [name for name, _ in MIGRATIONS]
    assert mode == "wal"


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not a database" * 100)
    with pytest.raises(ConfigError, match="cache=False"):
        Store(bad)


def test_lookup_many_keys_in_chunks():
    keys = [i.to_bytes(32, "big") for i in range(70000)]
    with Store(None) as s:
        s.write(Record(k, "ok", str(i)) for i, k in enumerate(keys))
        got = {r.key: r.output for r in s.lookup(keys)}
    assert len(got) == 70000 and got[keys[12345]] == "12345"


WRITER = textwrap.dedent(
    """
    import sys
    from pandas_llm._store.store import Record, Store
    s = Store(sys.argv[1])
    tag = sys.argv[2]
    for batch in range(50):
        s.write([Record(f"{tag}-{batch}-{i}".encode().ljust(32, b"."), "ok", tag) for i in range(40)])
    s.close()
    """
)


def test_two_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Store(path) as s:
        assert s.count("ok") == 2 * 50 * 40
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_wal_switch_retries_while_another_process_holds_the_file(tmp_path, monkeypatch):
    from pandas_llm._store import store as cache

    calls = []

    class Flaky:
        def execute(self, sql):
            calls.append(sql)
            if len(calls) < 3:
                raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(cache.time, "sleep", lambda s: None)
    cache._enable_wal(Flaky())
    assert calls == ["PRAGMA journal_mode = WAL"] * 3


def test_each_file_has_its_own_id_read_without_changing_it(tmp_path):
    import shutil

    from pandas_llm._store.store import file_id_of

    a, b = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    assert file_id_of(a) is None and not os.path.exists(a)  # nothing created
    with Store(a) as store:
        first = store.file_id
    with Store(a) as store:
        assert store.file_id == first and len(first) == 32
    with Store(b) as store:
        assert store.file_id != first
    shutil.copy(a, str(tmp_path / "copy.sqlite"))
    assert file_id_of(str(tmp_path / "copy.sqlite")) == first == file_id_of(a)
    assert Store(None).file_id is None
