"""The library against a real OpenAI-compatible server: llama.cpp with SmolLM2-135M on the CPU.

What a real server does that our loopback server only imitates: real token counts, a
real 400 for a prompt over the context window, one request at a time under load.
"""

from __future__ import annotations

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import RunWarning

pytestmark = pytest.mark.integration

TRANSLATE = "Translate the user's text into French. Reply with the French translation only."
WORDS = ["cat", "dog", "house", "water", "bread", "good morning", "cat"]  # "cat" twice: one request


def test_translation_map_answers_every_row(options, served):
    df = pd.DataFrame({"word": WORDS}, index=[10, 11, 12, 13, 14, 15, 16])
    before = served()
    out = df.llm.map("{word}", system=TRANSLATE, **options)
    assert served() - before == 6  # distinct prompts only
    assert list(out.index) == list(df.index) and out.dtype == "string"
    assert out.notna().all() and (out.str.strip().str.len() > 0).all(), out.tolist()
    assert out[10] == out[16]  # the duplicate row got the same answer
    details = pandas_llm.last_run().details
    assert (details["status"] == "ok").all()
    assert (details["finish_reason"] == "stop").all()


def test_usage_is_recorded(options):
    df = pd.DataFrame({"word": ["bread", "good night", "the red car"]})
    df.llm.map("{word}", system=TRANSLATE, **options)
    report = pandas_llm.last_run()
    details = report.details
    # Real token counts from the server's own tokenizer: the fixed system prompt alone is ~20.
    assert (details["prompt_tokens"] > 20).all() and (details["completion_tokens"] > 0).all()
    assert report.stats.prompt_tokens == details["prompt_tokens"].sum()
    assert report.stats.completion_tokens == details["completion_tokens"].sum()
    # The cache keeps them: a rerun spends nothing, and shows what each row cost when paid as saved.
    again = df.llm.map("{word}", system=TRANSLATE, details=True, **options)
    assert again["from_cache"].all()
    assert (again["prompt_tokens"] == 0).all() and (again["cost"] == 0).all()
    pd.testing.assert_series_equal(again["saved_cost"], details["cost"], check_names=False)


def test_rerun_is_served_from_the_cache_with_zero_requests(options, served):
    df = pd.DataFrame({"word": ["sun", "moon", "star", "sky"]})
    first = df.llm.map("{word}", system=TRANSLATE, **options)
    before = served()
    second = df.llm.map("{word}", system=TRANSLATE, **options)
    assert served() == before  # the server saw nothing
    pd.testing.assert_series_equal(first, second)
    stats = pandas_llm.last_run().stats
    assert stats.cached == 4 and stats.sent_done == 0


def test_a_prompt_over_the_context_window_is_that_rows_error(options, local_server, served):
    too_long = "word " * (local_server.n_ctx + 500)
    df = pd.DataFrame({"word": ["tree", too_long, "river", "flower"]})
    before = served()
    with pytest.warns(RunWarning, match="1 of 4 rows have no answer: 1 error"):
        d = df.llm.map("{word}", system=TRANSLATE, details=True, **options)
    assert served() - before == 4  # one try for the 400 (never retried), one per other row
    assert d["status"].tolist() == ["ok", "error", "ok", "ok"]
    assert d["output"].isna().tolist() == [False, True, False, False]
    assert "HTTP 400" in d.loc[1, "error"] and "context" in d.loc[1, "error"]
    assert d.loc[1, "attempts"] == 1


def test_concurrency_above_the_servers_capacity_completes(options, served):
    # llama.cpp's server runs one request at a time; 8 concurrent ones queue there.
    df = pd.DataFrame({"word": [f"number {i}" for i in range(16)]})
    before = served()
    d = df.llm.map("{word}", system=TRANSLATE, concurrency=8, details=True, **options)
    assert served() - before == 16
    assert (d["status"] == "ok").all() and (d["attempts"] == 1).all()
    assert d["output"].str.len().gt(0).all()


def test_same_answers_through_the_openai_client(options, local_server):
    # The user's own (sync) openai client as the backend: same server, same answers.
    import openai

    df = pd.DataFrame({"word": ["apple", "pear"]})
    plain = df.llm.map("{word}", system=TRANSLATE, **options)
    options.update(base_url=None, cache=False)
    with openai.OpenAI(base_url=local_server.base_url, api_key="unused", max_retries=0) as client:
        via_client = df.llm.map("{word}", system=TRANSLATE, client=client, **options)
    pd.testing.assert_series_equal(plain, via_client)


def test_the_demo_uses_the_real_model(needs_local):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "pandas_llm", "demo", "--rows", "4", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Endpoint: a real LLM, SmolLM2-135M-Instruct on llama.cpp's server" in res.stdout
    assert "First run : 4 rows, 4 distinct prompts, 0 rows from cache, 4 requests sent" in res.stdout
    assert "Second run: 4 rows, 4 distinct prompts, 4 rows from cache, 0 requests sent" in res.stdout


def test_the_readme_local_model_example_runs(needs_local, tmp_path, monkeypatch):
    from helpers import readme_blocks, run_block

    (block,) = [b for b in readme_blocks() if "LocalServer()" in b.code]  # tests/test_docs.py runs the others
    df = pd.DataFrame({"review": ["Arrived late, works fine.", "Great value, a gift for my dad."]})
    monkeypatch.chdir(tmp_path)  # the default cache file goes here
    namespace = {"df": df}
    with pandas_llm.settings(progress=False):
        run_block(block, namespace)
    assert df["short"].notna().all() and (df["short"].str.len() > 0).all()


def test_costs_are_computed_at_the_alias_table_price(options):
    # The server answers as "gpt-4o-mini": costs are what the run would cost there.
    from pandas_llm._pricing import cost, price_for

    df = pd.DataFrame({"word": ["bread", "good night", "the red car"]})
    d = df.llm.map("{word}", system=TRANSLATE, details=True, **options)
    price = price_for(options["model"])
    expected = [
        cost(price, prompt_tokens=p, completion_tokens=c) for p, c in zip(d["prompt_tokens"], d["completion_tokens"])
    ]
    assert min(expected) > 0 and d["cost"].tolist() == pytest.approx(expected)
    stats = pandas_llm.last_run().stats
    assert stats.cost_known and stats.cost == pytest.approx(sum(expected))
