"""Prompts longer than the model's context window are that row's error, before sending."""

from __future__ import annotations

import warnings

import orjson
import pandas as pd
import pytest

import pandas_llm
from pandas_llm._cost.tokens import count_message_tokens
from pandas_llm._run import budget
from pandas_llm._run.budget import ContextCheck, context_window, max_output_tokens

HUGE = "word " * 250_000  # ~250,000 tokens: twice gpt-4o-mini's 128k window


def test_a_prompt_over_the_window_is_not_sent_and_says_why(server, opts):
    df = pd.DataFrame({"t": ["short", HUGE, "also short"]})
    server.inject(400, match="also")  # another row's own error: a rerun may fix that one
    with pytest.warns(pandas_llm.RunWarning, match="1 too_long") as caught:
        out = df.llm.map("{t}", model="gpt-4o-mini", **opts)
    assert out.isna().tolist() == [False, True, True]
    assert server.requests == 2 and server.count("word word") == 0  # never sent, never paid
    d = pandas_llm.last_run().details
    assert d["status"].tolist() == ["ok", "too_long", "error"]
    error = d["error"].iloc[1]
    assert "250,00" in error and "128,000-token context window of 'gpt-4o-mini'" in error
    message = str(caught[0].message)
    assert "larger context window" in message and "retries only the others" in message


def test_the_warning_never_promises_a_rerun_fixes_too_long_rows(server, opts):
    with pytest.warns(pandas_llm.RunWarning) as caught:
        pd.DataFrame({"t": [HUGE]}).llm.map("{t}", **opts)
    message = str(caught[0].message)
    assert "a rerun will not fix them" in message and "retries only these rows" not in message


def test_the_answer_reservation_counts_against_the_window(server, opts):
    text = "word " * 7_900  # ~7,900 tokens of gpt-4's 8,192
    df = pd.DataFrame({"t": [text]})
    with pytest.warns(pandas_llm.RunWarning, match="too_long"):
        df.llm.map("{t}", model="gpt-4", max_tokens=500, **opts)
    assert server.requests == 0
    assert "with 500 reserved for the answer" in pandas_llm.last_run().details["error"].iloc[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pandas_llm.RunWarning)  # the echo is cut at max_tokens
        df.llm.map("{t}", model="gpt-4", max_tokens=100, **opts)
    assert server.requests == 1 and pandas_llm.last_run().details["status"].iloc[0] == "length"


def test_models_with_an_unknown_window_are_sent_as_they_are(server, opts):
    out = pd.DataFrame({"t": [HUGE[:400_000]]}).llm.map("{t}", model="my-llama", **opts)
    assert out.notna().all() and server.requests == 1


def test_short_bodies_are_never_counted(monkeypatch):
    check = ContextCheck.for_model("gpt-4o-mini")

    def boom(*a, **k):
        raise AssertionError("counted")

    monkeypatch.setattr(budget, "count_message_tokens", boom)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 100_000}]})
    assert check.error(body) is None  # 100 kB < 128,000 - 16,384: fits whatever the tokens


def test_bytes_bound_the_tokens():
    # the fast path's premise: a request body holds no more tokens than bytes
    for content in ["a", "数据科学 " * 50, "\n\n\t" * 100, "🙂" * 40, "x y " * 300]:
        messages = [{"role": "user", "content": content}]
        body = orjson.dumps({"model": "gpt-4o-mini", "messages": messages})
        assert count_message_tokens(messages, "gpt-4o-mini") <= len(body)


def test_one_table_for_windows_and_output_limits():
    assert context_window("gpt-4o-mini") == 128_000 and max_output_tokens("gpt-4o-mini") == 16_384
    assert context_window("ft:gpt-4.1-mini:org::x") == 1_047_576
    assert context_window("gpt-4") == 8_192 and context_window("gpt-4-32k") == 32_768
    assert context_window("my-llama") is None and ContextCheck.for_model("my-llama") is None


def test_estimate_counts_and_flags_too_long_rows(server, opts):
    df = pd.DataFrame({"t": ["short", HUGE, "another"]})
    est = df.llm.estimate("{t}", model="gpt-4o-mini", cache=False)
    assert est.too_long == 1 and est.to_send == 2 and est.context_window == 128_000
    assert est.input_tokens < 100  # the row that will not be sent is not priced
    assert "too long" in repr(est) and "128,000-token context window" in repr(est)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert df.llm.estimate("{t}", model="my-llama", prices=pandas_llm.Price.per_million(input=1, output=1),
                               cache=False).too_long == 0  # fmt: skip
