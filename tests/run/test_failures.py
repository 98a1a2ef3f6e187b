"""Retries, per-row failures and run-stopping errors, against the loopback server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import orjson
import pandas as pd
import pytest

import pandas_llm
from pandas_llm import ConfigError, FatalAPIError, RunWarning, TemplateError
from pandas_llm._run import send
from pandas_llm.testing import LLMServer


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


@pytest.fixture
def backoff_levels(monkeypatch):
    """The backoff level of every retry the engine waits for (without waiting)."""
    from pandas_llm._run.retry import RetryPolicy

    levels: list[int] = []

    def backoff(self, attempt, retry_after):
        levels.append(attempt)
        return 0.001

    monkeypatch.setattr(RetryPolicy, "backoff", backoff)
    return levels


def test_a_row_failing_among_answered_ones_is_retried_without_a_doubling_backoff(server, opts, backoff_levels):
    # 40 answers, then one row draws three 500s / overloaded 429s: bad luck, not load
    server.inject(500, times=2, match="unlucky")
    server.inject(429, times=1, match="unlucky")
    df = pd.DataFrame({"text": [f"r{i}" for i in range(40)] + ["unlucky"]})
    out = df.llm.map("{text}", concurrency=1, **opts)
    assert out.notna().all()
    assert backoff_levels == [1, 1, 1]
    assert pandas_llm.last_run().details.loc[40, "attempts"] == 4  # each counted as an attempt


def test_the_backoff_doubles_while_the_server_fails_every_request(server, opts, backoff_levels):
    server.inject(503, times=3)  # nothing answered yet: the server's failures, not the row's
    out = pd.DataFrame({"text": ["a"]}).llm.map("{text}", **opts)
    assert out.notna().all()
    assert backoff_levels == [1, 2, 3]


def test_a_row_failing_every_attempt_among_answered_ones_still_fails_after_max_attempts(server, opts, backoff_levels):
    server.inject(429, times=100, match="doomed")  # overloaded (headers show room): one attempt each
    df = pd.DataFrame({"text": [f"r{i}" for i in range(40)] + ["doomed"]})
    with pytest.warns(RunWarning, match="1 failed"):
        out = df.llm.map("{text}", concurrency=1, max_attempts=6, **opts)
    assert out.isna().tolist() == [False] * 40 + [True]
    assert pandas_llm.last_run().details.loc[40, "attempts"] == 6
    # alone, its failures make the server look busy: doubling again (the 6th is not waited)
    assert backoff_levels == [1, 1, 1, 2, 3, 4]


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


# -- a dead endpoint fails fast; a blip does not ----------------------------------------------
def _closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend_options(kind: str, base_url: str, monkeypatch, stack) -> dict:
    """map() keywords sending to ``base_url`` through one of the four backends."""
    if kind == "aiohttp":
        monkeypatch.setenv("PANDAS_LLM_HTTP", "aiohttp")
    if kind == "openai":
        import openai

        return {"client": stack.enter_context(openai.OpenAI(base_url=base_url, api_key="k"))}
    if kind == "function":
        import urllib.request

        def call(messages, **params):  # a user's function speaking HTTP itself
            req = urllib.request.Request(base_url + "/chat/completions", data=orjson.dumps({"messages": messages, **params}),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return orjson.loads(resp.read())["choices"][0]["message"]["content"]
            except urllib.error.URLError as exc:
                raise (exc.reason if isinstance(exc.reason, OSError) else exc) from None

        return {"client": call}
    return {"base_url": base_url, "api_key": "k"}


BACKENDS = ["wire", "aiohttp", "openai", "function"]


def test_ten_thousand_rows_against_a_closed_port_stop_in_a_handful_of_requests(fast_retries):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    df = pd.DataFrame({"text": [f"row {i}" for i in range(10_000)]})
    with pytest.raises(FatalAPIError, match=rf"cannot reach {url}: \d connection attempts in a row") as err:
        df.llm.map("{text}", base_url=url, api_key="k", progress=False)
    assert "answered rows are kept in the cache" in str(err.value) and "refused" in str(err.value)
    report = pandas_llm.last_run()
    assert report.stats.outcome == "failed" and report.stats.ok == 0
    statuses = report.details["status"].value_counts()
    assert "ok" not in statuses and statuses.get("stopped", 0) >= 10_000 - 16
    assert report.stats.retries <= 16 * send.DEAD_AFTER  # a handful per worker, not 6 x 10,000


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_backend_stops_on_a_dead_endpoint(kind, fast_retries, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    df = pd.DataFrame({"text": [f"row {i}" for i in range(200)]})
    with contextlib.ExitStack() as stack:
        options = _backend_options(kind, url, monkeypatch, stack)
        with pytest.raises(FatalAPIError, match="answered rows are kept in the cache") as err:
            df.llm.map("{text}", progress=False, **options)
    where = "the endpoint of the client function" if kind == "function" else url
    assert f"cannot reach {where}" in str(err.value)
    assert pandas_llm.last_run().stats.ok == 0


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_server_resetting_three_connections_then_recovering_completes(kind, server, fast_retries, monkeypatch):
    server.inject(reset=True, times=3)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(20)]})
    with contextlib.ExitStack() as stack:
        options = _backend_options(kind, server.base_url, monkeypatch, stack)
        out = df.llm.map("{text}", progress=False, concurrency=1, **options)
    assert out.notna().all() and server.injected == 3
    assert pandas_llm.last_run().stats.retries == 3


def test_an_answer_between_connection_failures_keeps_the_run_going(server, fast_retries):
    # 3 resets, a 500 (the endpoint answered: it is alive), 3 resets: 6 failures, never 4 in a row
    server.inject(reset=True, times=3)
    server.inject(500, times=1)
    server.inject(reset=True, times=3)
    out = pd.DataFrame({"text": ["a", "b"]}).llm.map("{text}", concurrency=1, max_attempts=10, **_opts(server))
    assert out.notna().all() and server.injected == 7


def test_dead_after_connection_failures_in_a_row(server, fast_retries):
    server.inject(reset=True, times=send.DEAD_AFTER)
    with pytest.raises(FatalAPIError, match=rf"{send.DEAD_AFTER} connection attempts in a row"):
        pd.DataFrame({"text": ["a", "b"]}).llm.map("{text}", concurrency=1, **_opts(server))
    # with fewer attempts allowed than that, the endpoint is dead after max_attempts
    server.inject(reset=True, times=2)
    with pytest.raises(FatalAPIError, match="2 connection attempts in a row"):
        pd.DataFrame({"text": ["c"]}).llm.map("{text}", concurrency=1, max_attempts=2, **_opts(server))


def test_a_server_that_goes_away_mid_run_stops_it_and_the_answers_are_kept(fast_retries, tmp_path):
    srv = LLMServer(latency=0.005).start()
    df = pd.DataFrame({"text": [f"row {i}" for i in range(400)]})
    kw = dict(base_url=srv.base_url, api_key="k", progress=False, concurrency=4, cache=tmp_path / "c.sqlite")

    def stop_after(n: int) -> None:
        while srv.completed < n:
            time.sleep(0.002)
        srv.stop()

    stopper = threading.Thread(target=stop_after, args=(50,))
    stopper.start()
    try:
        with pytest.raises(FatalAPIError, match=f"cannot reach {srv.base_url}"):
            df.llm.map("{text}", **kw)
    finally:
        stopper.join()
    d = pandas_llm.last_run().details
    answered = int((d["status"] == "ok").sum())
    # 4 may be lost in flight; a row that had failed an attempt when the run stopped is "failed"
    assert answered >= 50 - 4 and set(d["status"]) <= {"ok", "stopped", "failed"}
    with LLMServer(port=srv.port) as again:  # the same base URL: the same cache keys
        out = df.llm.map("{text}", **kw)
        assert out.notna().all() and again.requests == len(df) - answered


def _opts(server) -> dict:
    return {"base_url": server.base_url, "api_key": "k", "progress": False}


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OSError(111, "Connect call failed ('127.0.0.1', 1)"), "connection refused"),  # asyncio's words
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),  # uvloop's
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset"),
        (socket.gaierror(-2, "Name or service not known"), "host name not resolved (DNS)"),
    ],
)
def test_a_connection_error_names_its_kind_the_same_on_every_event_loop(exc, kind):
    from pandas_llm._backends.errors import connection_error_text

    wrapped = RuntimeError("Cannot connect to host")
    wrapped.__cause__ = exc
    for e in (exc, wrapped):
        assert connection_error_text("http://h/v1", e).startswith(f"connection error to http://h/v1: {kind}: ")
