"""``ddf.llm`` on Dask: meta without a request, lazy verbs run by worker processes, one cache.

One LocalCluster of 4 worker processes for the module (it costs seconds to start on 2 cores);
the loopback server runs in the test process and the workers reach it on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys

import dask.dataframe as dd
import pandas as pd
import pytest

import pandas_llm
from helpers import kill_a_worker_when, local_cluster
from pandas_llm.testing import LLMServer

REVIEW = {
    "type": "object",
    "required": ["sentiment", "stars"],
    "properties": {"sentiment": {"enum": ["positive", "negative"]}, "stars": {"type": "integer"}},
}


@pytest.fixture(scope="module")
def dask_client():
    with local_cluster(4) as c:  # the default client: ddf.llm finds it to share the account limit
        yield c


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review {i}" for i in range(n)], "other": range(n)}, index=range(1000, 1000 + n))


def test_accessor_registered_when_dask_dataframe_is_imported_after_pandas_llm():
    code = (
        "import sys, pandas_llm\n"
        "assert 'dask.dataframe' not in sys.modules, 'import pandas_llm imported dask'\n"
        "import dask.dataframe as dd, pandas as pd\n"
        "assert isinstance(dd.from_pandas(pd.DataFrame({'a': ['x']}), npartitions=1).llm,"
        " pandas_llm._dask.accessor.DaskLLMAccessor)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(pandas_llm.__file__))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_meta_of_each_verb_without_a_request(server, opts):
    df = frame(6)
    ddf = dd.from_pandas(df, npartitions=2)
    lazy = {
        "map": ddf.llm.map("Say: {text}", **opts),
        "details": ddf.llm.map("Say: {text}", details=True, **opts),
        "extract": ddf.llm.extract("Review: {text}", schema=REVIEW, **opts),
        "classify": ddf.llm.classify("{text}", labels=["billing", "bug"], **opts),
        "series": ddf["text"].llm.map("Say: {}", **opts),
    }
    assert server.requests == 0
    eager = {
        "map": df.llm.map("Say: {text}", **opts),
        "details": df.llm.map("Say: {text}", details=True, **opts),
        "extract": df.llm.extract("Review: {text}", schema=REVIEW, **opts),
        "classify": df.llm.classify("{text}", labels=["billing", "bug"], **opts),
        "series": df["text"].llm.map("Say: {}", **opts),
    }
    for name, out in lazy.items():
        meta, want = out._meta, eager[name]
        if isinstance(want, pd.DataFrame):
            assert list(meta.columns) == list(want.columns), name
            assert meta.dtypes.astype(str).tolist() == want.dtypes.astype(str).tolist(), name
        else:
            assert str(meta.dtype) == str(want.dtype), name
    assert list(lazy["classify"]._meta.cat.categories) == ["billing", "bug"]
    assert lazy["series"]._meta.name == "text"


def test_bad_template_fails_when_the_verb_is_called():
    ddf = dd.from_pandas(frame(4), npartitions=2)
    with pytest.raises(pandas_llm.TemplateError, match="nope"):
        ddf.llm.map("Say: {nope}", base_url="http://127.0.0.1:9/v1", api_key="x")


def test_estimate_is_the_pandas_estimate(server, opts):
    df = pd.concat([frame(6), frame(6)])  # duplicates across partitions: dedup is over the whole frame
    est = dd.from_pandas(df, npartitions=3).llm.estimate("Say: {text}", **opts)
    want = df.llm.estimate("Say: {text}", **opts)
    assert (est.rows, est.unique, est.to_send, est.input_tokens) == (
        want.rows,
        want.unique,
        want.to_send,
        want.input_tokens,
    )
    assert est.unique == 6 and server.requests == 0


def test_workers_answer_every_row_aligned_and_rerun_sends_nothing(dask_client, server, opts):
    df = frame(200)
    ddf = dd.from_pandas(df, npartitions=8)
    out = dask_client.compute(ddf.llm.map("Say: {text}", **opts)).result()
    assert out.index.equals(df.index)
    assert out.tolist() == [f"echo: Say: {t}" for t in df["text"]]
    assert server.requests == 200
    server.reset_counters()
    again = dask_client.compute(ddf.llm.map("Say: {text}", **opts)).result()
    assert again.equals(out)
    assert server.requests == 0
    # and the driver's own pandas run finds every answer in its sidecar
    assert df.llm.map("Say: {text}", **opts).equals(out) and server.requests == 0


def test_classify_and_extract_on_workers(dask_client, server, opts):
    df = frame(40)
    ddf = dd.from_pandas(df, npartitions=4)
    labels = dask_client.compute(ddf.llm.classify("{text}", labels=["billing", "bug"], **opts)).result()
    fields = dask_client.compute(ddf.llm.extract("Review: {text}", schema=REVIEW, **opts)).result()
    assert labels.equals(df.llm.classify("{text}", labels=["billing", "bug"], **opts))
    assert fields.equals(df.llm.extract("Review: {text}", schema=REVIEW, **opts))
    assert fields.index.equals(df.index)


def test_one_account_limit_for_four_worker_processes(dask_client):
    # 6,000 RPM in 1 s windows: each worker alone would learn the whole limit from the headers
    with LLMServer(rpm=6000, window=1.0, latency=0.02) as srv:
        opts = {"base_url": srv.base_url, "api_key": "x", "progress": False}
        df = frame(600)
        out = dask_client.compute(dd.from_pandas(df, npartitions=8).llm.map("Say: {text}", **opts)).result()
        assert out.tolist() == [f"echo: Say: {t}" for t in df["text"]]
        assert srv.completed == 600
        assert srv.rate_limited <= 0.01 * srv.requests, (srv.rate_limited, srv.requests)


def test_a_worker_killed_mid_compute_costs_at_most_its_requests_in_flight(dask_client, server, opts):
    server.latency = 0.05
    df = frame(400)
    lazy = dd.from_pandas(df, npartitions=8).llm.map("Say: {text}", concurrency=4, **opts)
    future = dask_client.compute(lazy)
    kill_a_worker_when(dask_client, future, lambda: server.requests)  # Dask reruns its tasks on another
    out = future.result(timeout=120)
    assert out.tolist() == [f"echo: Say: {t}" for t in df["text"]]
    paid_twice = sum(n - 1 for n in server.prompt_counts.values())
    assert paid_twice <= 4, paid_twice  # what the killed worker had in flight
    server.reset_counters()
    again = dask_client.compute(dd.from_pandas(df, npartitions=8).llm.map("Say: {text}", **opts)).result()
    assert again.equals(out) and server.requests == 0


def test_the_table_price_is_looked_up_once_on_the_driver_not_on_every_worker():
    from pandas_llm import Price
    from pandas_llm._dask.accessor import _driver_settings
    from pandas_llm._pricing import price_for

    assert _driver_settings({"model": "gpt-4o-mini"}).prices == {"gpt-4o-mini": price_for("gpt-4o-mini")}
    mine = Price.per_million(input=1.0, output=2.0)
    assert _driver_settings({"model": "gpt-4o-mini", "prices": mine}).prices is mine  # the user's, as given
    theirs = {"gpt-4o-mini": mine}
    assert _driver_settings({"model": "gpt-4o-mini", "prices": theirs}).prices == theirs
    assert _driver_settings({"model": "my-local-model"}).prices is None  # unknown: price unknown, as on pandas
    both = _driver_settings({"model": "gpt-4o-mini", "prices": {"other": mine}}).prices
    assert both == {"other": mine, "gpt-4o-mini": price_for("gpt-4o-mini")}
