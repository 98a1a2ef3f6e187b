"""extract / classify / map(schema=): typed columns, validation with retries, classify's label sets."""

from __future__ import annotations

import warnings

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import BaseModel

import pandas_llm
from helpers import EXPECTED_DTYPES, Address, Everything, expected
from pandas_llm import ConfigError, PromptOrderWarning, RunWarning
from pandas_llm.testing import LLMServer
from pandas_llm.testing.structured import value_for


def frame(n: int, prefix: str = "review") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{prefix} {i}" for i in range(n)]})


def test_extract_gives_one_typed_column_per_field(server, opts):
    df = frame(12)
    out = df.llm.extract("Read this review: {text}", schema=Everything, **opts)
    assert list(out.columns) == list(EXPECTED_DTYPES)
    for name, dtype in EXPECTED_DTYPES.items():
        assert out[name].dtype == (np.dtype(object) if dtype is object else pd.api.types.pandas_dtype(dtype)), name
    assert out.index.equals(df.index)
    want = expected(Everything, [f"Read this review: {t}" for t in df["text"]])
    for i, value in enumerate(want):
        row = out.iloc[i]
        assert row["sentiment"] == value["sentiment"] and row["stars"] == value["stars"]
        assert row["summary"] == value["summary"] and row["ok"] == value["ok"] and row["tags"] == value["tags"]
        assert row["score"] == pytest.approx(value["score"]) and row["rank"] == value["rank"]
        assert (pd.isna(row["maybe"]) and value["maybe"] is None) or row["maybe"] == value["maybe"]
        assert row["address"] == value["address"]
    assert out["maybe"].isna().any() and out["maybe"].notna().any()  # both branches of Optional seen


def test_flatten_makes_nested_fields_columns(server, opts):
    out = frame(4).llm.extract("{text}", schema=Everything, flatten=True, **opts)
    assert "address" not in out.columns
    assert out["address.city"].dtype == "string" and out["address.zip"].dtype == "string"
    out2 = frame(4).llm.extract("{text}", schema=Everything, flatten="_", **opts)
    assert {"address_city", "address_zip"} <= set(out2.columns)
    assert out2["address_city"].tolist() == out["address.city"].tolist()


def test_a_json_schema_dict_works_like_a_model(server, opts):
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": 9},
            "x": {"type": ["number", "null"]},
            "flag": {"type": "boolean"},
            "kind": {"enum": ["a", "b"]},
            "yes": {"enum": [True, False]},
            "items": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["n", "x", "flag", "kind", "yes", "items"],
    }
    out = frame(8).llm.extract("{text}", schema=schema, **opts)
    assert out.dtypes.astype(str).tolist() == ["Int64", "Float64", "boolean", "category", "boolean", "object"]
    assert out["n"].between(0, 9).all()


def test_results_align_to_any_index_and_na_rows_are_skipped(server, opts):
    df = pd.DataFrame({"text": ["b", "a", None, "b"]}, index=[7, 3, 3, 0])
    out = df.llm.extract("{text}", schema=Everything, **opts)
    assert out.index.equals(df.index)
    assert out.iloc[2].isna().all()
    assert out.iloc[0]["summary"] == out.iloc[3]["summary"]  # same prompt, same (deduplicated) answer
    assert server.completed == 2


def test_details_show_status_beside_the_fields(server, opts):
    out = frame(3).llm.extract("{text}", schema=Everything, details=True, **opts)
    assert {"sentiment", "status", "error", "attempts", "output"} <= set(out.columns)
    assert (out["status"] == "ok").all()


def test_map_with_schema_returns_validated_dicts(server, opts):
    s = frame(3).llm.map("{text}", schema=Address, **opts)
    assert s.dtype == object and all(isinstance(v, dict) and "city" in v for v in s)


def test_plain_json_object_infers_columns(server, opts):
    out = frame(3).llm.extract("{text} (reply in JSON)", schema="json_object", **opts)
    assert list(out.columns) == ["answer"] and out["answer"].dtype == "string"
    assert out["answer"].iloc[0] == "echo: review 0 (reply in JSON)"


async def test_async_twins_match(server, opts):
    df = frame(5)
    a = await df.llm.aextract("{text}", schema=Everything, **opts)
    b = df.llm.extract("{text}", schema=Everything, **opts)
    pd.testing.assert_frame_equal(a, b)
    c = await df.llm.aclassify("{text}", labels=["x", "y"], **opts)
    pd.testing.assert_series_equal(c, df.llm.classify("{text}", labels=["x", "y"], **opts))


# -- validation: retry, then "invalid" -----------------------------------------------------------------------


@pytest.mark.parametrize("kind, message", [("invalid_json", "invalid JSON"), ("violate", "")])
def test_invalid_answers_are_retried_then_marked_invalid(server, opts, kind, message):
    server.structured.inject(kind, match="review 2", times=None)
    df = frame(5)
    with pytest.warns(RunWarning, match=r"1 of 5 rows have no answer: 1 invalid"):
        out = df.llm.extract("{text}", schema=Everything, **opts)
    assert out.iloc[2].isna().all() and out["summary"].notna().tolist() == [True, True, False, True, True]
    d = pandas_llm.last_run().details
    assert d.loc[2, "status"] == "invalid" and message in d.loc[2, "error"]
    assert d.loc[2, "attempts"] == 3  # the answer and two fresh requests (invalid_retries=2)
    assert server.count("review 2") == 3 and server.completed == 4 + 3
    assert d.loc[2, "prompt_tokens"] == 3 * d.loc[1, "prompt_tokens"]  # what was paid is kept


def test_one_invalid_answer_then_a_valid_one_is_a_value(server, opts):
    server.structured.inject("invalid_json", match="review 1", times=1)
    out = frame(3).llm.extract("{text}", schema=Everything, **opts)
    assert out["summary"].notna().all()
    d = pandas_llm.last_run().details
    assert d.loc[1, "status"] == "ok" and d.loc[1, "attempts"] == 2 and server.count("review 1") == 2


def test_invalid_rows_are_stored_as_invalid_and_asked_again_next_run(server, opts):
    opts = {**opts, "cache": "c.sqlite"}
    server.structured.inject("violate", match="review 0", times=3)
    with pytest.warns(RunWarning):
        frame(3).llm.extract("{text}", schema=Everything, **opts)
    server.reset_counters()
    out = frame(3).llm.extract("{text}", schema=Everything, **opts)
    assert out["summary"].notna().all()
    assert server.requests == 1 and server.count("review 0") == 1


def test_invalid_retries_zero_means_no_resend(server, opts):
    server.structured.inject("invalid_json", times=None)
    with pytest.warns(RunWarning, match="2 invalid"):
        frame(2).llm.extract("{text}", schema=Everything, invalid_retries=0, **opts)
    assert server.requests == 2


def test_a_resend_is_a_fresh_request_with_the_seed_moved_on(opts):
    """Resends vary the seed (so a seeded or sampling model can answer differently) and keep
    the schema's property order; the row's key stays the original request's."""
    seen = []

    def fn(messages, **params):
        seen.append((params.get("seed"), list(params["response_format"]["json_schema"]["schema"]["properties"])))
        return '{"zip": null, "city": "Paris"}' if len(seen) == 3 else "not json"

    out = pd.DataFrame({"t": ["x"]}).llm.extract("{t}", schema=Address, client=fn, seed=10, progress=False)
    assert out["city"].tolist() == ["Paris"]
    assert [s for s, _ in seen] == [10, 11, 12]
    assert all(order == ["city", "zip"] for _, order in seen)


def test_an_answer_that_no_longer_validates_is_not_a_silent_value(server, opts):
    """A cached answer checked against a stricter model (same JSON schema) becomes 'invalid'."""
    from pydantic import field_validator

    class Loose(BaseModel):
        city: str

    class Strict(BaseModel):
        city: str

        @field_validator("city")
        @classmethod
        def no_digits(cls, v: str) -> str:
            if any(c.isdigit() for c in v):
                raise ValueError("a city has no digits")
            return v

    Strict.__name__ = "Loose"  # same request, same key
    opts = {**opts, "cache": "c.sqlite"}
    frame(2).llm.extract("{text}", schema=Loose, **opts)
    with pytest.warns(RunWarning, match="invalid"):
        out = frame(2).llm.extract("{text}", schema=Strict, **opts)
    assert out["city"].isna().all()
    assert set(pandas_llm.last_run().details["status"]) == {"invalid"}


# -- classify ------------------------------------------------------------------------------------------------


LABELS = ["billing", "bug", "feature", "other"]


def test_classify_gives_a_categorical_of_the_labels(server, opts):
    df = frame(30, "ticket")
    out = df.llm.classify("{text}", labels=LABELS, **opts)
    assert isinstance(out.dtype, pd.CategoricalDtype) and list(out.cat.categories) == LABELS
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": LABELS}}}
    assert out.tolist() == [value_for(schema, t)["label"] for t in df["text"]]
    assert out.nunique() > 1


def test_classify_boolean(server, opts):
    out = frame(20).llm.classify("Is this abusive? {text}", labels=[True, False], **opts)
    assert out.dtype == "boolean" and set(out) == {True, False}


def test_classify_multi_gives_lists_in_label_order(server, opts):
    out = frame(20).llm.classify("{text}", labels=LABELS, multi=True, **opts)
    assert out.dtype == object
    for labels in out:
        assert isinstance(labels, list) and labels == [x for x in LABELS if x in labels]
        assert len(set(labels)) == len(labels)


def test_classify_reasons_adds_a_reason_column_written_first(opts):
    bodies = []

    def fn(messages, **params):
        bodies.append({**params, "messages": messages})
        return '{"explanation": "it mentions money", "label": "billing"}'

    out = frame(2).llm.classify("{text}", labels={"billing": "payments", "bug": "defects"}, reasons=True,
                                client=fn, progress=False)  # fmt: skip
    assert list(out.columns) == ["label", "reason"]
    assert out["reason"].dtype == "string" and out["label"].tolist() == ["billing", "billing"]
    schema = bodies[0]["response_format"]["json_schema"]
    assert list(schema["schema"]["properties"]) == ["explanation", "label"] and schema["strict"] is True
    system = bodies[0]["messages"][0]
    assert system["role"] == "system" and "billing: payments" in system["content"]
    assert bodies[0]["messages"][-1] == {"role": "user", "content": "review 0"}  # row content last


def test_a_label_outside_the_set_is_invalid_not_a_value():
    with LLMServer(answer=lambda messages, model: '{"label": "spam"}') as srv:
        opts = {"base_url": srv.base_url, "api_key": "x", "progress": False}
        with pytest.warns(RunWarning, match="2 invalid"):
            out = frame(2).llm.classify("{text}", labels=LABELS, **opts)
    assert out.isna().all()
    assert "'spam' is not one of" in pandas_llm.last_run().details["error"].iloc[0]


@pytest.mark.parametrize(
    "labels, multi",
    [
        ([], False),
        (["a", "a"], False),
        ("abc", False),
        ([True], False),
        ([True, False], True),
        (["a", 1], False),
        ([""], False),
    ],  # fmt: skip
)
def test_bad_label_sets_fail_before_any_request(server, opts, labels, multi):
    with pytest.raises(ConfigError):
        frame(2).llm.classify("{text}", labels=labels, multi=multi, **opts)
    assert server.requests == 0


def test_classify_with_a_template_function_keeps_the_instruction(opts):
    bodies = []

    def fn(messages, **params):
        bodies.append(messages)
        return '{"label": "bug"}'

    def template(row):
        return [{"role": "system", "content": "You triage tickets."}, {"role": "user", "content": row["text"]}]

    frame(1).llm.classify(template, labels=LABELS, client=fn, progress=False)
    system = bodies[0][0]["content"]
    assert system.startswith("You triage tickets.") and '"billing", "bug"' in system


# -- the cache key holds the schema --------------------------------------------------------------------------


def test_cache_reuse_across_schema_changes(server, opts):
    opts = {**opts, "cache": "c.sqlite"}
    df = frame(10)
    first = df.llm.extract("{text}", schema=Address, **opts)
    assert server.requests == 10
    assert df.llm.extract("{text}", schema=Address, **opts).equals(first) and server.requests == 10
    same = {  # the same schema written differently: other key order, titles -> the same requests
        "title": "Address",
        "required": ["city"],
        "properties": {"city": {"type": "string", "title": "City"},
                       "zip": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
        "type": "object",
    }  # fmt: skip
    assert df.llm.extract("{text}", schema=same, **opts).equals(first) and server.requests == 10

    class Address2(BaseModel):
        city: str
        zip: str | None = None
        country: str

    Address2.__name__ = "Address"
    df.llm.extract("{text}", schema=Address2, **opts)  # the schema changed: every row is a new request
    assert server.requests == 20
    df.llm.extract("{text}", schema=Address, **opts)  # back: all from the cache
    df.llm.classify("{text}", labels=["a", "b"], **opts)
    df.llm.classify("{text}", labels=["a", "b"], **opts)
    assert server.requests == 30
    df.llm.classify("{text}", labels=["a", "b", "c"], **opts)
    assert server.requests == 40


# -- json_object fallback ------------------------------------------------------------------------------------


def test_json_object_fallback_sends_the_schema_and_still_validates(server, opts):
    df = frame(6)
    a = df.llm.extract("{text}", schema=Everything, **opts)
    b = df.llm.extract("{text}", schema=Everything, structured="json_object", **opts)
    pd.testing.assert_frame_equal(a, b)  # the loopback server honours the inline schema like llama.cpp
    assert server.requests == 12
    server.structured.inject("violate", times=None)
    with pytest.warns(RunWarning, match="6 invalid"):
        frame(6, "other").llm.extract("{text}", schema=Everything, structured="json_object", **opts)


def test_json_object_request_shape(opts):
    bodies = []

    def fn(messages, **params):
        bodies.append((messages, params))
        return '```json\n{"city": "Oslo", "zip": null}\n```'  # code fences are tolerated

    out = frame(1).llm.extract("{text}", schema=Address, structured="json_object", system="Be exact.",
                               client=fn, progress=False)  # fmt: skip
    assert out["city"].tolist() == ["Oslo"]
    messages, params = bodies[0]
    assert params["response_format"]["type"] == "json_object"
    assert list(params["response_format"]["schema"]["properties"]) == ["city", "zip"]
    assert messages[0]["content"].startswith("Be exact.\n\nReply with a single JSON object")
    assert '"city"' in messages[0]["content"] and messages[1]["content"] == "review 0"


def test_structured_setting_is_validated():
    with pytest.raises(ConfigError, match="json_schema"):
        pandas_llm.Settings(structured="xml")
    with pytest.raises(ConfigError, match="rows_per_request"):
        pandas_llm.Settings(rows_per_request=0)
    with pytest.raises(ConfigError, match="invalid_retries"):
        pandas_llm.Settings(invalid_retries=-1)


def test_bad_schemas_fail_before_any_request(server, opts):
    for schema in (str, {"type": "string"}, {"type": "object", "properties": {"a": {"not": {}}}}, 42):
        with pytest.raises(ConfigError):
            frame(1).llm.extract("{text}", schema=schema, **opts)
    with pytest.raises(ConfigError, match="schema="):
        frame(1).llm.extract("{text}", schema=None, **opts)
    with pytest.raises(ConfigError, match="not both"):
        frame(1).llm.extract("{text}", schema=Address, response_format={"type": "json_object"}, **opts)
    assert server.requests == 0


# -- prompt layout -------------------------------------------------------------------------------------------


def test_warns_when_a_column_comes_before_a_long_instruction(server, opts):
    long = "Follow these rules carefully. " * 40
    with pytest.warns(PromptOrderWarning, match="fixed text after"):
        frame(1).llm.map("{text}\n\n" + long, **opts)
    frame(1).llm.map(long + "\n\n{text}", **opts)  # instructions first: no warning (warnings are errors)


def test_response_format_keeps_property_order_in_the_request():
    from pandas_llm._config import Settings
    from pandas_llm._plan.requests import RequestBuilder

    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"why": {"type": "string"}, "answer": {"type": "string"}}}}}  # fmt: skip
    _, body = RequestBuilder(Settings(base_url="http://x/v1", params={"response_format": rf})).encode([])
    assert list(orjson.loads(body)["response_format"]["json_schema"]["schema"]["properties"]) == ["why", "answer"]


@pytest.mark.parametrize("verb", ["map", "extract", "classify"])
def test_warnings_point_at_the_callers_line(server, opts, verb):
    """So that a notebook shows them for every cell, not once per session."""
    server.structured.inject("invalid_json", times=None)
    server.inject(400, times=1)
    kw = {"map": {}, "extract": {"schema": Everything}, "classify": {"labels": ["a", "b"]}}[verb]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(frame(2).llm, verb)("{text}", **kw, **opts)
        getattr(frame(1).llm, verb)("{text}" + "x" * 2000, **kw, **opts)
    assert {w.category for w in caught} == {RunWarning, PromptOrderWarning}
    assert {w.filename for w in caught} == {__file__}


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_each_answer_is_parsed_once(server, opts, monkeypatch, mode):
    """The engine's (or the batch collector's) check keeps the value it parsed: the result does
    not parse the answer again. Answers from the cache are parsed once, when assembled."""
    from pandas_llm._structured.parse import Parser

    calls = []
    parse = Parser.parse
    monkeypatch.setattr(Parser, "parse", lambda self, text: calls.append(text) or parse(self, text))
    df = frame(30)
    kw = dict(poll_interval=0.005) if mode == "batch" else {}
    out = df.llm.extract("{text}", schema=Everything, mode=mode, cache="c.sqlite", **kw, **opts)
    assert out["stars"].notna().all()
    assert len(calls) == 30  # one parse per answer (was two: the check, then the result)
    calls.clear()
    again = df.llm.extract("{text}", schema=Everything, mode=mode, cache="c.sqlite", **kw, **opts)
    pd.testing.assert_frame_equal(again, out)
    assert len(calls) == 30  # from the cache: parsed when the result is assembled, once
