"""The driver's side of one cache for the cluster (``_dask/records.py``), without a cluster."""

from __future__ import annotations

import dataclasses

from pandas_llm._config import current_settings
from pandas_llm._dask import records
from pandas_llm._store.store import Record, Store

KEY = b"k" * 32


def test_the_driver_merges_by_key_and_an_ok_answer_is_never_replaced(tmp_path):
    path = str(tmp_path / "driver.sqlite")
    receiver = records._Receiver(path)
    try:
        receiver.handle({"records": [list(Record(KEY, "error", error="HTTP 500"))], "bytes": 1})
        receiver.handle({"records": [list(Record(KEY, "ok", "bonjour", cost=0.001))], "bytes": 1})
        receiver.handle({"records": [list(Record(KEY, "budget", error="max_cost"))], "bytes": 1})
    finally:
        receiver.close()
    with Store(path) as store:
        (got,) = store.lookup([KEY])
    assert (got.status, got.output, got.cost) == ("ok", "bonjour", 0.001)
    assert receiver.received == 3


def test_a_worker_runs_on_the_drivers_file_only_on_its_host(tmp_path, monkeypatch):
    path = str(tmp_path / "driver.sqlite")
    with Store(path) as store:
        file_id = store.file_id
    settings = dataclasses.replace(current_settings(), cache=path)
    here = records._this_host()[0]
    with records.on_worker(records.Home(path, file_id, here, "t"), settings) as mine:
        assert mine.cache == path  # the driver's own file: no local sidecar, nothing to send
    # another host that sees the driver's file through a shared folder: never that file
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with records.on_worker(records.Home(path, file_id, "elsewhere", "t"), settings) as theirs:
        assert theirs.cache == str(tmp_path / "cache" / "pandas-llm" / "dask-driver.sqlite")
    # another host whose file at that path is another one: that file is its local sidecar
    other = str(tmp_path / "other.sqlite")
    Store(other).close()
    with records.on_worker(records.Home(other, file_id, here, "t"), settings) as local:
        assert local.cache == other
