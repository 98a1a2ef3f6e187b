"""The loopback server's Batch API (/v1/files, /v1/batches), driven through the real openai SDK."""

from __future__ import annotations

import json

import openai
import pytest

from pandas_llm.testing import LLMServer

MODEL = "gpt-4o-mini"


def _line(custom_id: str, prompt: str, model: str = MODEL, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}], **body},
    }


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _submit(client, lines: list[dict], **kw):
    f = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", **kw)


def _results(client, file_id) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x.strip()]


def test_round_trip_answers_equal_the_realtime_endpoint(server, client):
    lines = [_line(f"id-{i}", f"prompt {i}", temperature=0) for i in range(50)]
    b = _submit(client, lines, metadata={"job": "t"})
    assert b.status == "validating" and b.metadata == {"job": "t"}
    b = client.batches.retrieve(b.id)
    assert b.status == "completed"
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (50, 50, 0)
    out = _results(client, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    assert [x["custom_id"] for x in out] != [x["custom_id"] for x in lines]  # shuffled
    realtime = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "prompt 7"}], temperature=0
    )
    by_id = {x["custom_id"]: x["response"]["body"] for x in out}
    assert by_id["id-7"]["choices"][0]["message"]["content"] == realtime.choices[0].message.content
    assert by_id["id-7"]["usage"] == realtime.usage.model_dump(exclude_none=True) | {
        "prompt_tokens_details": {"cached_tokens": 0}
    }
    assert server.batches.lines_answered == 50 and server.count("prompt 7") == 2  # batch + realtime
    assert (server.batches.files_uploaded, server.batches.batches_created) == (1, 1)


def test_states_progress_with_delay_and_hold(server, client):
    server.batches.hold()
    b = _submit(client, [_line("a", "x"), _line("b", "y")])
    b = client.batches.retrieve(b.id)
    assert b.status == "in_progress" and b.output_file_id is None
    server.batches.release()
    server.batches.delay = 10.0
    b2 = _submit(client, [_line("c", "z")])
    assert client.batches.retrieve(b2.id).status in ("validating", "in_progress")
    server.batches.delay = 0.0
    assert client.batches.retrieve(b.id).status == "completed"
    assert client.batches.retrieve(b2.id).status == "completed"


def test_line_failures_go_to_the_error_file(server, client):
    server.batches.fail_lines("bad", status=500)
    lines = [_line("ok", "good one"), _line("ko", "bad one"), _line("inv", "x", max_tokens=0)]
    b = client.batches.retrieve(_submit(client, lines).id)
    assert b.status == "completed"
    assert (b.request_counts.completed, b.request_counts.failed) == (1, 2)
    errors = {x["custom_id"]: x for x in _results(client, b.error_file_id)}
    assert errors["ko"]["response"]["status_code"] == 500
    assert errors["inv"]["response"]["status_code"] == 400
    assert [x["custom_id"] for x in _results(client, b.output_file_id)] == ["ok"]


def test_expired_batch_answers_a_share_and_reports_the_rest(server, client):
    server.batches.expire_next(fraction=0.5)
    b = client.batches.retrieve(_submit(client, [_line(str(i), f"p{i}") for i in range(10)]).id)
    assert b.status == "expired"
    out, err = _results(client, b.output_file_id), _results(client, b.error_file_id)
    assert len(out) == 5 and len(err) == 5
    assert {x["error"]["code"] for x in err} == {"batch_expired"}
    assert server.batches.lines_answered == 5


def test_cancel(server, client):
    server.batches.hold()
    b = _submit(client, [_line(str(i), f"p{i}") for i in range(10)])
    client.batches.retrieve(b.id)
    c = client.batches.cancel(b.id)
    assert c.status == "cancelling"
    c = client.batches.retrieve(b.id)
    assert c.status == "cancelled" and server.batches.batches_cancelled == 1
    err = _results(client, c.error_file_id)
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert len(err) + len(_results(client, c.output_file_id)) == 10
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(b.id)


@pytest.mark.parametrize(
    "lines, code",
    [
        ([_line("a", "x"), _line("a", "y")], "duplicate_custom_id"),
        ([_line("a", "x"), _line("b", "y", model="gpt-4o")], "mixed_models"),
        ([_line(str(i), "x") for i in range(4)], "too_many_requests"),
    ],
)
def test_validation_failures(server, client, lines, code):
    server.batches.max_requests = 3
    b = client.batches.retrieve(_submit(client, lines).id)
    assert b.status == "failed"
    assert b.errors.data[0].code == code
    assert server.batches.lines_answered == 0


def test_file_size_and_enqueued_token_limits(server, client):
    server.batches.max_bytes = 100
    b = client.batches.retrieve(_submit(client, [_line("a", "x" * 200)]).id)
    assert b.status == "failed" and b.errors.data[0].code == "file_too_large"
    server.batches.max_bytes = 10**6
    server.batches.enqueued_tokens = 30
    server.batches.hold()
    first = _submit(client, [_line("a", "x" * 80)])  # ~21 tokens
    second = client.batches.retrieve(_submit(client, [_line("b", "y" * 80)]).id)
    assert second.status == "failed" and second.errors.data[0].code == "token_limit_exceeded"
    assert client.batches.retrieve(first.id).status == "in_progress"


def test_files_retrieve_content_delete_and_batches_list(server, client):
    f = client.files.create(file=("in.jsonl", _jsonl([_line("a", "x")])), purpose="batch")
    assert client.files.retrieve(f.id).filename == "in.jsonl"
    assert client.files.content(f.id).content == _jsonl([_line("a", "x")])
    ids = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
           for _ in range(5)]  # fmt: skip
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=100)] == ids[::-1]  # auto-pagination
    assert client.files.delete(f.id).deleted and server.batches.files_deleted == 1
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch-nope")


def test_create_checks_its_arguments(server, client):
    f = client.files.create(file=("in.jsonl", _jsonl([_line("a", "x")])), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")


def test_lost_create_answer_still_creates_the_batch(server, client):
    server.batches.fail_next_create()
    f = client.files.create(file=("in.jsonl", _jsonl([_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.InternalServerError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"part": "p1"})  # fmt: skip
    assert server.batches.batches_created == 1
    assert [b.metadata for b in client.batches.list()] == [{"part": "p1"}]


def test_auth_applies_to_batch_routes():
    with LLMServer(api_key="right") as server:
        c = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            c.files.create(file=("in.jsonl", b"{}"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            c.batches.retrieve("batch-1")
        c.close()
