"""Every answer a run keeps is written by the committer's thread, never on the event loop."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

import pandas_llm
from pandas_llm._run import inflight
from pandas_llm._store.store import Store


def test_rows_too_long_to_send_are_committed_by_the_commit_thread(server, opts, monkeypatch):
    threads: list[tuple[str, set[str]]] = []
    real = Store.write

    def write(self, records):
        records = list(records)
        threads.append((threading.current_thread().name, {r.status for r in records}))
        return real(self, records)

    monkeypatch.setattr(Store, "write", write)
    with pytest.warns(pandas_llm.RunWarning, match="too_long"):
        pd.Series(["short", "word " * 9000]).llm.embed(dimensions=8, **{**opts, "cache": "c.sqlite"})
    assert any("too_long" in statuses for _, statuses in threads)
    assert {name.startswith("pandas-llm-commit") for name, _ in threads} == {True}
    stats = pandas_llm.last_run().stats
    assert (stats.sent_done, stats.ok, dict(stats.failed)) == (2, 1, {"too_long": 1})


def test_a_finalizer_run_inside_close_run_does_not_deadlock():
    a, b = inflight.open_run(), inflight.open_run()
    with inflight._lock:  # as when the garbage collector runs a Run's finalizer inside close_run
        inflight.close_later(b)
    inflight.close_run(a)
    assert a not in inflight._active and b not in inflight._active
