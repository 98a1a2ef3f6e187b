"""Money counted when the answer is lost: attempts sent whose answer never came back (a
timeout, a dropped connection, a gateway's 504) may be billed, so max_cost counts them at
their worst case and the run shows them apart; a user's openai client keeps its timeout."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import pandas_llm
from helpers import billed
from pandas_llm import FatalAPIError
from pandas_llm._backends.errors import error_for_status
from pandas_llm._display.progress import Snapshot
from pandas_llm._stats import RunReport, RunStats
from pandas_llm.testing import LLMServer

LONG = "word " * 40  # ~51 completion tokens at the server's estimate


def long_answer(messages, model):
    return LONG


# Answers (and bills) every request, but only after the client's 0.1 s timeout.
SLOW = pytest.mark.server(latency=0.4, answer=long_answer)


def kw(srv: LLMServer, **more):
    return {
        "base_url": srv.base_url,
        "api_key": "x",
        "cache": False,
        "progress": False,
        "timeout": 0.1,
        "max_tokens": 60,
        **more,
    }


@SLOW
def test_max_cost_holds_against_what_the_server_billed_for_answers_lost_to_timeouts(server, fast_retries):
    df = pd.DataFrame({"t": [f"row {i}" for i in range(12)]})
    cap = 0.0004
    with pytest.warns(pandas_llm.RunWarning, match=r"possibly billed for \d+ answers lost"):
        out = df.llm.map("{t}", max_cost=cap, concurrency=4, max_attempts=3, **kw(server))
    assert out.isna().all()
    stats = pandas_llm.last_run().stats
    assert server.completed > 0  # the server ran (and billed) them
    assert billed(server) <= cap  # before: 36 generations, ~3x the cap, while the run said $0
    assert stats.cost == 0.0 and stats.lost_answers == server.completed
    assert billed(server) <= stats.possibly_billed <= cap  # the worst case covers the bill
    assert stats.budget_reached
    assert "possibly billed" in pandas_llm.last_run().summary()


@SLOW
def test_lost_answers_are_shown_apart_without_max_cost(server, fast_retries):
    df = pd.DataFrame({"t": [f"row {i}" for i in range(4)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pandas_llm.RunWarning)
        df.llm.map("{t}", concurrency=4, max_attempts=2, **kw(server))
    stats = pandas_llm.last_run().stats
    assert stats.lost_answers == server.completed == 8
    assert stats.possibly_billed >= billed(server) > 0
    snap = Snapshot.of(stats, now=stats.finished)
    assert "possibly billed (8 answers lost)" in snap.money()
    assert "possibly billed (8 answers lost)" in snap.summary()


def test_an_answer_that_arrives_is_not_counted_as_lost(fast_retries):
    with LLMServer(answer=long_answer) as srv:
        srv.inject(500, times=2)  # the server says it failed: not billed
        out = pd.DataFrame({"t": ["a", "b"]}).llm.map("{t}", **kw(srv, timeout=5))
    assert out.notna().all()
    stats = pandas_llm.last_run().stats
    assert stats.lost_answers == 0 and stats.possibly_billed == 0.0
    assert "possibly billed" not in Snapshot.of(stats, now=stats.finished).money()


def test_which_failures_may_have_been_billed():
    def billed_status(status):
        return error_for_status(status, {}, None, endpoint="e", model="m").maybe_billed

    assert billed_status(504) and billed_status(524)  # a gateway gave up; the model may still run
    assert not any(billed_status(s) for s in (408, 409, 500, 502, 503))


def test_a_refused_connection_is_not_billed(fast_retries):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(pandas_llm.FatalAPIError, match="cannot reach"):  # a dead endpoint stops the run
        pd.DataFrame({"t": ["a"]}).llm.map(
            "{t}", base_url=f"http://127.0.0.1:{port}/v1", api_key="x", cache=False, progress=False, max_attempts=2
        )
    assert pandas_llm.last_run().stats.lost_answers == 0


def test_the_snapshot_words_for_lost_answers():
    stats = RunStats(total=3, unique=3, to_send=3, sent_done=3, started=0.0, finished=1.0)
    stats.lost_answers, stats.possibly_billed = 1, 0.0123
    assert Snapshot.of(stats, now=1.0).lost() == "up to $0.0123 possibly billed (1 answer lost)"
    stats.cost_known = False
    assert Snapshot.of(stats, now=1.0).lost() == "1 answer lost, possibly billed"
    summary = RunReport(stats, None).summary()  # the price unknown is said once, not twice
    assert "price unknown (1 answer lost, possibly billed)" in summary and summary.count("price unknown") == 1


# -- a user's own openai client keeps its timeout --------------------------------------------
def test_a_users_client_keeps_its_own_timeout(fast_retries):
    import openai

    with LLMServer(latency=0.4) as srv:
        df = pd.DataFrame({"t": ["a"]})
        with openai.OpenAI(base_url=srv.base_url, api_key="k", timeout=0.1) as client:
            with pytest.warns(pandas_llm.RunWarning, match="1 failed"):
                out = df.llm.map("{t}", client=client, cache=False, progress=False, max_attempts=1)
            assert out.isna().all()  # its 0.1 s held (before, the library's 60 s replaced it)
            assert "within the timeout" in pandas_llm.last_run().details["error"].iloc[0]
            # timeout= given explicitly applies to every request, the client's included
            out = df.llm.map("{t}", client=client, cache=False, progress=False, timeout=5)
            assert out.notna().all()


def test_the_client_backend_passes_the_timeout_only_when_given():
    import openai

    from pandas_llm._backends.openai_client import OpenAIClientBackend

    with openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", timeout=600) as client:
        assert OpenAIClientBackend(client, timeout=None)._client.timeout == 600
        assert OpenAIClientBackend(client, timeout=7)._client.timeout == 7
    assert pandas_llm.Settings().request_timeout == 60.0
    assert pandas_llm.Settings(timeout=5).request_timeout == 5.0


def test_requests_abandoned_in_flight_when_the_run_stops_are_counted_as_possibly_billed(server, tmp_path):
    # three requests hang at the server while a fourth gets a 401, which stops the run: the
    # three were sent and the server may bill them, so they count, never silently dropped
    server.inject(hang=True, match="server", times=3)
    server.inject(401, match="boom")
    df = pd.DataFrame({"text": ["server 0", "server 1", "server 2", "boom"]})
    with pytest.raises(FatalAPIError):
        df.llm.map("{text}", base_url=server.base_url, api_key="k", progress=False, concurrency=4,
                   max_tokens=10, cache=str(tmp_path / "c.sqlite"))  # fmt: skip
    stats = pandas_llm.last_run().stats
    assert stats.lost_answers == 3
    assert stats.possibly_billed > 0
