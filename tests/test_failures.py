"""Retries, per-row failures and run-stopping errors, against the loopback server."""

from __future__ import annotations

import time

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import ConfigError, FatalAPIError, RunWarning, TemplateError
from pandas_llm.testing import LLMServer


@pytest.fixture
def fast_retries(monkeypatch):
    """Backoff without real waiting, so retry tests take milliseconds."""
    from pandas_llm import scheduler

    monkeypatch.setattr(scheduler.RetryPolicy, "backoff", lambda self, attempt, retry_after: 0.001)


def test_429_with_retry_after_is_retried(server, opts):
    server.inject(429, times=3, retry_after_ms=20)
    df = pd.DataFrame({"text": [f"r{i}" for i in range(20)]})
    out = df.llm.map("{text}", **opts)
    assert out.notna().all()
    assert server.completed == 20
    stats = pandas_llm.last_run().stats  # the headers show room left: the server was busy, not at the limit
    assert (stats.overloaded, stats.rate_limited) == (3, 0)


def test_retry_after_is_honoured(server, opts):
    server.inject(429, times=1, retry_after=0.3)
    t0 = time.monotonic()
    pd.DataFrame({"text": ["a"]}).llm.map("{text}", **opts)
    assert time.monotonic() - t0 >= 0.3


def test_5xx_are_retried(server, opts, fast_retries):
    server.inject(500, times=2)
    server.inject(503, times=2)
    out = pd.DataFrame({"text": ["a", "b", "c"]}).llm.map("{text}", **opts)
    assert out.notna().all()
    assert server.requests == 3 + 4


def test_a_hang_times_out_and_is_retried(server, opts, fast_retries):
    server.inject(200, hang=True, times=1, match="slow")
    out = pd.DataFrame({"text": ["slow one", "fast"]}).llm.map("{text}", timeout=0.3, **opts)
    assert out.notna().all()
    assert server.count("slow one") == 1


def test_persistent_5xx_fails_the_row_after_max_attempts(server, opts, fast_retries):
    server.inject(500, times=100, match="bad")
    df = pd.DataFrame({"text": ["good", "bad", "good2"]})
    with pytest.warns(RunWarning, match=r"1 of 3 rows have no answer: 1 failed"):
        out = df.llm.map("{text}", max_attempts=3, **opts)
    assert out.isna().tolist() == [False, True, False]
    d = pandas_llm.last_run().details
    assert d.loc[1, "status"] == "failed" and "HTTP 500" in d.loc[1, "error"]
    assert d.loc[1, "attempts"] == 3
    # a rerun retries only the failed row
    server.clear_faults()
    server.reset_counters()
    out2 = df.llm.map("{text}", **opts)
    assert out2.notna().all() and server.requests == 1


def test_400_is_that_rows_error_and_not_retried(server, opts):
    server.inject(400, times=1, match="oops")
    df = pd.DataFrame({"text": ["fine", "oops"]})
    with pytest.warns(RunWarning, match="1 error"):
        out = df.llm.map("{text}", **opts)
    assert out.isna().tolist() == [False, True]
    assert server.requests == 2


def test_401_stops_the_run_and_names_the_base_url(opts):
    with LLMServer(api_key="right") as srv:
        df = pd.DataFrame({"text": [f"r{i}" for i in range(100)]})
        with pytest.raises(FatalAPIError, match=srv.base_url) as err:
            df.llm.map("{text}", base_url=srv.base_url, api_key="wrong", progress=False)
        assert err.value.status == 401
        assert srv.requests <= 16  # the first wave only: nothing after the 401


def test_404_stops_the_run(server, opts):
    server.inject(404, times=1000)
    with pytest.raises(FatalAPIError, match="wrong base_url or unknown model"):
        pd.DataFrame({"text": ["a", "b"]}).llm.map("{text}", **opts)


def test_length_and_content_filter_are_failures_with_their_status(server, opts):
    df = pd.DataFrame({"text": ["short", "a much longer prompt " * 20, "x [[content_filter]]"]})
    with pytest.warns(RunWarning):
        d = df.llm.map("{text}", max_tokens=8, details=True, **opts)
    assert d["status"].tolist() == ["ok", "length", "content_filter"]
    assert d["output"].isna().tolist() == [False, True, True]
    assert "max_tokens" in d.loc[1, "error"]


def test_unknown_placeholder_fails_before_any_request(server, opts):
    df = pd.DataFrame({"text": ["a"], "lang": ["fr"]})
    with pytest.raises(TemplateError, match=r"\{txt\}.*Did you mean \{text\}.*Available columns: text, lang"):
        df.llm.map("Translate {txt} to {lang}", **opts)
    assert server.requests == 0


@pytest.mark.parametrize("template", ["{text.__class__}", "{text[0]}", "{}", "{text:{lang}}"])
def test_forbidden_placeholders(server, opts, template):
    df = pd.DataFrame({"text": ["a"], "lang": ["fr"]})
    with pytest.raises(TemplateError):
        df.llm.map(template, **opts)
    assert server.requests == 0


def test_bad_keywords_fail_before_any_request(server, opts):
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        df.llm.map("{text}", temprature=0.1, **opts)
    with pytest.raises(ConfigError, match="concurrency"):
        df.llm.map("{text}", concurrency=0, **opts)
    with pytest.raises(ConfigError, match="no API key"):
        df.llm.map("{text}", progress=False)  # default endpoint, no key anywhere
    assert server.requests == 0


def test_template_function_errors_say_which_row(opts):
    df = pd.DataFrame({"text": ["a", None]})
    with pytest.raises(TemplateError, match="row 1"):
        df.llm.map(lambda r: r.text.upper(), **opts)


def test_a_users_openai_client_gets_the_same_retries_and_fatal_errors(server, fast_retries):
    import openai

    server.inject(500, times=2)
    server.inject(429, times=1, retry_after_ms=1)
    with openai.OpenAI(base_url=server.base_url, api_key="k") as client:
        out = pd.DataFrame({"text": ["a", "b"]}).llm.map("{text}", client=client, progress=False)
        assert out.notna().all() and server.requests == 2 + 3
        server.inject(401, times=10)
        with pytest.raises(FatalAPIError, match="API key was refused") as err:
            pd.DataFrame({"text": ["c"]}).llm.map("{text}", client=client, progress=False)
    assert err.value.status == 401
