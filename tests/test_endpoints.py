"""moderate and embed: alignment, dedup, cache, failures inside a multi-input request, limits."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

import pandas_llm
from pandas_llm._errors import ConfigError
from pandas_llm.testing import LLMServer
from pandas_llm.testing.endpoints import embedding_for, moderation_for

DIMS = 16


def expected(texts, dims=DIMS):
    return np.stack([embedding_for(t, dims) for t in texts])


# -- embed ---------------------------------------------------------------------------------
def test_embed_aligns_to_a_shuffled_duplicate_index_and_sends_each_text_once(server, opts):
    texts = ["cat", "dog", "cat", "bird", "dog", "cat"]
    s = pd.Series(texts, index=[5, 3, 3, 9, 0, 1])
    v = s.llm.embed(dimensions=DIMS, **opts)
    assert v.dtype == np.float32 and v.shape == (6, DIMS)
    np.testing.assert_array_equal(v, expected(texts))
    assert server.count("cat") == 1 and server.count("dog") == 1 and server.count("bird") == 1
    assert server.completed == 1  # one request for the three distinct texts
    report = pandas_llm.last_run()
    assert report.stats.unique == 3 and report.stats.ok == 3
    assert int(report.details["prompt_tokens"].sum()) == report.stats.prompt_tokens > 0  # duplicates share


def test_embed_frame_template_as_series_and_na_rows(server, opts):
    df = pd.DataFrame({"title": ["a", None, "c"], "body": ["x", "y", "z"]}, index=list("pqr"))
    s = df.llm.embed("{title}: {body}", dimensions=DIMS, as_series=True, **opts)
    assert list(s.index) == list("pqr")
    np.testing.assert_array_equal(s["p"], embedding_for("a: x", DIMS))
    assert s["q"] is None
    v = df.llm.embed("{title}: {body}", dimensions=DIMS, **opts)
    assert np.isnan(v[1]).all() and not np.isnan(v[[0, 2]]).any()
    by_column = df.llm.embed("body", dimensions=DIMS, **opts)  # a column name
    np.testing.assert_array_equal(by_column, expected(["x", "y", "z"]))


def test_embed_rerun_comes_from_the_cache_and_sends_nothing(server, opts, tmp_path):
    s = pd.Series([f"text {i}" for i in range(300)])
    first = s.llm.embed(dimensions=DIMS, cache=tmp_path / "c.sqlite", inputs_per_request=64, **opts)
    assert server.completed == 5
    server.reset_counters()
    again = s.llm.embed(dimensions=DIMS, cache=tmp_path / "c.sqlite", inputs_per_request=100, **opts)
    assert server.requests == 0
    np.testing.assert_array_equal(first, again)
    assert pandas_llm.last_run().stats.cached == 300
    # other dimensions are other requests
    s.llm.embed(dimensions=8, cache=tmp_path / "c.sqlite", **opts)
    assert server.completed == 1


def test_cache_stores_vectors_as_float32_bytes(server, opts, tmp_path):
    import sqlite3

    pd.Series(["cat"]).llm.embed(dimensions=DIMS, cache=tmp_path / "c.sqlite", **opts)
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        (out,) = conn.execute("SELECT output FROM results").fetchone()
    assert isinstance(out, bytes) and len(out) == 4 * DIMS
    np.testing.assert_array_equal(np.frombuffer(out, dtype="<f4"), embedding_for("cat", DIMS))


def test_one_refused_input_fails_only_its_row(server, opts):
    texts = [f"t{i}" for i in range(40)]
    texts[13] = "poison"
    server.endpoints.refuse_input("poison")
    with pytest.warns(pandas_llm.RunWarning, match="1 of 40 rows"):
        v = pd.Series(texts).llm.embed(dimensions=DIMS, **opts)
    assert np.isnan(v[13]).all()
    good = [i for i in range(40) if i != 13]
    np.testing.assert_array_equal(v[good], expected([texts[i] for i in good]))
    failures = pandas_llm.last_run().failures
    assert list(failures.index) == [13] and failures["status"].tolist() == ["error"]
    assert "input[" in failures["error"].iloc[0]
    # named index: the bad text alone, the rest together; each other row answered once
    assert all(server.prompt_counts[t] == 1 for t in texts if t != "poison")
    assert "split" in str(pandas_llm.last_run().packing)


def test_a_refusal_naming_no_input_is_bisected(server, opts):
    texts = [f"t{i}" for i in range(16)]
    texts[5] = "poison"
    body = {
        "error": {"message": "'$.input' is invalid. Please check the API reference.", "type": "invalid_request_error"}
    }
    server.inject(400, match="poison", times=100, body=body)  # OpenAI's words: no index named
    with pytest.warns(pandas_llm.RunWarning):
        v = pd.Series(texts).llm.embed(dimensions=DIMS, **opts)
    assert np.isnan(v[5]).all() and not np.isnan(np.delete(v, 5, axis=0)).any()
    assert all(server.prompt_counts[t] == 1 for t in texts if t != "poison")


def test_a_parameter_every_request_refuses_stops_the_run_early(server, opts):
    from pandas_llm._errors import RequestShapeError

    with pytest.raises(RequestShapeError, match="dimensions"):
        pd.Series([f"t{i}" for i in range(64)]).llm.embed(dimensions=5000, inputs_per_request=8, **opts)
    assert server.requests <= 8  # not split down to every single text


def test_a_text_over_the_token_limit_is_its_rows_error_before_sending(server, opts):
    long = "word " * 9000  # ~9,000 tokens with cl100k_base
    with pytest.warns(pandas_llm.RunWarning, match="too_long"):
        v = pd.Series(["short", long]).llm.embed(dimensions=DIMS, **opts)
    assert not np.isnan(v[0]).any() and np.isnan(v[1]).all()
    d = pandas_llm.last_run().details
    assert d["status"].tolist() == ["ok", "too_long"]
    assert "8191" in d["error"].iloc[1]
    assert server.count("word") == 0 and server.completed == 1


def test_transient_failures_are_retried_and_rate_limits_learned(opts):
    with LLMServer() as srv:
        srv.inject(503, times=2)
        v = pd.Series(["a", "b"]).llm.embed(dimensions=DIMS, **{**opts, "base_url": srv.base_url})
        assert not np.isnan(v).any()
        assert pandas_llm.last_run().stats.retries == 2


def test_embed_prices_from_the_table(server, opts):
    pd.Series(["hello world"] * 3 + ["bye"]).llm.embed(**opts)
    stats = pandas_llm.last_run().stats
    assert stats.cost_known and stats.cost == pytest.approx(stats.prompt_tokens * 0.02 / 1e6)
    details = pandas_llm.last_run().details
    # one request's cost shared by its two distinct texts by size; duplicates split their text's
    assert details["cost"].iloc[0] == details["cost"].iloc[2]
    assert 3 * details["cost"].iloc[0] + details["cost"].iloc[3] == pytest.approx(stats.cost)
    assert details["cost"].sum() == pytest.approx(stats.cost)


def test_embed_refuses_bad_arguments_before_sending(server, opts):
    s = pd.Series(["a"])
    with pytest.raises(ConfigError, match="dimensions"):
        s.llm.embed(dimensions=0, **opts)
    with pytest.raises(ConfigError, match="generation parameters"):
        s.llm.embed(temperature=0, **opts)
    with pytest.raises(ConfigError, match="system"):
        s.llm.embed(system="x", **opts)
    with pytest.raises(ConfigError, match="inputs_per_request"):
        s.llm.embed(inputs_per_request=0, **opts)
    with pytest.raises(ConfigError, match="column"):
        pd.DataFrame({"a": [1]}).llm.embed(**opts)
    assert server.requests == 0


async def test_aembed_and_amoderate(server, opts):
    v = await pd.Series(["a", "b"]).llm.aembed(dimensions=DIMS, **opts)
    np.testing.assert_array_equal(v, expected(["a", "b"]))
    m = await pd.Series(["I will kill you"]).llm.amoderate(**opts)
    assert m["flagged"].tolist() == [True]


# -- moderate ------------------------------------------------------------------------------
def test_moderate_columns_dtypes_and_alignment(server, opts):
    texts = ["have a nice day", "I will kill you", "how to build a bomb", "have a nice day"]
    df = pd.DataFrame({"text": texts}, index=[10, 2, 7, 2])
    out = df.llm.moderate("text", **opts)
    assert list(out.index) == [10, 2, 7, 2]
    assert out["flagged"].tolist() == [False, True, True, False]
    assert str(out["flagged"].dtype) == "boolean"
    for cat in ("harassment/threatening", "self-harm/intent", "illicit/violent"):
        assert str(out[cat].dtype) == "boolean"
        assert str(out[cat + "_score"].dtype) == "Float64"
    assert out.columns[0] == "flagged" and len(out.columns) == 1 + 2 * 13
    for i, text in enumerate(texts):
        want = moderation_for(text)
        assert out["violence"].iloc[i] == want["categories"]["violence"]
        assert out["violence_score"].iloc[i] == pytest.approx(want["category_scores"]["violence"])
    assert server.count("have a nice day") == 1 and server.completed == 1
    stats = pandas_llm.last_run().stats
    assert stats.cost == 0.0 and stats.cost_known


def test_moderate_failed_rows_are_na(server, opts):
    s = pd.Series(["fine", "poison", "also fine"])
    server.endpoints.refuse_input("poison")
    with pytest.warns(pandas_llm.RunWarning):
        out = s.llm.moderate(**opts)
    assert out["flagged"].isna().tolist() == [False, True, False]
    assert out.iloc[1].isna().all()
    assert str(out["hate_score"].dtype) == "Float64"


def test_moderate_groups_32_texts_per_request(server, opts):
    pd.Series([f"t{i}" for i in range(100)]).llm.moderate(**opts)
    assert server.completed == 4


def test_moderate_refuses_batch_mode(server, opts):
    with pytest.raises(ConfigError, match="realtime"):
        pd.Series(["a"]).llm.moderate(mode="batch", **opts)


def test_openai_client_backend(server):
    import openai

    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")
    v = pd.Series(["a", "b", "a"]).llm.embed(dimensions=DIMS, client=client, progress=False, cache=False)
    np.testing.assert_array_equal(v, expected(["a", "b", "a"]))
    sync_client = openai.OpenAI(base_url=server.base_url, api_key="x")
    m = pd.Series(["I will kill you"]).llm.moderate(client=sync_client, progress=False, cache=False)
    assert m["flagged"].tolist() == [True]
    sync_client.close()
    asyncio.run(client.close())


# -- resume ---------------------------------------------------------------------------------
RESUME_SCRIPT = """
import sys, pandas as pd, pandas_llm
s = pd.Series([f"row {i}" for i in range(int(sys.argv[3]))])
s.llm.embed(dimensions=8, inputs_per_request=10, base_url=sys.argv[1], api_key="k", cache=sys.argv[2],
            concurrency=4, progress=False)
"""


def test_embed_resumes_after_sigkill_without_paying_twice(tmp_path):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time
    from contextlib import closing

    n = 2000
    cache = str(tmp_path / "c.sqlite")

    def committed() -> int:
        try:
            with closing(sqlite3.connect(cache)) as conn:
                return conn.execute("SELECT count(*) FROM results WHERE status = 'ok'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    texts = [f"row {i}" for i in range(n)]
    with LLMServer(latency=0.01) as srv:
        proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, srv.base_url, cache, str(n)])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (os.path.exists(cache) and committed() >= n // 4):
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        done = committed()
        assert n // 4 <= done < n, "the kill should land mid-run"
        before = srv.prompt_counts
        srv.reset_counters()
        v = pd.Series(texts).llm.embed(dimensions=8, base_url=srv.base_url, api_key="k", cache=cache, progress=False)
        rerun = srv.prompt_counts
    assert sum(rerun.values()) == n - done  # only the rows not committed before the kill
    assert all(rerun[t] <= 1 for t in texts)
    assert sum(before.values()) - done <= 4 * 10 + 256  # in flight at the kill, or answered and not yet committed
    np.testing.assert_array_equal(v, expected(texts, 8))


# -- the Batch API --------------------------------------------------------------------------
def test_embed_through_the_batch_api_shares_the_cache_with_realtime(server, opts, tmp_path):
    cache = tmp_path / "c.sqlite"
    texts = ["cat", "dog", "cat", "poison"]
    server.batches.fail_lines("poison", status=400)
    with pytest.warns(pandas_llm.RunWarning, match="1 of 4 rows"):
        v = pd.Series(texts, index=[3, 1, 2, 0]).llm.embed(dimensions=DIMS, mode="batch", cache=cache,
                                                           poll_interval=0.01, **opts)  # fmt: skip
    np.testing.assert_array_equal(v[:3], expected(texts[:3]))
    assert np.isnan(v[3]).all()
    assert server.batches.batches_created == 1 and server.batches.lines_answered == 2
    stats = pandas_llm.last_run().stats
    assert stats.cost == pytest.approx(stats.prompt_tokens * 0.01 / 1e6)  # half the realtime price
    # realtime finds the batch's answers (same keys) and sends only the failed row
    server.reset_counters()
    server.batches.clear_faults()
    again = pd.Series(texts).llm.embed(dimensions=DIMS, cache=cache, **opts)
    assert server.completed == 1 and server.prompt_counts == {"poison": 1}
    np.testing.assert_array_equal(again, expected(texts))


def test_estimate_embed_and_moderate(server, opts, tmp_path):
    s = pd.Series(["hello world", "bye", "hello world", None])
    est = s.llm.estimate(verb="embed", cache=tmp_path / "c.sqlite")
    assert (est.rows, est.skipped, est.unique, est.to_send, est.input_tokens) == (4, 1, 2, 2, 3)
    assert est.cost.expected == pytest.approx(3 * 0.02 / 1e6) and est.batch_cost.expected == pytest.approx(
        1.5 * 0.02 / 1e6
    )
    s.llm.embed(cache=tmp_path / "c.sqlite", **opts)
    assert s.llm.estimate(verb="embed", cache=tmp_path / "c.sqlite", base_url=server.base_url).to_send == 0
    mod = s.llm.estimate(verb="moderate", cache=False)
    assert mod.cost.expected == 0 and mod.to_send == 2
    assert server.requests == 1  # estimates send nothing


def test_a_server_answering_lists_per_token_gets_one_text_per_request(server, opts):
    """llama-cpp-python's server: one vector per token, and texts of one list mixed together."""
    from pandas_llm.testing._http import Request, json_response

    seen = []

    def per_token(request: Request):
        texts = request.json()["input"]
        seen.append(len(texts))
        data = []
        for i, text in enumerate(texts):
            base = embedding_for(text, 4) + 10 * i  # the position in the list leaks into the vector
            data.append({"index": i, "object": "embedding", "embedding": [base.tolist(), (base + 2).tolist()]})
        return json_response(200, {"object": "list", "data": data, "usage": {"prompt_tokens": 2 * len(texts)}})

    server.routes[("POST", "/v1/embeddings")] = per_token
    v = pd.Series(["a", "b", "c", "a"]).llm.embed(model="local", **opts)
    np.testing.assert_allclose(v, expected(["a", "b", "c", "a"], 4) + 1, rtol=1e-6)  # the mean of the tokens
    assert seen == [3, 1, 1, 1]


def test_embed_max_cost_stops_before_going_over(server, opts):
    s = pd.Series([f"text number {i}" for i in range(100)])
    v = s.llm.embed(dimensions=DIMS, max_cost=1.0, **opts)
    assert not np.isnan(v).any()
    with pytest.warns(pandas_llm.RunWarning, match="budget"):
        v = pd.Series([f"other text {i}" for i in range(100)]).llm.embed(
            dimensions=DIMS, max_cost=5e-6, inputs_per_request=10, **opts
        )
    stats = pandas_llm.last_run().stats
    assert stats.cost <= 5e-6 and stats.budget_reached
    assert 0 < int((~np.isnan(v[:, 0])).sum()) < 100
