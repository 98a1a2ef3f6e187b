"""Holes found after issues 11 and 12: answers of an unexpected shape, empty answers,
HTTP-date retry-after, content refusals, the context check in batch mode, a Batch API
probe answered by something else, and small counting/redaction faults. Each against a
server on loopback."""

from __future__ import annotations

import email.utils
import time

import pandas as pd
import pytest

import pandas_llm
from helpers import frame
from pandas_llm import QuotaError, RunWarning
from pandas_llm._backends import Completion
from pandas_llm._backends.errors import retry_after
from pandas_llm._run.judge import completion_record
from pandas_llm._store.store import Record, Store


def chat(content, finish_reason="stop"):
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }  # fmt: skip


# -- 1. content as a list of parts ---------------------------------------------------------


def test_content_parts_are_read_as_their_text_joined_in_order(server, run):
    parts = [{"type": "text", "text": "Bon"}, {"type": "text", "text": "jour"}]
    server.inject(200, match="row 1", body=chat(parts))
    d = run(frame(4), details=True)
    assert d["status"].tolist() == ["ok"] * 4 and d.loc[1, "output"] == "Bonjour"


@pytest.mark.parametrize(
    "content, says",
    [
        ([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}], "image_url"),
        ({"text": "hi"}, "dict"),
        (42, "int"),
    ],
)
def test_content_that_is_not_text_is_that_rows_error_and_the_run_goes_on(server, run, content, says):
    server.inject(200, match="row 2", body=chat(content))
    with pytest.warns(RunWarning, match="1 error"):
        d = run(frame(4), details=True)
    assert d["status"].tolist() == ["ok", "ok", "error", "ok"]
    assert "message.content" in d.loc[2, "error"] and says in d.loc[2, "error"]
    assert pd.isna(d.loc[2, "output"]) and d.loc[2, "prompt_tokens"] == 7  # billed tokens kept
    server.reset_counters()
    assert run(frame(4)).tolist() == [f"echo: row {i}" for i in range(4)] and server.requests == 1  # saved, rerun fixes


def test_a_value_that_is_not_text_never_reaches_the_store_as_is():
    rec = completion_record(b"k" * 32, Completion([1, 2], "stop"), None, 1, "m")  # type: ignore[arg-type]
    assert rec.status == "error" and rec.output is None and "list" in rec.error
    with Store(":memory:") as store:  # anything that slips past completion_record: a row error, no crash
        store.write(
            [Record(b"a" * 32, "ok", ["x"]), Record(b"b" * 32, "ok", b"\x00vec"), Record(b"c" * 32, "ok", "fine")]
        )
        got = {r.key[:1]: r for r in store.lookup([b"a" * 32, b"b" * 32, b"c" * 32])}
    assert got[b"a"].status == "error" and "list" in got[b"a"].error
    assert got[b"b"].output == b"\x00vec" and got[b"c"].output == "fine"


def test_a_client_function_returning_a_completion_with_foreign_content_is_a_row_error():
    def fn(messages, **params):
        return Completion({"oops": 1}, "stop") if "row 1" in messages[-1]["content"] else "fine"

    with pytest.warns(RunWarning):
        d = frame(4).llm.map("{text}", client=fn, progress=False, details=True)
    assert d["status"].tolist() == ["ok", "error", "ok", "ok"] and "dict" in d.loc[1, "error"]


# -- 2. an empty answer --------------------------------------------------------------------


def test_an_empty_answer_is_a_failure_of_its_own_kept_and_retried_by_a_rerun(server, run):
    server.inject(200, match="row 0", body=chat(""))
    server.inject(200, match="row 3", body=chat("   "))  # whitespace-only: the model's answer
    with pytest.warns(RunWarning, match="1 empty"):
        d = run(frame(4), details=True)
    assert d.loc[0, "status"] == "empty" and pd.isna(d.loc[0, "output"]) and "empty string" in d.loc[0, "error"]
    assert d.loc[0, "completion_tokens"] == 3 and d.loc[3, "status"] == "ok" and d.loc[3, "output"] == "   "
    assert server.requests == 4  # not resent within the run
    server.reset_counters()
    out = run(frame(4))
    assert out[0] == "echo: row 0" and server.requests == 1


# -- 3. retry-after as an HTTP date ---------------------------------------------------------


def test_retry_after_reads_the_http_date_form():
    assert retry_after({"retry-after": "Wed, 21 Oct 2037 07:28:00 GMT"}, now=2139722880.0 - 90) == 90.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({"retry-after": "12"}) == 12.0 and retry_after({"retry-after": "soon"}) is None


def test_a_retry_after_date_hours_away_stops_a_run_without_deadline(server, opts):
    later = email.utils.formatdate(time.time() + 86400, usegmt=True)
    server.inject(429, times=1000, match="row 1", retry_after=later,
                  body={"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}})  # fmt: skip
    with pytest.raises(QuotaError, match="longer than the 10 min"):
        frame(20).llm.map("{text}", concurrency=1, **opts)
    assert server.requests == 2


# -- 4. a content filter's 400 is that row's refusal, never a shape stop -------------------

AZURE_FILTER = {"error": {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
               "Please modify your prompt and retry.",
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation",
                   "content_filter_result": {"hate": {"filtered": True, "severity": "high"}}},
}}  # fmt: skip
OPENAI_FLAGGED = {"error": {
    "message": "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
    "type": "invalid_request_error", "param": None, "code": "invalid_prompt",
}}  # fmt: skip


@pytest.mark.parametrize("body", [AZURE_FILTER, OPENAI_FLAGGED], ids=["azure", "openai"])
def test_content_refusals_of_the_first_rows_are_their_errors_and_the_run_goes_on(server, run, body):
    for i in range(3):
        server.inject(400, times=1000, match=f"row {i}", body=body)
    with pytest.warns(RunWarning, match="3 content_filter"):
        d = run(frame(8), details=True, concurrency=1)
    assert d["status"].tolist() == ["content_filter"] * 3 + ["ok"] * 5
    assert "refused this row's content" in d.loc[0, "error"] and server.requests == 8
    server.reset_counters()
    with pytest.warns(RunWarning, match="3 content_filter"):  # a rerun is not blocked by them either
        out = run(frame(8), concurrency=1)
    assert out.notna().sum() == 5 and server.requests == 3


def test_a_content_refusal_in_a_batch_line_has_the_same_status():
    from pandas_llm._batch.files import parse_line

    key = b"k" * 32
    line = {"custom_id": key.hex(), "response": {"status_code": 400, "body": AZURE_FILTER}, "error": None}
    import orjson

    _, rec, _ = parse_line(orjson.dumps(line), cost=lambda c: None, model="m", endpoint="http://x/v1")
    assert rec.status == "content_filter"


def test_the_same_shape_refusal_still_stops_the_run(server, opts):
    shape = {"error": {"message": "Unsupported value: 'temperature' does not support 0.2 with this model.",
                       "type": "invalid_request_error", "param": "temperature", "code": None}}  # fmt: skip
    server.inject(400, times=1000, body=shape)
    with pytest.raises(pandas_llm.RequestShapeError):
        frame(20).llm.map("{text}", concurrency=1, temperature=0.2, **opts)
    assert server.requests == 3


# -- 5. the context check before writing batch lines ---------------------------------------

HUGE = "word " * 250_000  # ~250,000 tokens: twice gpt-4o-mini's 128k window


@pytest.mark.parametrize("mode", ["batch", "auto"])
def test_batch_mode_never_uploads_a_prompt_over_the_window(server, opts, mode):
    df = pd.DataFrame({"t": ["short", HUGE, "also short"]})
    kw = dict(poll_interval=0.005, batch_threshold=1) if mode == "auto" else dict(poll_interval=0.005)
    with pytest.warns(RunWarning, match="1 too_long"):
        out = df.llm.map("{t}", model="gpt-4o-mini", mode=mode, **kw, **opts)
    assert out.isna().tolist() == [False, True, False]
    assert not any(b"word word" in u.data for u in server.batches.uploads)  # never uploaded, never paid
    d = pandas_llm.last_run().details
    assert d["status"].tolist() == ["ok", "too_long", "ok"] and "context window" in d.loc[1, "error"]
    assert server.batches.batches_created == 1 and server.requests == 0


def test_packed_batch_never_uploads_a_prompt_over_the_window(server, opts):
    df = pd.DataFrame({"t": ["short", HUGE, "also short", "fine"]})
    with pytest.warns(RunWarning, match="too_long"):
        out = df.llm.map("{t}", model="gpt-4o-mini", mode="batch", rows_per_request=2, poll_interval=0.005, **opts)
    assert out.isna().tolist() == [False, True, False, False]
    assert not any(b"word word" in u.data for u in server.batches.uploads)
    assert server.count("word word") == 0 and server.batches.batches_created >= 1


# -- 6. a Batch API probe answered by something else ----------------------------------------


@pytest.mark.parametrize("status, says", [("html", "Gateway UI"), (400, "Invalid URL")])
def test_auto_falls_back_to_realtime_when_the_batch_api_answers_no_batch_reply(server, opts, status, says, caplog):
    import logging

    server.batches.without_batch_api(status)
    with caplog.at_level(logging.WARNING, logger="pandas_llm"):
        out = frame(20).llm.map("{text}", mode="auto", batch_threshold=10, **opts)
    assert out.tolist() == [f"echo: row {i}" for i in range(20)] and server.batches.files_uploaded == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "has no Batch API" in lines[0] and says in lines[0]


def test_batch_mode_names_what_the_server_answered_instead_of_a_batch_reply(server, opts):
    from pandas_llm._batch.client import NoBatchAPIError

    server.batches.without_batch_api("html")
    with pytest.raises(NoBatchAPIError, match="POST /files .*answered '<!doctype html>.*use mode='realtime'"):
        frame(5).llm.map("{text}", mode="batch", **opts)
    assert server.requests == 0


# -- 7. small counting and redaction faults -------------------------------------------------


def test_url_encoded_forms_of_the_key_are_redacted():
    import urllib.parse

    from pandas_llm._errors import redact

    key = "sk-proj/abc+def=ghi&jkl"
    for form in (key, urllib.parse.quote(key), urllib.parse.quote_plus(key), urllib.parse.quote(key, safe="")):
        text = redact(f"GET /v1/models?api-key={form} failed", [key])
        assert form not in text and "[redacted]" in text


def test_a_sync_function_call_that_never_got_a_thread_is_not_possibly_billed():
    import asyncio
    import threading

    from pandas_llm._backends.function import FunctionBackend
    from pandas_llm._errors import RetryableError

    gate = threading.Event()
    calls = []

    def fn(messages, **params):
        calls.append(messages[-1]["content"])
        gate.wait(2)
        return "late"

    backend = FunctionBackend(fn, concurrency=1, timeout=0.1)
    body = b'{"model":"m","messages":[{"role":"user","content":"%s"}]}'

    async def go():
        return await asyncio.gather(
            backend.complete(body % b"a"), backend.complete(body % b"b"), return_exceptions=True
        )

    try:
        first, second = asyncio.run(go())
    finally:
        gate.set()
        asyncio.run(backend.aclose())
    assert isinstance(first, RetryableError) and first.maybe_billed  # handed to the function: may be billed
    assert isinstance(second, RetryableError) and not getattr(second, "maybe_billed", False)
    assert "not called" in str(second) and calls == ["a"]


def test_the_summary_counts_http_attempts_beside_requests(server, opts, fast_retries):
    server.inject(503, times=2, match="row 1")
    frame(3).llm.map("{text}", **opts)
    summary = pandas_llm.last_run().summary()
    assert "3 requests sent (3 ok, 5 HTTP attempts)" in summary


def test_rows_refused_alike_in_an_earlier_run_cannot_block_every_rerun(server, opts):
    odd = {"error": {"message": "Invalid request.", "type": "invalid_request_error", "param": None, "code": None}}
    for i in range(3):
        server.inject(400, times=1000, match=f"row {i}", body=odd)
    with pytest.raises(pandas_llm.RequestShapeError):  # three identical 400s first: taken for the shape
        frame(8).llm.map("{text}", concurrency=1, **opts)
    assert server.requests == 3
    server.reset_counters()
    with pytest.warns(RunWarning, match="3 error"):  # the same refusals again: those rows' own errors
        out = frame(8).llm.map("{text}", concurrency=1, **opts)
    assert out.notna().sum() == 5 and server.requests == 8


def test_a_finish_reason_or_refusal_of_another_type_is_judged_not_bound(server, run):
    body = chat("text")
    body["choices"][0]["finish_reason"] = {"type": "stop"}
    server.inject(200, match="row 1", body=body)
    with pytest.warns(RunWarning, match="1 error"):
        d = run(frame(4), details=True)
    assert d["status"].tolist() == ["ok", "error", "ok", "ok"] and isinstance(d.loc[1, "finish_reason"], str)


def test_batch_mode_with_a_gateway_400_on_files_says_there_is_no_batch_api(server, opts):
    from pandas_llm._batch.client import NoBatchAPIError

    server.batches.without_batch_api(400)  # a gateway's "Invalid URL" for a path it does not route
    with pytest.raises(NoBatchAPIError, match=r"no Batch API \(HTTP 400 on POST /files.*use mode='realtime'"):
        frame(5).llm.map("{text}", mode="batch", **opts)
    assert server.requests == 0


def test_a_400_refusing_the_batch_file_stops_the_job_and_is_no_row_error(server, opts):
    from pandas_llm._errors import BadRequestError, FatalAPIError

    server.batches.fail_requests(400)  # the upload answers 400 with an OpenAI-style error body
    with pytest.raises(
        FatalAPIError,
        match=r"refused the job \(POST /files .*HTTP 400.*Invalid request\. Nothing was submitted, so nothing is billed",
    ) as e:
        frame(5).llm.map("{text}", mode="batch", **opts)
    assert not isinstance(e.value, BadRequestError)  # not "the endpoint refused this one request"
    assert server.batches.batches_created == 0 and server.requests == 0
