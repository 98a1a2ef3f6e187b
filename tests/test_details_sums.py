"""``last_run().details`` is additive: its tokens and cost summed over the rows are the run's own
(duplicates share their request's, rows from the cache show 0 and their ``saved_cost``)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from pydantic import BaseModel

import pandas_llm

TOKENS = ["prompt_tokens", "completion_tokens", "cached_tokens"]


class Answer(BaseModel):
    summary: str


def check_sums(report: pandas_llm.RunReport) -> pd.DataFrame:
    d, s = report.details, report.stats
    for col in TOKENS:
        assert int(d[col].sum()) == getattr(s, col), col
    assert float(d["cost"].sum()) == pytest.approx(s.cost, rel=1e-12, abs=1e-15)
    assert float(d["saved_cost"].sum()) == pytest.approx(s.saved_cost, rel=1e-12, abs=1e-15)
    assert d["prompt_tokens"].dtype == "Int64" and d["cost"].dtype == "Float64" and d["saved_cost"].dtype == "Float64"
    return d


def test_duplicates_share_their_request(server, opts, tmp_path):
    df = pd.DataFrame({"a": ["x x x x", "x x x x", "x x x x", "y", None]}, index=list("pqrst"))
    df.llm.map("{a}", model="gpt-4o-mini", cache=str(tmp_path / "c.sqlite"), **opts)
    report = pandas_llm.last_run()
    d = check_sums(report)
    assert report.stats.cost > 0 and server.requests == 2
    assert int(d["prompt_tokens"].sum()) == server.prompt_tokens
    x = d.loc[["p", "q", "r"]]
    # the three rows split one request: tokens exactly (remainder first), cost equally
    assert x["prompt_tokens"].max() - x["prompt_tokens"].min() <= 1
    assert x["prompt_tokens"].tolist() == sorted(x["prompt_tokens"].tolist(), reverse=True)
    assert x["cost"].nunique() == 1 and not x["from_cache"].any()
    assert d.loc["t", "status"] == "skipped" and d.loc["t", "prompt_tokens"] == 0
    assert (d["saved_cost"].fillna(0) == 0).all()


def test_cached_rows_show_zero_and_their_saved_cost(server, opts, tmp_path):
    df = pd.DataFrame({"a": ["x", "x", "y"]})
    kw = {"model": "gpt-4o-mini", "cache": str(tmp_path / "c.sqlite"), **opts}
    df.llm.map("{a}", **kw)
    first = pandas_llm.last_run()
    paid = first.stats.cost
    more = pd.DataFrame({"a": ["x", "y", "x", "z", "z"]})  # 3 rows from the cache, one new request
    more.llm.map("{a}", **kw)
    report = pandas_llm.last_run()
    d = check_sums(report)
    assert d["from_cache"].tolist() == [True, True, True, False, False]
    cached = d[d["from_cache"]]
    assert (cached[TOKENS + ["cost"]] == 0).all().all()
    assert float(cached["saved_cost"].sum()) == pytest.approx(paid, rel=1e-12)
    assert report.stats.cost > 0 and (d.loc[3:, "saved_cost"] == 0).all()
    df.llm.map("{a}", **kw)  # all from the cache: nothing spent
    d = check_sums(pandas_llm.last_run())
    assert (d[TOKENS + ["cost"]] == 0).all().all() and float(d["saved_cost"].sum()) == pytest.approx(paid)


def test_packed_rows_with_duplicates(server, opts):
    texts = [f"ticket {i % 7}" for i in range(23)]
    df = pd.DataFrame({"text": texts})
    df.llm.extract("{text}", schema=Answer, rows_per_request=4, model="gpt-4o-mini", cache=False, **opts)
    report = pandas_llm.last_run()
    d = check_sums(report)
    assert report.stats.unique == 7 and report.stats.cost > 0
    assert int(d["prompt_tokens"].sum()) == server.prompt_tokens


def test_batch_mode_follows_the_same_rule(server, batch_opts):
    df = pd.DataFrame({"text": [f"t{i % 3}" for i in range(8)]})
    df.llm.map("Say: {text}", mode="batch", model="gpt-4o-mini", **batch_opts)
    report = pandas_llm.last_run()
    d = check_sums(report)
    assert report.stats.cost > 0 and not d["from_cache"].any()
    df.llm.map("Say: {text}", mode="batch", model="gpt-4o-mini", **batch_opts)
    d = check_sums(pandas_llm.last_run())
    assert d["from_cache"].all() and (d["cost"] == 0).all()
    assert float(d["saved_cost"].sum()) == pytest.approx(report.stats.cost, rel=1e-12)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_dask_details_add_up_to_the_computes_figures(server, batch_opts, mode):
    dd = pytest.importorskip("dask.dataframe")
    df = pd.DataFrame({"text": [f"t{i % 5}" for i in range(20)]})  # duplicates within and across partitions
    lazy = dd.from_pandas(df, npartitions=4).llm.map("Say: {text}", details=True, mode=mode, **batch_opts)
    d = lazy.compute(scheduler="threads")
    s = pandas_llm.last_run().stats
    for col in TOKENS:
        assert int(d[col].sum()) == getattr(s, col), col
    assert float(d["cost"].sum()) == pytest.approx(s.cost, rel=1e-12) and s.cost > 0
    assert float(d["saved_cost"].sum()) == pytest.approx(s.saved_cost, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("cache", [False, "a file each"])
def test_rows_another_run_of_this_process_answered_show_zero(tmp_path, cache):
    # two overlapping runs send each distinct request once (inflight.py): only the payer shows it
    from pandas_llm.testing import LLMServer

    df = pd.DataFrame({"a": [f"row {i}" for i in range(6)]})
    out: dict[int, pd.DataFrame] = {}
    with LLMServer(latency=0.2) as srv:
        start = threading.Barrier(2)

        def work(k: int) -> None:
            start.wait()
            out[k] = df.llm.map("{a}", base_url=srv.base_url, api_key="x", progress=False, model="gpt-4o-mini",
                                cache=cache and str(tmp_path / f"c{k}.sqlite"), details=True)  # fmt: skip

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert srv.requests == 6 and len(out) == 2
    both = pd.concat(out.values())
    assert int(both["prompt_tokens"].sum()) == srv.prompt_tokens
    assert int(both["completion_tokens"].sum()) == srv.completion_tokens
    assert (both["cost"] > 0).sum() == 6 and not both["from_cache"].any()


def test_rows_that_fall_back_from_a_pack_carry_their_share_of_it(server, opts):
    # a dropped item and a pack whose answer stays invalid: the run paid those packs, and the
    # rows sent alone afterwards show their share on top of their own request's
    server.structured.inject("drop", match="ticket 3")
    server.structured.inject("invalid_json", match="ticket 9", times=3)
    df = pd.DataFrame({"text": [f"ticket {i}" for i in range(12)]})
    df.llm.extract("{text}", schema=Answer, rows_per_request=4, model="gpt-4o-mini", cache=False, **opts)
    report = pandas_llm.last_run()
    assert report.packing.fallback_rows == 8  # the dropped item's whole pack, and the invalid one
    d = check_sums(report)
    assert int(d["prompt_tokens"].sum()) == server.prompt_tokens
    assert int(d["completion_tokens"].sum()) == server.completion_tokens


def test_a_packed_batch_job_with_duplicates_and_a_row_that_falls_back(server, batch_opts):
    server.structured.inject("drop", match="ticket 3")
    df = pd.DataFrame({"text": [f"ticket {i % 7}" for i in range(12)]})
    kw = {"schema": Answer, "rows_per_request": 4, "mode": "batch", "model": "gpt-4o-mini", **batch_opts}
    df.llm.extract("{text}", **kw)
    report = pandas_llm.last_run()
    assert report.packing.fallback_rows == 4  # the dropped item's whole pack
    d = check_sums(report)
    assert int(d["prompt_tokens"].sum()) == server.prompt_tokens and report.stats.cost > 0
    df.llm.extract("{text}", **kw)  # from the cache: nothing spent, what the first run paid for them saved
    d = check_sums(pandas_llm.last_run())
    assert d["from_cache"].all() and (d["cost"] == 0).all() and d["saved_cost"].sum() > 0
