"""df.llm.estimate: what map would send and cost, without calling the model (unless sample=k)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pandas_llm
from helpers import billed, varied
from pandas_llm._cost.tokens import count_message_tokens
from pandas_llm._pricing import price_for
from pandas_llm._verbs.estimate import DEFAULT_OUTPUT_TOKENS, Range
from pandas_llm.testing import LLMServer

pytestmark = pytest.mark.server(answer=varied)


@pytest.fixture
def frame():
    # 200 rows, 100 distinct prompts, 2 NA cells
    texts = [f"Tell me about item {i % 100}" for i in range(200)]
    texts[5] = texts[150] = None
    return pd.DataFrame({"t": texts})


def opts(server, tmp_path, **kw):
    return dict(base_url=server.base_url, api_key="x", cache=tmp_path / "c.sqlite", progress=False, **kw)


def test_counts_without_calling_the_model(server, frame, tmp_path):
    kw = opts(server, tmp_path)
    frame.iloc[:30].llm.map("{t}", **kw)  # 29 distinct prompts now cached (row 5 is NA)
    sent = server.requests
    est = frame.llm.estimate("{t}", **kw)
    assert server.requests == sent  # nothing sent
    assert (est.rows, est.skipped, est.unique, est.cached, est.to_send) == (200, 2, 100, 29, 71)
    todo = [f"Tell me about item {i}" for i in range(100) if not (i < 30 and i != 5)]
    exact = sum(count_message_tokens([{"role": "user", "content": t}], "gpt-4o-mini") for t in todo)
    assert est.input_tokens == exact and est.input_exact
    assert est.saved == pytest.approx(pandas_llm.last_run().stats.cost)


def test_output_bounded_by_max_tokens(server, frame, tmp_path):
    est = frame.llm.estimate("{t}", max_tokens=40, **opts(server, tmp_path))
    assert est.output_tokens == Range(0, None, 100 * 40)
    p = price_for("gpt-4o-mini")
    assert est.cost.expected is None
    assert est.cost.high == pytest.approx(est.input_tokens * p.input + 4000 * p.output)
    assert est.batch_cost.high == pytest.approx(est.cost.high / 2)
    assert "≤ 4,000" in repr(est) and "upper bound (max_tokens)" in repr(est)
    assert server.requests == 0


def test_output_from_a_stated_assumption(server, frame, tmp_path):
    est = frame.llm.estimate("{t}", **opts(server, tmp_path))
    assert est.output_tokens == Range(*(3 * [100 * DEFAULT_OUTPUT_TOKENS]))
    assert f"assumed {DEFAULT_OUTPUT_TOKENS} per answer" in est.output_basis
    est = frame.llm.estimate("{t}", output_tokens=7, max_tokens=5, **opts(server, tmp_path))
    assert est.output_tokens == Range(500, 500, 500)  # the assumption never exceeds max_tokens
    p = price_for("gpt-4o-mini")
    assert est.cost.expected == pytest.approx(est.input_tokens * p.input + 500 * p.output)


def test_sample_runs_k_prompts_for_real_and_extrapolates(server, frame, tmp_path):
    kw = opts(server, tmp_path)
    est = frame.llm.estimate("{t}", sample=20, seed=3, **kw)
    assert server.requests == 20 and len(server.prompt_counts) == 20  # 20 distinct prompts
    assert est.sampled == 20 and est.cached == 20 and est.to_send == 80
    assert est.sample_cost > 0
    lo, mid, hi = est.output_tokens
    assert lo <= mid <= hi and lo < hi
    # the truth: what the 80 remaining answers will really be
    sampled = {p for p in server.prompt_counts}
    truth = sum(
        server_tokens(f"Tell me about item {i}") for i in range(100) if f"Tell me about item {i}" not in sampled
    )
    assert lo * 0.5 <= truth <= hi * 1.5  # a rough range; exact coverage is statistical
    assert "from 20 sampled answers" in est.output_basis
    assert est.cost.low < est.cost.expected < est.cost.high

    again = frame.llm.estimate("{t}", sample=20, seed=3, **kw)  # the same sample: all cached
    assert server.requests == 20 and again.sample_cost == 0.0
    assert again.output_tokens.expected == pytest.approx(mid)


def server_tokens(prompt: str) -> int:
    from pandas_llm.testing.answers import estimate_tokens

    return estimate_tokens(varied([{"content": prompt}], "m"))


def test_price_unknown_and_explicit_prices(server, frame, tmp_path):
    est = frame.llm.estimate(
        "{t}", model="estimate-test-llama", **opts(server, tmp_path)
    )  # no warning: the table says it
    assert est.cost is None and est.batch_cost is None and not est.input_exact
    assert "price unknown" in repr(est) and "pass prices=" in repr(est)
    assert "tokenizer unknown, counted with o200k_base" in repr(est)
    price = pandas_llm.Price.per_million(input=1.0, output=2.0, batch_discount=0.0)
    est = frame.llm.estimate(
        "{t}", model="estimate-test-llama", prices=price, output_tokens=10, **opts(server, tmp_path)
    )
    assert est.cost.expected == pytest.approx(est.input_tokens * 1e-6 + 1000 * 2e-6)
    assert est.batch_cost == est.cost


def test_reprs(server, frame, tmp_path):
    est = frame.llm.estimate("{t}", max_tokens=40, max_cost=0.001, **opts(server, tmp_path))
    text = repr(est)
    assert text.splitlines()[0] == "pandas-llm estimate for gpt-4o-mini"
    for label in ("rows", "unique prompts", "cache hits", "to send", "input tokens", "output tokens",
                  "cost, realtime", "cost, Batch API", "max_cost"):  # fmt: skip
        assert f"  {label} " in text
    html = est._repr_html_()
    assert html.startswith("<table class='pandas-llm-estimate'>") and html.count("<tr>") == 9
    assert "<th style='text-align:left'>input tokens</th>" in html


def test_budget_note(server, frame, tmp_path):
    kw = opts(server, tmp_path, max_tokens=40)
    assert "enough for the whole run" in repr(frame.llm.estimate("{t}", max_cost=1.0, **kw))
    assert "stop early, after about" in repr(frame.llm.estimate("{t}", max_cost=1e-4, output_tokens=40, **kw))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sample_is_refused_before_anything(server, frame, tmp_path, bad):
    with pytest.raises(pandas_llm.ConfigError, match="sample must be a whole number"):
        frame.llm.estimate("{t}", sample=bad, **opts(server, tmp_path))
    assert server.requests == 0


def test_unknown_placeholder_is_refused(server, frame, tmp_path):
    with pytest.raises(pandas_llm.TemplateError):
        frame.llm.estimate("{nope}", **opts(server, tmp_path))


def test_series_and_empty_frame(server, tmp_path):
    s = pd.Series(["a", "b", "a"], name="x")
    est = s.llm.estimate("Say {}", **opts(server, tmp_path))
    assert (est.rows, est.unique, est.to_send) == (3, 2, 2)
    est = pd.DataFrame({"t": pd.Series([], dtype=object)}).llm.estimate("{t}", **opts(server, tmp_path))
    assert (est.rows, est.to_send, est.input_tokens) == (0, 0, 0)
    assert est.cost.expected == 0.0
    assert server.requests == 0


def test_sample_larger_than_the_frame(server, tmp_path):
    df = pd.DataFrame({"t": ["Tell me about item 1", "Tell me about item 2"]})
    est = df.llm.estimate("{t}", sample=50, **opts(server, tmp_path))
    assert est.sampled == 2 and est.to_send == 0 and server.requests == 2
    assert np.isclose(est.output_tokens.expected, 0)


LABELS = ["billing", "bug", "feature", "account", "other"]
FIXED = "Route each support ticket to its queue. Read it whole; decide by the main request. " * 12 + "\nTicket: "


def tickets(n=200):
    return pd.DataFrame({"t": [f"ticket {i % 140}: the app shows error {i % 140 * 7} when I save" for i in range(n)]})


def tiktoken_server(**kw):
    from pandas_llm._cost.tokens import encoding_for

    enc = encoding_for("gpt-4o-mini")
    return LLMServer(tokens=lambda text: len(enc.encode(text, disallowed_special=())), **kw)


@pytest.mark.parametrize(
    "kw", [{}, {"rows_per_request": 20}, {"mode": "batch"}, {"rows_per_request": 10, "system": "Be exact."}]
)
def test_classify_estimate_is_within_15_percent_of_the_bill(tmp_path, kw):
    df = tickets()
    with tiktoken_server() as srv:
        o = opts(srv, tmp_path, poll_interval=0.01, **kw)
        est = df.llm.estimate(FIXED + "{t}", labels=LABELS, **o)
        assert srv.requests == 0
        out = df.llm.classify(FIXED + "{t}", labels=LABELS, **o)
        batch = kw.get("mode") == "batch"
        assert out.notna().all() and est.mode == kw.get("mode", "realtime")
        assert est.expected_cost.expected == pytest.approx(billed(srv, batch), rel=0.15)
        assert est.input_tokens == pytest.approx(srv.prompt_tokens, rel=0.15)
        if "rows_per_request" in kw:
            assert est.requests == srv.structured.packed_requests
            assert "rows_per_request" in repr(est)


def test_estimate_counts_the_schema_and_refuses_what_the_verb_refuses(tmp_path):
    df = tickets(10)
    with LLMServer() as srv:
        plain = df.llm.estimate(FIXED + "{t}", **opts(srv, tmp_path))
        labelled = df.llm.estimate(FIXED + "{t}", labels=LABELS, **opts(srv, tmp_path))
        assert labelled.input_tokens > plain.input_tokens + 10 * 20  # instruction + schema on every request
        with pytest.raises(pandas_llm.ConfigError):
            df.llm.estimate("{t}", labels=[], **opts(srv, tmp_path))
        with pytest.raises(pandas_llm.ConfigError, match="json_object"):
            df.llm.estimate("{t}", schema="json_object", rows_per_request=2, **opts(srv, tmp_path))
        assert srv.requests == 0


def test_models_compares_the_same_job_side_by_side(tmp_path):
    df = tickets(50)
    with LLMServer() as srv:
        table = df.llm.estimate(FIXED + "{t}", labels=LABELS, models=["gpt-4o-mini", "gpt-4o", "no-such-model"],
                                **opts(srv, tmp_path))  # fmt: skip
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["gpt-4o-mini", "gpt-4o", "no-such-model"]
    assert table.loc["gpt-4o", "cost"] > 10 * table.loc["gpt-4o-mini", "cost"]
    assert table.loc["gpt-4o-mini", "batch_cost"] == pytest.approx(table.loc["gpt-4o-mini", "cost"] / 2)
    assert np.isnan(table.loc["no-such-model", "cost"])
    assert table.loc["gpt-4o-mini", "cost_per_1000_rows"] == pytest.approx(table.loc["gpt-4o-mini", "cost"] * 20)
    with pytest.raises(pandas_llm.ConfigError, match="models="):
        df.llm.estimate("{t}", models="gpt-4o", **opts(srv, tmp_path))


def test_the_estimate_shows_the_prompt_cache_saving_from_1024_fixed_tokens(tmp_path):
    df = tickets(30)
    with tiktoken_server(prompt_cache=True) as srv:
        short = df.llm.estimate(FIXED + "{t}", labels=LABELS, **opts(srv, tmp_path))
        assert short.cached_input_tokens == 0 and "prompt cache" not in repr(short)
        long = df.llm.estimate(FIXED * 6 + "{t}", labels=LABELS, **opts(srv, tmp_path, concurrency=1))
        assert long.cache_prefix_tokens >= 1024 and long.cached_input_tokens == long.cache_prefix_tokens * 29
        assert "prompt cache" in repr(long) and long.cache_saving > 0
        df.llm.classify(FIXED * 6 + "{t}", labels=LABELS, **opts(srv, tmp_path, concurrency=1))
    assert srv.cached_tokens == pytest.approx(long.cached_input_tokens, rel=0.15)
