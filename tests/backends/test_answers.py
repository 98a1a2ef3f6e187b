"""Every HTTP 200 is judged before it counts (issue 11, item 1), the same way for every
backend and for Batch API lines: only a finished answer with content is ``ok``."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest

import pandas_llm
from helpers import frame
from pandas_llm import FatalAPIError, RunWarning
from pandas_llm._backends import Completion, parse_completion
from pandas_llm._backends.answers import judge
from pandas_llm._batch.files import parse_line
from pandas_llm._run.judge import completion_record


def chat(content, finish_reason, **choice):
    """An OpenAI-shaped chat.completion body."""
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, **choice}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5},
    }  # fmt: skip


#: A gateway whose worker died: HTTP 200, empty content, finish_reason "error" (OpenRouter's shape).
GATEWAY_ERROR = chat("", "error", error={"code": 502, "message": "Upstream worker died"})


def test_finish_reason_error_is_that_rows_error_never_cached_as_ok(server, run):
    server.inject(200, match="row 1", body=GATEWAY_ERROR)
    with pytest.warns(RunWarning, match="1 error"):
        d = run(frame(4), details=True)
    assert d["status"].tolist() == ["ok", "error", "ok", "ok"]
    assert "Upstream worker died" in d.loc[1, "error"] and d.loc[1, "finish_reason"] == "error"
    assert pd.isna(d.loc[1, "output"]) and d.loc[1, "prompt_tokens"] == 5  # its usage is kept: it may be billed
    assert server.requests == 4  # not retried within the run
    server.reset_counters()
    out = run(frame(4))  # the rerun sends only that row again, and it is answered this time
    assert out.tolist() == [f"echo: row {i}" for i in range(4)] and server.requests == 1


@pytest.mark.parametrize("reason", ["abort", "insufficient_system_resource", None, "tool_calls"])
def test_an_unknown_or_missing_finish_reason_is_no_answer(server, run, reason):
    server.inject(200, match="row 2", body=chat("half an answ", reason))
    with pytest.warns(RunWarning):
        d = run(frame(4), details=True)
    assert d.loc[2, "status"] == "error" and pd.isna(d.loc[2, "output"])
    assert d["status"].tolist().count("ok") == 3 and server.requests == 4


def test_tool_calls_is_an_answer_only_when_tools_were_asked_for():
    c = Completion("called", "tool_calls")
    assert completion_record(b"k", c, None, 1, "m").status == "error"
    assert completion_record(b"k", c, None, 1, "m", tools=True).status == "ok"
    assert completion_record(b"k", Completion(None, "tool_calls"), None, 1, "m", tools=True).status == "error"
    assert completion_record(b"k", Completion("fine", "eos_token"), None, 1, "m").status == "ok"  # TGI's "stop"
    assert completion_record(b"k", Completion("cut", "model_length"), None, 1, "m").status == "length"  # Mistral


def test_an_error_object_without_evidence_of_a_passing_fault_is_that_rows_error(server, run):
    server.inject(200, match="row 0", body={"error": {"message": "Provider returned error", "code": 400}})
    server.inject(200, match="row 3", body={"error": "upstream failed"})
    with pytest.warns(RunWarning, match="2 error"):
        d = run(frame(4), details=True)
    assert d["status"].tolist() == ["error", "ok", "ok", "error"]
    assert "Provider returned error" in d.loc[0, "error"] and "upstream failed" in d.loc[3, "error"]
    assert "HTTP 200" in d.loc[0, "error"]
    assert server.requests == 4  # never retried blindly


def test_an_error_object_naming_a_passing_fault_is_retried_as_that_status(server, run, fast_retries):
    server.inject(200, match="row 1", times=2, body={"error": {"message": "Bad gateway", "code": 502}})
    server.inject(200, match="row 2", body={"error": {"message": "Overloaded", "type": "overloaded_error"}})
    out = run(frame(4))
    assert out.notna().all() and server.requests == 4 + 3
    assert pandas_llm.last_run().stats.retries == 3


def test_an_error_object_saying_no_credit_stops_the_run(server, run):
    server.inject(200, times=100, body={"error": {"message": "You exceeded your quota", "code": "insufficient_quota",
                                                   "type": "insufficient_quota"}})  # fmt: skip
    with pytest.raises(pandas_llm.QuotaError, match="HTTP 200 with an error object"):
        run(frame(40), concurrency=2)
    assert server.requests <= 2


def test_a_complete_event_stream_is_read_as_the_answer_it_is(server, run):
    server.inject(200, match="row 1", shape="sse")
    server.inject(200, match="row 2", shape="json+done")
    d = run(frame(4), details=True)
    assert d["output"].tolist() == [f"echo: row {i}" for i in range(4)]
    assert (d["status"] == "ok").all() and server.requests == 4
    assert d.loc[1, "completion_tokens"] > 0 and d.loc[1, "cost"] > 0  # the usage of its last chunk


def test_a_cut_event_stream_stops_the_run_naming_what_the_server_did(server, run):
    server.inject(200, times=100, shape="sse_cut")
    with pytest.raises(FatalAPIError, match="stream=false") as err:
        run(frame(30), concurrency=2)
    assert "ended before its finish_reason" in str(err.value)
    assert server.requests <= 2  # the first answer stops it: no blind resends of what was probably billed


@pytest.mark.parametrize(
    "body", [b"<html><body>Welcome to nginx!</body></html>", b'{"object": "list", "data": []}', b"data: hello\n\n"]
)
def test_a_200_that_is_not_a_chat_completion_stops_the_run(server, run, body):
    server.inject(200, times=100, body=body)
    with pytest.raises(FatalAPIError, match="HTTP 200") as err:
        run(frame(30), concurrency=2)
    assert err.value.code == "bad_response" and server.requests <= 2
    if body.startswith(b"<html"):  # a web page is named as what it is, not as a broken event stream
        assert "is not a chat completion" in str(err.value) and "event stream (text/event-stream)" not in str(err.value)


def test_a_200_cut_short_in_its_json_says_so_not_that_it_is_an_event_stream(server, run):
    server.inject(200, times=100, body=b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "mess')
    with pytest.raises(FatalAPIError, match="not complete JSON") as err:
        run(frame(30), concurrency=2)
    assert err.value.code == "bad_response" and "event stream" not in str(err.value)


def test_no_choices_is_that_rows_error(server, run):
    server.inject(200, match="row 1", body={"id": "x", "object": "chat.completion", "choices": []})
    with pytest.warns(RunWarning):
        d = run(frame(4), details=True)
    assert d.loc[1, "status"] == "error" and "no choices" in d.loc[1, "error"]


def test_a_client_function_gets_the_same_judgement():
    def client(messages, **params):
        text = messages[-1]["content"]
        return Completion("", "error", error="worker died") if text == "b" else Completion(text.upper(), "stop")

    with pytest.warns(RunWarning):
        d = pd.DataFrame({"text": ["a", "b"]}).llm.map("{text}", client=client, progress=False, details=True)
    assert d["status"].tolist() == ["ok", "error"] and "worker died" in d.loc[1, "error"]


def test_batch_api_lines_are_judged_like_realtime_answers():
    key = bytes(range(32))

    def line(body, status=200):
        return orjson.dumps({"custom_id": key.hex(), "response": {"status_code": status, "body": body}})

    kw = dict(cost=lambda c: None, model="gpt-4o-mini", endpoint="http://x/v1")
    _, ok, _ = parse_line(line(chat("fine", "stop")), **kw)
    _, gateway, _ = parse_line(line(GATEWAY_ERROR), **kw)
    _, error_object, _ = parse_line(line({"error": {"message": "Provider returned error"}}), **kw)
    _, server_error, _ = parse_line(line({"error": {"message": "boom", "type": "server_error"}}), **kw)
    _, not_chat, _ = parse_line(line({"object": "list"}), **kw)
    assert ok.status == "ok" and ok.output == "fine"
    assert gateway.status == "error" and "Upstream worker died" in gateway.error
    assert error_object.status == "error" and "Provider returned error" in error_object.error
    assert server_error.status == "failed"  # transient by its type: the next run sends it again
    assert not_chat.status == "error" and "not a chat completion" in not_chat.error


def test_reasoning_tokens_are_read_and_counted_once():
    openai_usage = {"prompt_tokens": 10, "completion_tokens": 110, "total_tokens": 120,
                    "completion_tokens_details": {"reasoning_tokens": 100}}  # fmt: skip
    apart = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 120,
             "completion_tokens_details": {"reasoning_tokens": 100}}  # fmt: skip
    for usage in (openai_usage, apart):  # included in completion_tokens, or counted apart (total_tokens says so)
        c = parse_completion({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": usage})
        assert (c.completion_tokens, c.reasoning_tokens) == (110, 100)


def test_the_answer_is_the_choice_with_index_0_wherever_the_list_puts_it(server, run):
    body = chat("the answer", "stop")
    body["choices"] = [
        {"index": 1, "message": {"role": "assistant", "content": "another sample"}, "finish_reason": "length"},
        body["choices"][0],
    ]
    server.inject(200, match="row 1", body=body)
    d = run(frame(3), details=True)
    assert d["output"].tolist() == ["echo: row 0", "the answer", "echo: row 2"]
    assert d["status"].tolist() == ["ok"] * 3 and d.loc[1, "finish_reason"] == "stop"
    assert parse_completion(body).text == "the answer"
    del body["choices"][1]  # no choice with index 0: not a completion to read, never another choice
    with pytest.raises(FatalAPIError, match="not a chat completion"):
        judge(body, None, endpoint="http://127.0.0.1/v1", model="m")
