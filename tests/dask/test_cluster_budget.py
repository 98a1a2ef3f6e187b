"""One ``max_cost``, one progress display and one ``last_run()`` for a whole Dask compute
(``_dask/budget.py``, ``_dask/progress.py``)."""

from __future__ import annotations

import threading

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

import pandas_llm
from helpers import billed, kill_a_worker_when, local_cluster, varied
from pandas_llm._dask.budget import STALE, Purse
from pandas_llm._dask.progress import ClusterReport, Tally, call_label
from pandas_llm._pricing import money
from pandas_llm.testing import LLMServer


@pytest.fixture(scope="module")
def dask_client():
    with local_cluster(3) as c:
        yield c


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"Tell me about item {i}" for i in range(n)]}, index=range(500, 500 + n))


class Recorder:
    """A progress display that keeps what it was shown."""

    def __init__(self):
        self.calls: list[str] = []
        self.last = None
        self.seen = None

    def start(self, stats):
        self.calls.append("start")
        self.seen = stats

    def update(self, stats):
        self.calls.append("update")
        self.seen = stats

    def close(self, stats):
        self.calls.append("close")
        self.last = stats


# -- the purse -----------------------------------------------------------------------------
def test_the_purse_grants_blocks_under_the_cap_then_waits_then_is_out():
    p = Purse(10.0)
    verdict, granted, _ = p.ask(0, "x0", "a", 0.0, 0.0, 0.1)
    assert verdict == "grant" and granted == pytest.approx(1.6)  # a block of 16 worst cases
    assert p.ask(1, "x1", "b", 0.0, 0.0, 4.0)[:2] == ("grant", 4.0)  # a quarter of what is left, at least the ask
    assert p.committed <= 10.0
    p.ask(2, "x2", "c", 0.0, 0.0, 3.0)
    # nothing fits; 'a' still holds room it may hand back: wait
    assert p.ask(2, "x2", "c", 0.0, 3.0, 3.0)[0] == "wait"
    assert p.ask(0, "x0", "a", 0.5, 0.0, 0.0, done=True)[0] == "done"  # 'a' ended having spent 0.5
    assert p.ask(1, "x1", "b", 4.0, 0.0, 0.0, done=True)[0] == "done"
    verdict, granted, _ = p.ask(2, "x2", "c", 2.0, 0.0, 3.0)
    assert verdict == "grant" and p.committed <= 10.0
    assert p.ask(2, "x2", "c", 9.0, 0.0, 3.0)[0] == "out"  # nothing in flight anywhere: exhausted
    assert p.ask(0, "x9", "d", 0.0, 0.0, 0.01)[0] == "out"  # for every run of the call


def test_a_partition_computed_again_keeps_what_its_earlier_execution_held():
    p = Purse(1.0)
    assert p.ask(0, "old", "a", 0.0, 0.0, 0.05)[0] == "grant"  # then its worker dies
    held = p.committed
    assert p.ask(0, "new", "b", 0.0, 0.0, 0.05)[0] == "grant"
    assert p.runs["a"].spent == held  # counted as spent: it may have been
    assert p.ask(0, "old", "a", 0.0, 0.0, 0.05)[0] == "out"  # the earlier execution gets no more


def test_a_worker_that_left_the_cluster_no_longer_holds_the_others_up():
    p = Purse(1.0)
    p.ask(0, "x0", "a", 0.0, 0.0, 0.9, where="tcp://w1")
    assert p.ask(1, "x1", "b", 0.0, 0.0, 0.2, where="tcp://w2")[0] == "wait"
    p.worker_gone("tcp://w1")
    assert p.runs["a"].spent == p.runs["a"].allowance  # all it held counts as spent
    assert p.ask(1, "x1", "b", 0.0, 0.0, 0.2, where="tcp://w2")[0] == "out"
    assert p.ask(0, "x0", "a", 0.0, 0.0, 0.1, where="tcp://w1")[0] == "out"


def test_a_run_silent_for_long_no_longer_holds_the_others_up():
    now = [0.0]
    p = Purse(1.0, clock=lambda: now[0])
    p.ask(0, "x0", "a", 0.0, 0.0, 0.9)  # then its worker dies, its partition not computed again
    assert p.ask(1, "x1", "b", 0.0, 0.0, 0.2)[0] == "wait"
    now[0] = STALE + 1
    assert p.ask(1, "x1", "b", 0.0, 0.0, 0.2)[0] == "out"


# -- the driver's tally --------------------------------------------------------------------
def _msg(part, execution, final, **figures):
    return {"p": part, "x": execution, "final": final, "s": {"outcome": "done" if final else "running", **figures}}


def test_a_partition_computed_again_replaces_its_figures():
    shown = Recorder()
    tally = Tally(shown, 2, None)
    tally(_msg(0, "a", False, total=10, sent_done=3, cost=0.3))
    tally(_msg(1, "b", True, total=5, sent_done=5, cost=0.5))
    tally(_msg(0, "a2", False, total=10, sent_done=1, cost=0.1))  # its worker died: Dask runs it again
    tally(_msg(0, "a", False, total=10, sent_done=4, cost=0.4))  # a late message of the dead one
    tally(_msg(0, "a2", True, total=10, sent_done=10, cost=1.0))
    report = pandas_llm.last_run()
    assert (report.stats.total, report.stats.sent_done, report.stats.cost) == (15, 15, 1.5)
    assert (report.stats.lost_answers, report.stats.possibly_billed) == (3, 0.3)  # what the dead one had paid
    assert report.stats.outcome == "done" and shown.calls.count("start") == 1 and shown.calls[-1] == "close"
    with pytest.raises(pandas_llm.ConfigError, match="details=True"):
        _ = report.details
    tally(_msg(0, "a3", True, total=10, cached=10))  # the lazy result computed a second time
    tally(_msg(1, "b2", True, total=5, cached=5))
    assert pandas_llm.last_run() is not report and pandas_llm.last_run().stats.cached == 15


def test_the_total_counts_the_partitions_not_started_yet_until_they_start():
    shown = Recorder()
    tally = Tally(shown, 4, None)
    tally(_msg(0, "a", False, total=50, sent_done=10))
    assert shown.seen.total == 200  # 50 rows started of 4 partitions: not 10/50 done, 10/200
    assert pandas_llm.last_run().stats.total == 50  # the report counts the rows it has figures for
    tally(_msg(0, "a", True, total=50, sent_done=50))
    tally(_msg(1, "b", True, total=30, sent_done=30))
    assert shown.seen.total == 160 and not tally.closed  # (50 + 30) / 2 started * 4
    tally(_msg(2, "c", True, total=50, sent_done=50))
    tally(_msg(3, "d", True, total=40, sent_done=40))
    assert pandas_llm.last_run().stats.total == 170 and shown.last.total == 170  # the real total at the end


def test_a_compute_that_fails_early_reports_the_rows_it_started():
    tally = Tally(Recorder(), 4, None)
    tally(_msg(0, "a", False, total=50, sent_done=10))
    tally({"p": 1, "x": "b", "final": True, "s": {"outcome": "failed", "total": 50, "sent_done": 3}})
    assert pandas_llm.last_run().stats.total == 100 and pandas_llm.last_run().stats.outcome == "failed"


def test_a_compute_of_some_partitions_ends_its_report_once_no_compute_runs(monkeypatch):
    from pandas_llm._dask import computes

    running = [True]
    monkeypatch.setattr(computes, "computing", lambda: running[0])
    tally = Tally(Recorder(), 4, None)
    tally(_msg(0, "a", False, total=10, sent_done=4))
    tally(_msg(0, "a", True, total=10, sent_done=10, cost=0.1))  # head(): partition 0 only
    assert pandas_llm.last_run().stats.outcome == "running"  # a compute runs: maybe more partitions
    running[0] = False
    report = pandas_llm.last_run()  # the compute is over: its report ends with what it computed
    assert isinstance(report, ClusterReport) and (report.partitions, report.npartitions) == (1, 4)
    assert (report.stats.total, report.stats.sent_done, report.stats.outcome) == (10, 10, "done")
    for part in range(4):  # then the whole result: a new compute, partition 0 again from the cache
        tally(_msg(part, f"b{part}", True, total=10, sent_done=0 if part == 0 else 10, cached=10 if part == 0 else 0))
    again = pandas_llm.last_run()
    assert again is not report and (again.partitions, again.stats.total, again.stats.outcome) == (4, 40, "done")
    assert (again.stats.sent_done, again.stats.cached, again.stats.lost_answers, again.stats.possibly_billed) == (
        30,
        10,
        0,
        0.0,
    )  # not the head()'s partition 0 taken for a dead execution


def test_a_partition_still_running_keeps_the_report_open():
    tally = Tally(Recorder(), 2, None)
    tally(_msg(0, "a", True, total=10, sent_done=10))
    tally(_msg(1, "b", False, total=10, sent_done=3))  # its final figures not in yet
    assert pandas_llm.last_run().stats.outcome == "running" and not tally.closed


# -- in this process -----------------------------------------------------------------------
def test_one_cap_for_the_partitions_of_a_threaded_compute():
    df = frame(200)
    cap = 0.0008  # one partition's 50 rows cost less: a cap per partition would answer every row
    with LLMServer(answer=varied) as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=False, progress=False, max_tokens=80)
        lazy = dd.from_pandas(df, npartitions=4).llm.map("{t}", max_cost=cap, **kw)
        with dask.config.set(scheduler="threads"), pytest.warns(pandas_llm.RunWarning, match="max_cost") as caught:
            out = lazy.compute()
        assert len(caught) == 1  # one for the compute, not one per partition
        assert billed(srv) <= cap
        report = pandas_llm.last_run()
        assert report.stats.cost == pytest.approx(billed(srv), rel=1e-9)
        assert report.stats.budget_reached and report.stats.unsent["budget"] == 200 - srv.completed
        assert out.isna().sum() >= 200 - srv.completed > 0
        # a second compute of the same lazy result shares the cap: what the first spent counts
        spent = billed(srv)
        srv.reset_counters()
        with dask.config.set(scheduler="threads"), pytest.warns(pandas_llm.RunWarning, match="max_cost"):
            lazy.compute()
        assert billed(srv) <= cap - spent


def test_a_call_is_named_by_its_verb_and_its_template_shortened():
    def ask(row):
        return row["t"]

    assert call_label("map", "Translate to French:\n  {text}") == "map('Translate to French: {text}')"
    assert call_label("classify", "x" * 50, width=10) == "classify('xxxxxxxxx…')"
    assert call_label("map", ask).startswith("map(test_a_call_is_named") and call_label("map", ask).endswith(".ask)")


def test_each_verb_of_one_compute_warns_naming_its_call():
    df = frame(200)
    cap = 0.0008  # less than either verb's rows cost: both leave rows without an answer
    with LLMServer(answer=varied) as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=False, progress=False, max_tokens=80, max_cost=cap)
        ddf = dd.from_pandas(df, npartitions=4)
        first = ddf.llm.map("{t}", **kw)
        second = ddf.llm.map("Summarise in one short line, for a busy reader: {t}", **kw)
        with dask.config.set(scheduler="threads"), pytest.warns(pandas_llm.RunWarning) as caught:
            dask.compute(first, second)
    texts = sorted(str(w.message) for w in caught)
    assert len(texts) == 2  # one per verb call, each saying which
    assert texts[0].startswith("map('Summarise in one short line, for a busy…'): ")
    assert texts[1].startswith("map('{t}'): ")
    assert all("of 200 rows have no answer" in t and "max_cost=" in t for t in texts)


# -- worker processes ----------------------------------------------------------------------
def test_one_cap_one_display_and_one_report_for_worker_processes(dask_client):
    df = frame(300)
    cap = 0.0012
    shown = Recorder()
    with LLMServer(answer=varied) as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=False, max_tokens=80)
        lazy = dd.from_pandas(df, npartitions=6).llm.map("{t}", max_cost=cap, progress=shown, **kw)
        with pytest.warns(pandas_llm.RunWarning) as caught:
            out = dask_client.compute(lazy).result()
        spent = billed(srv)
        assert spent <= cap
        s = pandas_llm.last_run().stats
        assert s.budget_reached and s.outcome == "done"
        # one warning, on the driver (the partitions' own would stay in the workers' logs)
        [w] = [str(w.message) for w in caught]
        assert w.startswith(
            f"map('{{t}}'): {s.unsent['budget']} of 300 rows have no answer: {s.unsent['budget']} budget"
        )
        assert f"max_cost={money(cap)} stopped the compute after {money(s.cost)}" in w
        assert "pass details=True" in w and "Computing it again" in w
        assert (s.total, s.sent_done + s.unsent["budget"]) == (300, 300)
        assert (s.attempts, s.sent_done) == (srv.requests, srv.completed)
        assert (s.prompt_tokens, s.completion_tokens) == (srv.prompt_tokens, srv.completion_tokens)
        assert s.cost == pytest.approx(spent, rel=1e-9)
        assert out.notna().sum() <= srv.completed < 300
        assert shown.calls.count("start") == 1 and shown.calls.count("close") == 1 and shown.last is s


def test_the_text_bar_is_drawn_on_the_driver_over_every_partition(dask_client, server, opts, capsys):
    lazy = dd.from_pandas(frame(60), npartitions=3).llm.map("{t}", **{**opts, "progress": "text"})
    dask_client.compute(lazy).result()
    err = capsys.readouterr().err
    last = err.rstrip().rsplit("\r", 1)[-1]
    assert last.startswith("pandas-llm: 100%") and "60/60" in last  # its last draw: every partition's requests


def test_without_max_cost_the_report_sums_the_partitions_and_a_rerun_reads_the_cache(dask_client, server, opts):
    df = frame(120)
    lazy = dd.from_pandas(df, npartitions=5).llm.map("{t}", **opts)
    dask_client.compute(lazy).result()
    first = pandas_llm.last_run()
    # which report it is, first: a failure then says what went wrong (not a compute's report, partitions missing)
    assert isinstance(first, ClusterReport) and (first.partitions, first.stats.outcome) == (5, "done")
    s = first.stats
    assert (s.total, s.sent_done, s.ok, s.cached) == (120, server.completed, 120, 0)
    assert s.prompt_tokens == server.prompt_tokens and s.rate_limited == s.overloaded == 0
    assert "120 rows" in pandas_llm.last_run().summary()
    lazy = dd.from_pandas(df, npartitions=5).llm.map("{t}", **opts)
    assert pandas_llm.last_run() is first  # calling the verb runs nothing
    dask_client.compute(lazy).result()
    second = pandas_llm.last_run()
    assert isinstance(second, ClusterReport) and second is not first
    assert (second.partitions, second.stats.outcome) == (5, "done")
    s = second.stats
    assert (s.total, s.sent_done, s.cached) == (120, 0, 120)  # the second call's compute alone


def test_last_run_after_the_result_waits_for_final_figures_delivered_late(dask_client, server, opts, monkeypatch):
    """They come before the result (events.py); were they late, last_run() still has them all."""
    from pandas_llm._dask.events import Channel

    received = Channel._received
    timers = []

    def late(self, event):
        if event[1].get("final"):  # the partitions' final figures reach the driver's handler 0.5 s late
            timers.append(threading.Timer(0.5, received, (self, event)))
            timers[-1].start()
        else:
            received(self, event)

    monkeypatch.setattr(Channel, "_received", late)
    lazy = dd.from_pandas(frame(120), npartitions=5).llm.map("{t}", **opts)
    dask_client.compute(lazy).result()
    report = pandas_llm.last_run()
    assert timers and isinstance(report, ClusterReport) and (report.partitions, report.stats.outcome) == (5, "done")
    assert (report.stats.total, report.stats.sent_done, report.stats.ok) == (120, server.completed, 120)
    for t in timers:
        t.join()


@pytest.mark.parametrize("read", [True, False], ids=["read-between", "not-read"])
@pytest.mark.parametrize("where", ["threads", "distributed"])
def test_head_then_the_whole_result_make_two_reports_each_of_its_compute(where, read, request, server, opts):
    """head() computes partition 0 only: its report ends with it (when the compute ends, or
    last_run() is read); the compute after it is a new one."""
    scheduler = "threads" if where == "threads" else request.getfixturevalue("dask_client")
    lazy = dd.from_pandas(frame(40), npartitions=4).llm.map("{t}", **opts)
    lazy.head(3, compute=False).compute(scheduler=scheduler)
    if read:
        head = pandas_llm.last_run()
        assert isinstance(head, ClusterReport) and (head.partitions, head.npartitions) == (1, 4)
        assert (head.stats.total, head.stats.sent_done, head.stats.outcome) == (10, 10, "done")
    lazy.compute(scheduler=scheduler)
    whole = pandas_llm.last_run()
    assert isinstance(whole, ClusterReport) and whole.partitions == 4
    s = whole.stats
    assert (s.total, s.sent_done, s.cached, s.outcome) == (40, 30, 10, "done")
    assert (s.lost_answers, s.possibly_billed) == (0, 0.0) and server.completed == 40


def test_max_cost_with_an_unknown_price_fails_when_the_verb_is_called(server):
    ddf = dd.from_pandas(frame(4), npartitions=2)
    with pytest.raises(pandas_llm.ConfigError, match="price"):
        ddf.llm.map("{t}", model="my-llama", max_cost=1.0, base_url=server.base_url, api_key="x", cache=False)
    assert server.requests == 0


def test_a_worker_killed_mid_compute_neither_breaks_the_cap_nor_counts_its_partition_twice(dask_client):
    df = frame(400)
    cap = 0.004
    with LLMServer(answer=varied, latency=0.05) as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=False, progress=False, max_tokens=80, concurrency=4)
        future = dask_client.compute(dd.from_pandas(df, npartitions=8).llm.map("{t}", max_cost=cap, **kw))
        kill_a_worker_when(dask_client, future, lambda: srv.requests)  # Dask computes its partitions again
        out = future.result(timeout=120)
        assert billed(srv) <= cap  # what the dead worker paid counted against the cap
        s = pandas_llm.last_run().stats
        assert s.total == 400 and s.sent_done + s.unsent["budget"] == 400  # each partition once
        assert s.sent_done == out.notna().sum() <= srv.completed
