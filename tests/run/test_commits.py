"""Every answer a run keeps is written by the committer's thread, never on the event loop."""

from __future__ import annotations

import pandas as pd
import pytest

import pandas_llm
from helpers import spy_writes
from pandas_llm._run import inflight


def test_rows_too_long_to_send_are_committed_by_the_commit_thread(server, opts, monkeypatch):
    writes = spy_writes(monkeypatch)
    with pytest.warns(pandas_llm.RunWarning, match="too_long"):
        pd.Series(["short", "word " * 9000]).llm.embed(dimensions=8, **{**opts, "cache": "c.sqlite"})
    assert any(r.status == "too_long" for _, records in writes for r in records)
    assert {name.startswith("pandas-llm-commit") for name, _ in writes} == {True}
    stats = pandas_llm.last_run().stats
    assert (stats.sent_done, stats.ok, dict(stats.failed)) == (2, 1, {"too_long": 1})


def test_a_finalizer_run_inside_close_run_does_not_deadlock():
    a, b = inflight.open_run(), inflight.open_run()
    with inflight._lock:  # as when the garbage collector runs a Run's finalizer inside close_run
        inflight.close_later(b)
    inflight.close_run(a)
    assert a not in inflight._active and b not in inflight._active
