"""df.llm.map / s.llm.map against the loopback server: answers, alignment, dedup, edge cases."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

import pandas_llm
from pandas_llm.testing import answer_for


def expected(prompt: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return answer_for(messages, "gpt-4o-mini")


def test_each_row_gets_its_own_answer(server, opts):
    df = pd.DataFrame({"text": [f"sentence {i}" for i in range(200)]})
    out = df.llm.map("Translate to French: {text}", **opts)
    assert out.dtype == "string"
    assert out.tolist() == [expected(f"Translate to French: sentence {i}") for i in range(200)]
    assert server.requests == 200


def test_input_is_not_mutated(opts):
    df = pd.DataFrame({"text": ["a", "b"]})
    before = df.copy()
    df.llm.map("{text}", **opts)
    pd.testing.assert_frame_equal(df, before)
    assert df.attrs == {}


@pytest.mark.parametrize(
    "index",
    [
        pd.Index([5, 3, 9, 1]),  # shuffled
        pd.Index(["x", "x", "y", "x"]),  # duplicates
        pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1), ("b", 2)]),
    ],
)
def test_result_aligns_to_any_index(opts, index):
    df = pd.DataFrame({"text": ["w", "x", "y", "z"]}, index=index)
    out = df.llm.map("Say {text}", **opts)
    assert out.index.equals(df.index)
    assert out.tolist() == [expected(f"Say {t}") for t in "wxyz"]
    df["out"] = out  # assignment aligns even with duplicate labels
    assert df["out"].tolist() == out.tolist()


def test_dedup_sends_each_distinct_prompt_once(server, opts):
    df = pd.DataFrame({"text": [f"p{i % 10}" for i in range(1000)]})
    out = df.llm.map("{text}", **opts)
    assert server.requests == 10
    assert set(server.prompt_counts.values()) == {1}
    assert out.tolist() == [expected(f"p{i % 10}") for i in range(1000)]


def test_series_accessor_and_name(server, opts):
    s = pd.Series(["one", "two", "one"], name="review", index=[10, 20, 30])
    out = s.llm.map("Summarise in 5 words: {}", **opts)
    assert out.name == "review"
    assert out.index.tolist() == [10, 20, 30]
    assert out.tolist() == [expected(f"Summarise in 5 words: {v}") for v in ["one", "two", "one"]]
    assert server.requests == 2
    assert s.llm.map("Again: {review}", **opts).iloc[0] == expected("Again: one")


def test_several_columns_and_system_message(opts):
    df = pd.DataFrame({"a": ["x", "y"], "b": [1, 2]})
    out = df.llm.map("{a} has {b} and {a}", system="Be brief.", **opts)
    assert out.tolist() == [expected("x has 1 and x", "Be brief."), expected("y has 2 and y", "Be brief.")]


def test_braces_in_values_are_literal(opts):
    df = pd.DataFrame({"text": ["{text}", "a {0} b", "}{", "{a.__class__}"]})
    out = df.llm.map("Echo {text}", **opts)
    assert out.tolist() == [expected(f"Echo {v}") for v in df["text"]]


def test_na_cells_skip_the_row_without_a_call(server, opts):
    df = pd.DataFrame({"text": ["a", None, np.nan, "b", pd.NA]}, dtype=object)
    out = df.llm.map("{text}", **opts)
    assert server.requests == 2
    assert out.isna().tolist() == [False, True, True, False, True]
    details = df.llm.map("{text}", details=True, **opts)
    assert details["status"].tolist() == ["ok", "skipped", "skipped", "ok", "skipped"]
    assert details["from_cache"].tolist() == [True, False, False, True, False]
    summary = pandas_llm.last_run().summary()
    assert summary.startswith("5 rows, 3 skipped (NA), 2 distinct requests: "), summary
    df.dropna().llm.map("{text}", **opts)
    assert "skipped" not in pandas_llm.last_run().summary()


def test_na_cells_can_render_empty(server, opts):
    df = pd.DataFrame({"text": ["a", None]})
    out = df.llm.map("[{text}]", na="empty", **opts)
    assert out.tolist() == [expected("[a]"), expected("[]")]


def test_empty_frame(server, opts):
    df = pd.DataFrame({"text": pd.Series([], dtype="string")})
    out = df.llm.map("{text}", **opts)
    assert len(out) == 0 and out.dtype == "string"
    assert server.requests == 0


def test_callable_template(opts):
    df = pd.DataFrame({"text": ["a", "b"], "n": [1, 2]})
    out = df.llm.map(lambda row: f"{row.text}-{row['n']}", **opts)
    assert out.tolist() == [expected("a-1"), expected("b-2")]
    msgs = df.llm.map(lambda row: [{"role": "user", "content": row.text}], **opts)
    assert msgs.tolist() == [expected("a"), expected("b")]


def test_concurrency_one_runs_in_row_order(server, opts):
    seen = []

    def fn(messages, **params):
        seen.append(messages[-1]["content"])
        return "ok " + messages[-1]["content"]

    df = pd.DataFrame({"text": [f"r{i}" for i in range(30)]})
    out = df.llm.map("{text}", client=fn, concurrency=1, progress=False)
    assert seen == [f"r{i}" for i in range(30)]
    assert out.tolist() == [f"ok r{i}" for i in range(30)]


def test_async_function_client(opts):
    async def fn(messages, **params):
        await asyncio.sleep(0)
        return f"{params['model']}|{params.get('temperature')}|{messages[-1]['content']}"

    df = pd.DataFrame({"text": ["a", "b"]})
    out = df.llm.map("{text}", client=fn, temperature=0.2, progress=False)
    assert out.tolist() == ["gpt-4o-mini|0.2|a", "gpt-4o-mini|0.2|b"]


def test_openai_client_backend(server):
    import openai

    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
    df = pd.DataFrame({"text": ["a", "b", "a"]})
    out = df.llm.map("{text}", client=client, progress=False)
    assert out.tolist() == [expected("a"), expected("b"), expected("a")]
    assert server.requests == 2
    sync_client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    out2 = df.llm.map("Q {text}", client=sync_client, progress=False)
    assert out2.tolist() == [expected("Q a"), expected("Q b"), expected("Q a")]
    asyncio.run(client.close())
    sync_client.close()


def test_amap_equals_map(server, opts):
    df = pd.DataFrame({"text": [f"t{i % 7}" for i in range(50)]}, index=range(100, 150))

    async def go():
        return await df.llm.amap("A {text}", cache=False, **opts)

    a = asyncio.run(go())
    m = df.llm.map("A {text}", cache=False, **opts)
    pd.testing.assert_series_equal(a, m)


def test_sync_map_inside_a_running_loop(opts):
    df = pd.DataFrame({"text": ["x", "y"]})

    async def inside():
        # what a Jupyter cell does: a sync call while the kernel's loop is running
        return df.llm.map("{text}", **opts)

    assert asyncio.run(inside()).tolist() == [expected("x"), expected("y")]


def test_settings_defaults_and_scoping(server, opts):
    df = pd.DataFrame({"text": ["a"]})
    with pandas_llm.settings(base_url=server.base_url, api_key="k", progress=False, model="other-model"):
        out = df.llm.map("{text}")
    assert out.iloc[0] == answer_for([{"role": "user", "content": "a"}], "other-model")
    assert pandas_llm.current_settings().model == "gpt-4o-mini"


def test_details_and_last_run(server, opts):
    df = pd.DataFrame({"text": ["a", "b", "a"]})
    d = df.llm.map("{text}", details=True, **opts)
    assert list(d.columns) == [
        "output",
        "status",
        "error",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost",
        "saved_cost",
        "attempts",
        "from_cache",
    ]
    assert d["status"].tolist() == ["ok"] * 3
    report = pandas_llm.last_run()
    assert int(d["prompt_tokens"].sum()) == report.stats.prompt_tokens > 0  # rows 0 and 2 share a request
    assert report.stats.total == 3 and report.stats.unique == 2
    assert report.details["output"].tolist() == d["output"].tolist()


# -- a run that fails with an error that is not the API's -----------------------------------
def _failing_store(monkeypatch):
    """Writing answers to the sidecar raises an error that is neither the API's nor a StoreError
    (a bug): the run must stop, end "failed" and say so."""
    from pandas_llm._store.store import Store

    def write(self, records):
        raise ZeroDivisionError("a bug in the store")

    monkeypatch.setattr(Store, "write", write)


def test_a_non_api_error_ends_the_run_failed_and_the_bar_says_so(opts, monkeypatch):
    import io

    from pandas_llm._display.progress import TqdmObserver

    _failing_store(monkeypatch)
    out = io.StringIO()
    df = pd.DataFrame({"text": [f"row {i}" for i in range(20)]})
    with pytest.raises(ZeroDivisionError):
        df.llm.map("{text}", **{**opts, "progress": TqdmObserver(file=out)})
    assert pandas_llm.last_run().stats.outcome == "failed"
    assert "pandas-llm (failed)" in out.getvalue() and "(running)" not in out.getvalue()


def test_a_non_api_error_ends_the_widget_failed(opts, monkeypatch):
    from pandas_llm._display.notebook import WidgetObserver

    _failing_store(monkeypatch)
    widget = WidgetObserver(display=lambda obj: None)
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    with pytest.raises(ZeroDivisionError):
        df.llm.map("{text}", **{**opts, "progress": widget})
    assert pandas_llm.last_run().stats.outcome == "failed"
    assert "stopped after" in widget.text and "done in" not in widget.text
    assert "the run stopped on an error" in widget.text
    assert widget.bar.bar_style == "danger"


def test_a_non_api_error_ends_a_batch_job_failed(opts, monkeypatch):
    import io

    from pandas_llm._batch.status import BatchProgress

    _failing_store(monkeypatch)
    out = io.StringIO()
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    with pytest.raises(ZeroDivisionError):
        df.llm.map("{text}", mode="batch", poll_interval=0.005, **{**opts, "progress": BatchProgress(file=out)})
    assert pandas_llm.last_run().stats.outcome == "failed"
    assert "pandas-llm batch (failed)" in out.getvalue()


@pytest.mark.parametrize("verb", ["map", "map_batch", "amap", "extract", "embed"])
def test_failure_warnings_point_at_the_callers_line(opts, verb):
    """Every verb warns about its failed rows at the user's line, whatever its path inside."""
    import warnings

    long = "word " * 140_000  # over gpt-4o-mini's window (and embeddings' 8,191 tokens): too_long
    s = pd.Series(["short", long])
    kw = {**opts, "cache": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if verb == "map":
            s.llm.map("{}", **kw)
        elif verb == "map_batch":
            s.llm.map("{}", mode="batch", poll_interval=0.005, **kw)
        elif verb == "amap":
            asyncio.run(s.llm.amap("{}", **kw))
        elif verb == "extract":
            s.llm.extract("{}", schema={"type": "object", "properties": {"a": {"type": "string"}}}, **kw)
        else:
            s.llm.embed(**kw)
    assert [w.category for w in caught] == [pandas_llm.RunWarning], [str(w.message) for w in caught]
    assert caught[0].filename == __file__ and "too_long" in str(caught[0].message)


@pytest.mark.parametrize("template", ["", "  \n", "{text}", " {text} ", lambda row: " ", "{blank}{text}"])
def test_a_template_that_asks_nothing_is_refused_before_anything_is_sent(server, opts, template):
    df = pd.DataFrame({"text": ["", "  ", "\t", None], "blank": ["", "", " ", ""]})
    with pytest.raises(pandas_llm.TemplateError, match="empty"):
        df.llm.map(template, system="Be brief.", **opts)
    assert server.requests == 0
    with pytest.raises(pandas_llm.TemplateError, match="empty"):
        df["text"].llm.map("", **opts)
    assert server.requests == 0


def test_blank_rows_among_others_are_sent(server, opts):
    out = pd.DataFrame({"text": ["", "a"]}).llm.map("{text}", **opts)
    assert out.tolist() == [expected(""), expected("a")] and server.requests == 2
