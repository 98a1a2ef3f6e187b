"""Files that keep what one process learned for the next (_kept.py): read once, written atomically
on a thread, stale or damaged entries ignored, an unwritable folder costing only the speed-up."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pandas_llm._kept import KeptFile, user_cache_dir


def kept(ttl: float = 100.0) -> KeptFile:
    return KeptFile("test.json", ttl=ttl, what="test entries", thread="pandas-llm-test-kept")


def written() -> None:
    for t in threading.enumerate():
        if t.name == "pandas-llm-test-kept":
            t.join()


def test_the_file_is_in_the_users_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kept().path == str(tmp_path / "xdg" / "pandas-llm" / "test.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache")


def test_an_entry_put_is_read_by_the_next_process():
    f = kept()
    assert f.get("a") is None
    f.put("a", {"x": 1})
    written()
    again = kept()  # a new process
    entry = again.get("a")
    assert entry is not None and entry["x"] == 1 and time.time() - entry["at"] < 60
    assert not [n for n in os.listdir(os.path.dirname(f.path)) if n != "test.json"]  # no temporary file left


def test_the_file_is_read_once_per_process_until_forgotten():
    f = kept()
    assert f.get("a") is None
    other = kept()
    other.put("a", {"x": 1})  # another process writes
    written()
    assert f.get("a") is None  # this one read the file already
    f.forget()
    assert f.get("a")["x"] == 1


def test_the_same_fields_are_not_written_again_until_a_seventh_of_the_ttl():
    f = kept(ttl=700.0)
    f.put("a", {"x": 1})
    written()
    at = f.get("a")["at"]
    f.put("a", {"x": 1})
    written()
    assert f.get("a")["at"] == at  # nothing written
    f.put("a", {"x": 2})
    written()
    assert f.get("a")["x"] == 2


def test_stale_entries_are_not_used_and_dropped_at_the_next_write():
    f = kept(ttl=100.0)
    os.makedirs(os.path.dirname(f.path))
    now = time.time()
    Path(f.path).write_text(json.dumps({"old": {"x": 1, "at": now - 200}, "future": {"x": 1, "at": now + 3600},
                                        "young": {"x": 2, "at": now - 10}}))  # fmt: skip
    assert f.get("old") is None and f.get("future") is None  # a clock set back must not keep it forever
    assert f.get("young")["x"] == 2
    f.put("new", {"x": 3})
    written()
    assert set(json.loads(Path(f.path).read_text())) == {"young", "new"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"a": 3}', '{"a": {"x": 1, "at": true}}', ""])
def test_a_damaged_file_reads_as_empty_and_is_replaced(content):
    f = kept()
    os.makedirs(os.path.dirname(f.path))
    Path(f.path).write_text(content)
    assert f.get("a") is None
    f.put("a", {"x": 1})
    written()
    assert json.loads(Path(f.path).read_text())["a"]["x"] == 1


def test_an_unwritable_folder_is_a_debug_line(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder should be
    caplog.set_level("DEBUG", logger="pandas_llm")
    f = kept()
    f.put("a", {"x": 1})
    written()
    assert f.get("a") is None
    assert "test entries not written" in caplog.text
