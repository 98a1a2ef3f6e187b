"""The verbs through MockBackend: answers from a function, read and judged as HTTP answers are."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import Completion  # the public name a Backend object returns
from pandas_llm.testing import MockBackend

OPTIONS = {"cache": False, "progress": False, "model": "gpt-4o-mini"}


def last(request: dict) -> str:
    return request["messages"][-1]["content"]


def test_map_returns_what_the_handler_answers_and_records_the_requests():
    mock = MockBackend(lambda request: f"<{last(request)}>")
    out = pd.Series(["cat", "dog", "cat"]).llm.map("Say {}", client=mock, **OPTIONS)
    assert out.tolist() == ["<Say cat>", "<Say dog>", "<Say cat>"]
    assert sorted(last(r) for r in mock.requests) == ["Say cat", "Say dog"]  # the duplicate sent once
    assert mock.requests[0]["model"] == "gpt-4o-mini"


def test_extract_and_classify_read_the_handlers_json():
    def handler(request):
        schema = request["response_format"]["json_schema"]["schema"]
        if "label" in schema["properties"]:
            return json.dumps({"label": "pet" if "cat" in last(request) else "other"})
        return json.dumps({"name": last(request).split()[-1], "legs": 4})

    df = pd.DataFrame({"text": ["a cat", "a table"]})
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
              "required": ["name", "legs"], "additionalProperties": False}  # fmt: skip
    out = df.llm.extract("{text}", schema=schema, client=MockBackend(handler), **OPTIONS)
    assert out["name"].tolist() == ["cat", "table"] and out["legs"].tolist() == [4, 4]
    labels = df.llm.classify("{text}", labels=["pet", "other"], client=MockBackend(handler), **OPTIONS)
    assert labels.tolist() == ["pet", "other"]


def test_statuses_and_exceptions_act_as_over_http():
    calls = {"n": 0}

    def handler(request):
        text = last(request)
        if text == "busy":
            calls["n"] += 1
            return (429, None, {"retry-after": "0"}) if calls["n"] == 1 else "done"
        if text == "bad":
            return 400, {"error": {"message": "no such thing", "type": "invalid_request_error"}}
        if text == "raise":
            raise pandas_llm.BadRequestError("refused by the handler")
        if text == "cut":
            body = {"choices": [{"message": {"role": "assistant", "content": "hal"}, "finish_reason": "length"}]}
            return body
        return text

    s = pd.Series(["busy", "bad", "raise", "cut", "fine"])
    with pytest.warns(pandas_llm.RunWarning):
        d = s.llm.map("{}", client=MockBackend(handler), details=True, max_attempts=3, **OPTIONS)
    assert d["output"].tolist()[0] == "done" and calls["n"] == 2  # the 429 retried
    assert d["output"].tolist()[-1] == "fine" and d["output"].iloc[1:4].isna().all()
    assert "no such thing" in d["error"].iloc[1] and "refused by the handler" in d["error"].iloc[2]
    assert d["finish_reason"].iloc[3] == "length"


def test_a_401_stops_the_run_and_an_async_handler_works():
    with pytest.raises(pandas_llm.FatalAPIError, match="API key was refused"):
        pd.Series(["x"]).llm.map("{}", client=MockBackend(lambda request: 401), **OPTIONS)

    async def handler(request):
        return last(request)[::-1]

    assert pd.Series(["abc"]).llm.map("{}", client=MockBackend(handler), **OPTIONS).tolist() == ["cba"]


def test_a_wrong_return_type_says_what_a_handler_returns():
    with pytest.raises(pandas_llm.ConfigError, match="return a str, a dict"):
        pd.Series(["x"]).llm.map("{}", client=MockBackend(lambda request: 1.5), **OPTIONS)


def test_the_mock_names_its_endpoint_in_the_cache_key(tmp_path):
    cache = tmp_path / "c.sqlite"
    first = MockBackend(lambda request: "one", endpoint="mock://a")
    again = MockBackend(lambda request: "two", endpoint="mock://a")
    other = MockBackend(lambda request: "three", endpoint="mock://b")
    options = {**OPTIONS, "cache": cache}
    assert pd.Series(["q"]).llm.map("{}", client=first, **options).tolist() == ["one"]
    assert pd.Series(["q"]).llm.map("{}", client=again, **options).tolist() == ["one"] and not again.requests
    assert pd.Series(["q"]).llm.map("{}", client=other, **options).tolist() == ["three"]


def test_client_accepts_a_backend_object_and_leaves_it_open():
    class Upper:
        endpoint = "custom://upper"
        closed = False

        async def complete(self, body: bytes) -> Completion:
            return Completion(json.loads(body)["messages"][-1]["content"].upper(), "stop", 3, 1)

        async def aclose(self) -> None:
            self.closed = True

    backend = Upper()
    assert pd.Series(["ab"]).llm.map("{}", client=backend, **OPTIONS).tolist() == ["AB"]
    assert not backend.closed
    assert pandas_llm.last_run().stats.prompt_tokens == 3


def test_a_backend_object_returning_text_is_told_to_return_a_completion():
    class Plain:
        async def complete(self, body: bytes):
            return "just text"

        async def aclose(self) -> None:
            pass

    with pytest.raises(pandas_llm.ConfigError, match="returned str: a Backend returns a Completion"):
        pd.Series(["ab", "cd"]).llm.map("{}", client=Plain(), **OPTIONS)
    assert pandas_llm.last_run().stats.outcome == "failed"


def test_embeddings_through_a_mock_and_no_batch_api_behind_one():
    def handler(request):
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]}
            for i, t in enumerate(request["input"])
        ]
        return {
            "object": "list",
            "data": data,
            "model": request["model"],
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }

    vectors = pd.Series(["a", "bcd"]).llm.embed(client=MockBackend(handler), cache=False, progress=False)
    assert [list(v) for v in vectors] == [[1.0, 1.0], [3.0, 1.0]]
    mock = MockBackend(lambda request: "x")
    assert pd.Series(["a"]).llm.map("{}", client=mock, mode="auto", **OPTIONS).tolist() == ["x"]  # realtime
    with pytest.raises(pandas_llm.ConfigError, match="not a plain function client or a Backend object"):
        pd.Series(["a"]).llm.map("{}", client=mock, mode="batch", **OPTIONS)
