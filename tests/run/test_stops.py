"""Errors that will not clear stop the run early, with the server's message and what to do
(issue 11, items 2 and 4); reasoning models are sent what they accept."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

import pandas_llm
from helpers import VirtualTime, frame
from pandas_llm import QuotaError, RequestShapeError, RunWarning
from pandas_llm._backends import Completion
from pandas_llm._display.progress import Snapshot
from pandas_llm._errors import RateLimitError
from pandas_llm._run.engine import Engine, RetryPolicy
from pandas_llm._run.limiter import Limiter
from pandas_llm._stats import RunStats
from pandas_llm._store.store import Store
from pandas_llm.testing import LLMServer

#: OpenAI's answer to max_tokens on an o-series model (here behind a deployment name the
#: library cannot recognise as a reasoning model, as on Azure).
UNSUPPORTED_MAX_TOKENS = {
    "error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }
}
#: llama.cpp (llama-cpp-python's server) answering a json_schema response_format.
LLAMA_CPP_JSON_SCHEMA = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


# -- item 2: the same request error on every row ---------------------------------------------


def test_an_unsupported_parameter_stops_the_run_at_the_first_answer(server, opts):
    server.inject(400, times=1000, body=UNSUPPORTED_MAX_TOKENS)
    with pytest.raises(RequestShapeError, match="max_completion_tokens= instead of max_tokens=") as err:
        frame(500).llm.map("{text}", model="my-o3-deployment", max_tokens=50, concurrency=4, **opts)
    assert "Unsupported parameter: 'max_tokens'" in str(err.value)
    assert isinstance(err.value, pandas_llm.FatalAPIError) and err.value.status == 400
    assert server.requests <= 4  # the first wave only, not 500 rows
    assert pandas_llm.last_run().details["status"].value_counts()["stopped"] >= 496


def test_the_same_400_on_the_first_answers_stops_the_run(server, opts):
    server.inject(400, times=1000, body={"error": {"message": "Invalid 'top_k': unknown parameter"}})
    with pytest.raises(RequestShapeError, match="the first 3 requests of this run alike") as err:
        frame(100).llm.map("{text}", concurrency=1, **opts)
    assert "Invalid 'top_k'" in str(err.value) and server.requests == 3
    statuses = pandas_llm.last_run().details["status"].value_counts()
    assert statuses["error"] == 3 and statuses["stopped"] == 97  # the refusals are kept, as errors


def test_the_same_400_after_an_answer_is_each_rows_error(server, opts):
    server.inject(400, times=1000, match="row", body={"error": {"message": "Invalid 'top_k': unknown parameter"}})
    df = pd.DataFrame({"text": ["first"] + [f"row {i}" for i in range(20)]})
    with pytest.warns(RunWarning, match="20 error"):
        df.llm.map("{text}", concurrency=1, **opts)  # the request's shape was answered once: not the shape
    assert server.requests == 21


def test_refusals_of_a_rows_own_content_never_stop_the_run(server, opts):
    for i in (0, 1, 2, 3):  # the same words for every long row, as some servers send them
        server.inject(
            400, match=f"row {i}", body={"error": {"message": "the request exceeds the available context size"}}
        )
    with pytest.warns(RunWarning, match="4 error"):
        out = frame(10).llm.map("{text}", concurrency=1, **opts)
    assert out.notna().sum() == 6 and server.requests == 10


def test_different_400s_do_not_stop_the_run(server, opts):
    for i in (0, 1, 2):
        server.inject(400, match=f"row {i}", body={"error": {"message": f"bad row {i}"}})
    with pytest.warns(RunWarning, match="3 error"):
        frame(6).llm.map("{text}", concurrency=1, **opts)
    assert server.requests == 6


@pytest.mark.parametrize("status, body", [(500, LLAMA_CPP_JSON_SCHEMA),
                                          (400, {"error": {"message": "'response_format.type' json_schema is not supported"}})])  # fmt: skip
def test_a_json_schema_refusal_says_to_pass_structured_json_object(server, opts, status, body):
    server.inject(status, times=1000, body=body)
    with pytest.raises(RequestShapeError, match='structured="json_object"'):
        frame(30).llm.classify("{text}", labels=["a", "b"], concurrency=1, **opts)
    assert server.requests == 1  # a 500 naming the response format is not retried
    server.clear_faults()
    out = frame(3).llm.classify("{text}", labels=["a", "b"], structured="json_object", **opts)  # the advice works
    assert out.notna().all()


def test_reasoning_models_get_max_completion_tokens_and_their_reasoning_tokens_are_counted(server, opts):
    d = frame(3).llm.map("{text}", model="o3-mini", max_tokens=200, details=True, **opts)
    assert (d["status"] == "ok").all()  # the loopback server refuses max_tokens for o3-mini, as OpenAI does
    stats = pandas_llm.last_run().stats
    assert stats.reasoning_tokens > 0
    assert stats.completion_tokens == server.completion_tokens == int(d["completion_tokens"].sum())
    price = pandas_llm.Price.per_million(input=1.0, output=4.0)
    assert stats.cost == pytest.approx(sum(d["cost"]))  # priced as output tokens, counted once
    snap = Snapshot.of(stats, 0.0)
    assert f"({stats.reasoning_tokens:,} reasoning)" in snap.money()  # shown in the widget and the log
    # max_tokens bounds reasoning and answer together: too small, and the answer is cut
    with pytest.warns(RunWarning, match="length"):
        d = frame(1).llm.map("{text}", model="o3-mini", max_tokens=4, prices=price, details=True, **opts)
    assert d.loc[0, "status"] == "length" and d.loc[0, "completion_tokens"] == 4


def test_max_cost_reserves_reasoning_tokens_through_max_completion_tokens(server, opts):
    from pandas_llm._config import Settings
    from pandas_llm._plan.requests import RequestBuilder
    from pandas_llm._run.budget import Meter

    price = pandas_llm.Price.per_million(input=1.0, output=10.0)
    settings = Settings(
        model="o3-mini", base_url=server.base_url, params={"max_tokens": 1000}, prices=price, max_cost=1.0
    )
    _, body = RequestBuilder(settings).encode([{"role": "user", "content": "hi"}])
    assert b'"max_completion_tokens":1000' in body and b'"max_tokens"' not in body
    assert Meter.for_settings(settings).worst_case(body) >= 1000 * 10.0 / 1e6  # reasoning + answer at the output price
    unbounded = Settings(model="o3-mini", base_url=server.base_url, prices=price, max_cost=1.0)
    assert Meter.for_settings(unbounded).max_output == 100_000  # the model's limit, reasoning included


def test_reasoning_effort_is_a_keyword_and_temperature_refusals_stop_the_run(server, opts):
    out = frame(2).llm.map("{text}", model="gpt-5-mini", reasoning_effort="low", **opts)
    assert out.notna().all()
    with pytest.raises(RequestShapeError, match="drop temperature="):
        frame(50).llm.map("{text}", model="gpt-5-mini", temperature=0, concurrency=2, **opts)


# -- item 4: errors that will not clear ------------------------------------------------------


def test_402_out_of_credit_stops_the_run_at_once(server, opts):
    server.inject(402, times=1000)  # DeepSeek's {"error": {"message": "Insufficient Balance", ...}}
    with pytest.raises(QuotaError, match="Insufficient Balance") as err:
        frame(300).llm.map("{text}", concurrency=4, **opts)
    assert err.value.status == 402 and server.requests <= 4


@pytest.mark.parametrize(
    "fault, says",
    [
        (dict(retry_after=86400), "24 h 0 min"),
        (
            dict(
                body={
                    "error": {
                        "message": "Quota exceeded for metric: generate_content_free_tier_requests, "
                        "limit: 0, model: gemini-2.5-pro",
                        "code": 429,
                    }
                }
            ),
            r"gemini-2\.5-pro\. The limit is 0",  # one sentence, then the next
        ),  # fmt: skip
        (
            dict(
                body={"error": {"message": "You have reached your daily request limit.", "code": "rate_limit_exceeded"}}
            ),
            "daily quota",
        ),
    ],
)
def test_a_429_that_will_not_clear_stops_the_run_and_says_when_to_come_back(server, opts, fault, says):
    server.inject(200, shape="json+done", match="row 0")
    server.inject(429, times=1000, match="row 1", **fault)
    with pytest.raises(QuotaError, match=says) as err:
        frame(50).llm.map("{text}", concurrency=1, **opts)
    assert server.requests == 2
    assert pandas_llm.last_run().details.loc[0, "output"] == "echo: row 0"  # answered rows are kept
    if "retry_after" in fault:
        assert err.value.retry_after == 86400 and "at about" in str(err.value)


def test_a_503_asking_to_come_back_tomorrow_stops_the_run(server, opts):
    server.inject(503, times=1000, retry_after=86400)
    with pytest.raises(pandas_llm.FatalAPIError, match="longer than the 10 min"):
        frame(20).llm.map("{text}", concurrency=1, **opts)
    assert server.requests == 1


def test_a_429_whose_wait_ends_after_the_deadline_returns_at_once_with_what_was_answered(server, opts):
    limit = "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 10000, Used 10000, Requested 1."
    server.inject(
        429,
        times=1000,
        match="row 3",
        retry_after=30,
        body={"error": {"message": limit, "code": "rate_limit_exceeded"}},
    )
    with pytest.warns(RunWarning, match="deadline=5 s stopped the sending: HTTP 429") as warned:
        d = frame(20).llm.map("{text}", concurrency=1, deadline=5, details=True, **opts)
    assert d["status"].tolist() == ["ok"] * 3 + ["deadline"] * 17
    assert "30 s" in str(warned[0].message) and server.requests == 4  # nothing sent after the 429
    assert ".." not in str(warned[0].message).replace("...", "")  # sentences end once


def test_a_rate_limit_pause_within_the_deadline_is_waited_out(server, opts):
    server.inject(429, times=1, retry_after_ms=50)
    out = frame(5).llm.map("{text}", concurrency=1, deadline=30, **opts)
    assert out.notna().all()


class SlowBackend:
    """Answers after ``latency`` of virtual time; every call is logged with its time."""

    def __init__(self, vt: VirtualTime, latency=1.0, fail_after=None):
        self.vt, self.latency, self.fail_after = vt, latency, fail_after
        self.sent: list[float] = []

    async def complete(self, body: bytes) -> Completion:
        self.sent.append(self.vt.now)
        if self.fail_after is not None and len(self.sent) > self.fail_after:
            raise RateLimitError("HTTP 429", status=429, retry_after=0.5)
        await self.vt.sleep(self.latency)
        return Completion("ok", "stop", 3, 2)

    async def aclose(self) -> None:
        pass


def run_engine(vt, backend, *, n, deadline, concurrency=3, rpm=None):
    stats = RunStats()
    stats.started = vt.now
    limiter = Limiter(rpm=rpm, headroom=1.0, learn=False, clock=vt.clock, sleep=vt.sleep)
    eng = Engine(backend=backend, store=Store(None), stats=stats, concurrency=concurrency,
                 retry=RetryPolicy(deadline=deadline), limiter=limiter, clock=vt.clock, sleep=vt.sleep)  # fmt: skip
    jobs = ((u, bytes([u]) * 32, b'{"n":%d}' % u) for u in range(n))
    return eng, stats, vt.run(eng.run(jobs))


async def test_the_deadline_is_checked_before_every_send():
    vt = VirtualTime()
    backend = SlowBackend(vt, latency=1.0)
    eng, stats, done = run_engine(vt, backend, n=100, deadline=4.5)
    await done
    eng.store.close()
    assert backend.sent and max(backend.sent) <= 4.5  # nothing left after the deadline
    assert stats.deadline_reached and stats.ok == len(backend.sent) == 15  # those in flight were kept


async def test_workers_waiting_for_the_limiter_stop_at_the_deadline_not_after_the_pause():
    vt = VirtualTime()
    backend = SlowBackend(vt, latency=0.1)
    eng, stats, done = run_engine(vt, backend, n=100, deadline=2.0, rpm=60)  # one request a second
    await done
    eng.store.close()
    assert max(backend.sent) <= 2.0 and vt.now <= 2.0 + 1e-9  # returned at the deadline, not at the next slot
    assert stats.deadline_reached and stats.ok == len(backend.sent)


def test_rows_not_sent_by_the_deadline_say_so(server, opts):
    server.latency = 0.2
    with pytest.warns(
        RunWarning, match=r"deadline \(not sent \(or its retry not sent\): the run's deadline passed first\)"
    ):
        d = frame(40).llm.map("{text}", concurrency=2, deadline=0.3, details=True, **opts)
    assert "deadline" in set(d["status"]) <= {"ok", "deadline"} and server.requests < 40
    assert (d["status"] == "ok").sum() == server.completed  # every answer that left was kept


def test_asyncio_cancellation_still_works_with_a_deadline(server, opts):
    server.latency = 0.05

    async def go():
        task = asyncio.ensure_future(frame(200).llm.amap("{text}", concurrency=2, deadline=60, **opts))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert pandas_llm.last_run().stats.outcome == "interrupted"


def test_the_loopback_server_imitates_reasoning_models_and_deepseeks_402():
    import json
    import urllib.error
    import urllib.request

    with LLMServer() as srv:

        def post(body):
            req = urllib.request.Request(srv.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            try:
                with urllib.request.urlopen(req) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        msgs = [{"role": "user", "content": "hi"}]
        assert post({"model": "o3-mini", "messages": msgs, "max_tokens": 5}) == (400, UNSUPPORTED_MAX_TOKENS)
        status, body = post({"model": "o3-mini", "messages": msgs, "max_completion_tokens": 100})
        usage = body["usage"]
        assert status == 200 and usage["completion_tokens_details"]["reasoning_tokens"] == 2 * 3
        assert usage["completion_tokens"] == 3 + 6
        srv.inject(402)
        assert post({"model": "deepseek-chat", "messages": msgs})[1]["error"]["message"] == "Insufficient Balance"
