"""A run keeps full garbage collections over the whole heap off its hot path (``_run/heap.py``):
the objects from before the run are frozen while it sends, and given back after it, whatever
way it ends; a process that froze its heap itself before the run is left as it is;
a child forked during a run starts thawed. (The threshold of requests is lowered to 1 here.)"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
import weakref

import pandas as pd
import pytest

import pandas_llm  # noqa: F401 - the accessor
from pandas_llm._run import heap
from pandas_llm._run.heap import frozen_heap


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _thawed(monkeypatch):
    monkeypatch.setattr(heap, "MIN_REQUESTS", 1)
    assert gc.get_freeze_count() == 0, "an earlier test left the heap frozen"
    yield
    gc.unfreeze()


def _seen_during_run(**options):
    """gc.get_freeze_count() as the client function sees it, once per row."""
    seen = []

    def client(messages, **params):
        seen.append(gc.get_freeze_count())
        return "ok"

    out = pd.DataFrame({"text": ["a", "b", "c"]}).llm.map(
        "{text}", client=client, cache=False, progress=False, **options
    )
    return seen, out


def test_the_heap_is_frozen_during_a_run_and_given_back_after_it():
    seen, out = _seen_during_run()
    assert out.tolist() == ["ok"] * 3
    assert seen and all(n > 0 for n in seen)
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_before_the_run_is_freed_after_it():
    garbage = Cycle()
    ref = weakref.ref(garbage)
    del garbage
    _seen_during_run()
    gc.collect()
    assert ref() is None


def test_the_async_verbs_freeze_too():
    seen = []

    async def client(messages, **params):
        seen.append(gc.get_freeze_count())
        return "ok"

    async def main():
        return await pd.DataFrame({"text": ["a", "b"]}).llm.amap("{text}", client=client, cache=False, progress=False)

    assert asyncio.run(main()).tolist() == ["ok", "ok"]
    assert seen and all(n > 0 for n in seen)
    assert gc.get_freeze_count() == 0


def test_a_failed_run_gives_the_heap_back():
    def client(messages, **params):
        raise pandas_llm.FatalAPIError("the key is revoked")

    with pytest.raises(pandas_llm.FatalAPIError):
        pd.DataFrame({"text": ["a"]}).llm.map("{text}", client=client, cache=False, progress=False)
    assert gc.get_freeze_count() == 0


def test_bad_input_gives_the_heap_back():
    with pytest.raises(pandas_llm.ConfigError):
        pd.DataFrame({"text": ["a"]}).llm.map("{missing}", client=lambda m, **p: "ok", cache=False, progress=False)
    assert gc.get_freeze_count() == 0


def test_a_heap_the_process_froze_itself_stays_frozen():
    gc.freeze()
    before = gc.get_freeze_count()
    _seen_during_run()
    assert before > 0 and gc.get_freeze_count() > 0, "a freeze that is not ours was undone"


def test_the_opt_out(monkeypatch):
    monkeypatch.setenv("PANDAS_LLM_FREEZE_GC", "0")
    seen, _ = _seen_during_run()
    assert seen == [0, 0, 0]


def test_overlapping_runs_thaw_when_the_last_one_ends():
    first_in, release = threading.Event(), threading.Event()

    def hold():
        with frozen_heap(1):
            first_in.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    assert first_in.wait(5)
    try:
        with frozen_heap(1):
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0, "the first run is still going"
    finally:
        release.set()
        t.join(5)
    assert gc.get_freeze_count() == 0


def test_a_small_run_does_not_freeze(monkeypatch):
    monkeypatch.setattr(heap, "MIN_REQUESTS", 4)
    seen, _ = _seen_during_run()
    assert seen == [0, 0, 0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_during_a_run_starts_thawed():
    codes = []

    def client(messages, **params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running (3.12+)
            pid = os.fork()
        if pid == 0:
            os._exit(0 if gc.get_freeze_count() == 0 else 3)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        return "ok"

    pd.DataFrame({"text": ["a"]}).llm.map("{text}", client=client, cache=False, progress=False)
    assert codes == [0]
