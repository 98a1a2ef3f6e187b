"""The loopback server's structured answers: schema-valid JSON, packed items, strict checks, faults."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from pandas_llm._structured.parse import validate
from pandas_llm.testing import LLMServer
from pandas_llm.testing.structured import value_for

ROW = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["a", "b", "c"]},
        "n": {"type": "integer", "minimum": 10, "maximum": 12},
        "x": {"type": "number"},
        "ok": {"type": "boolean"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
    },
    "required": ["label", "n", "x", "ok", "note", "tags"],
    "additionalProperties": False,
    "$defs": {"Tag": {"type": "string", "enum": ["t1", "t2"]}},
}


def schema_rf(schema: dict, strict: bool = True, name: str = "row") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def envelope(row: dict) -> dict:
    item = {**{k: v for k, v in row.items() if k != "$defs"}}
    item["properties"] = {"id": {"type": "integer"}, **row["properties"]}
    item["required"] = ["id", *row["required"]]
    return {"type": "object", "properties": {"items": {"type": "array", "items": item}}, "required": ["items"],
            "additionalProperties": False, "$defs": row.get("$defs", {})}  # fmt: skip


def ask(client: openai.OpenAI, content: str, rf: dict, system: str | None = None) -> str:
    messages: list[Any] = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, response_format=rf)
    return r.choices[0].message.content


def test_json_schema_answers_are_valid_and_deterministic_per_prompt(client):
    answers = [orjson.loads(ask(client, f"row {i}", schema_rf(ROW))) for i in range(30)]
    for i, a in enumerate(answers):
        assert validate(a, ROW, ROW, "") is None
        assert a == value_for(ROW, f"row {i}") == orjson.loads(ask(client, f"row {i}", schema_rf(ROW)))
    assert len({a["label"] for a in answers}) == 3  # enum picks spread over the prompts
    assert {a["note"] is None for a in answers} == {True, False}


def test_json_object_with_a_schema_field_is_answered_like_json_schema(client):
    a = ask(client, "row 1", {"type": "json_object", "schema": ROW}, system="Reply in JSON.")
    assert orjson.loads(a) == value_for(ROW, "row 1")
    plain = ask(client, "row 1", {"type": "json_object"}, system="Reply in JSON.")
    assert orjson.loads(plain) == {"answer": "echo: row 1"}


def test_packed_requests_are_answered_item_by_item(client, server):
    texts = ["first row", "second\nrow, two lines", "third"]
    user = "\n\n".join(f'<item id="{i}">\n{t}\n</item>' for i, t in enumerate(texts, 1))
    out = orjson.loads(ask(client, user, schema_rf(envelope(ROW), name="row_items")))
    assert [item.pop("id") for item in out["items"]] == [1, 2, 3]
    assert out["items"] == [value_for(ROW, t) for t in texts]
    assert server.structured.packed_requests == 1 and server.structured.item_counts == {t: 1 for t in texts}


def test_packed_items_are_read_as_a_model_reads_the_framing(client, server):
    # an item ends at the first closing tag (any case, any spacing) or the next opening one:
    # a text that holds the framing's tags splits and shifts the items, as it would for a model
    user = '<item id="1">\nfine</ITEM > then\n</item>\n\n<item id="2">\nb <item id="3">\nc\n</item>'
    items = orjson.loads(ask(client, user, schema_rf(envelope(ROW), name="row_items")))["items"]
    assert [item.pop("id") for item in items] == [1, 2, 3]
    assert items == [value_for(ROW, t) for t in ("fine", "b ", "c")]
    # with the tags the system message names, the default ones are text like any other
    system = 'Items, each between <item-abc123 id="N"> and </item-abc123>. Reply in JSON.'
    texts = ["fine</item> then\n</item>", 'b <item id="3">\nc']
    user = "\n\n".join(f'<item-abc123 id="{i}">\n{t}\n</item-abc123>' for i, t in enumerate(texts, 1))
    items = orjson.loads(ask(client, user, schema_rf(envelope(ROW), name="row_items"), system=system))["items"]
    assert [item.pop("id") for item in items] == [1, 2]
    assert items == [value_for(ROW, t) for t in texts]


def test_item_faults(client, server):
    texts = [f"item {i}" for i in range(6)]
    user = "\n\n".join(f'<item id="{i}">\n{t}\n</item>' for i, t in enumerate(texts, 1))
    for kind, i in (("drop", 0), ("duplicate", 1), ("corrupt", 2), ("bad_id", 3)):
        server.structured.inject(kind, match=f"item {i}")
    items = orjson.loads(ask(client, user, schema_rf(envelope(ROW), name="row_items")))["items"]
    assert [item["id"] for item in items] == [2, 2, 3, 1004, 5, 6]
    assert "label" not in items[2]  # corrupt: a required field missing
    again = orjson.loads(ask(client, user, schema_rf(envelope(ROW), name="row_items")))["items"]
    assert [item["id"] for item in again] == [1, 2, 3, 4, 5, 6]  # times=1: consumed


def test_whole_answer_faults_and_times(client, server):
    server.structured.inject("invalid_json", match="bad", times=2)
    server.structured.inject("violate", match="wrong", times=None)
    for _ in range(2):
        with pytest.raises(ValueError):
            orjson.loads(ask(client, "bad row", schema_rf(ROW)))
    assert orjson.loads(ask(client, "bad row", schema_rf(ROW))) == value_for(ROW, "bad row")
    for _ in range(3):
        assert validate(orjson.loads(ask(client, "wrong row", schema_rf(ROW))), ROW, ROW, "") is not None
    with pytest.raises(ValueError):
        server.structured.inject("explode")


def test_strict_schemas_are_checked_like_the_real_api(client):
    open_object = {**ROW, "additionalProperties": True}
    with pytest.raises(openai.BadRequestError, match="additionalProperties"):
        ask(client, "x", schema_rf(open_object))
    optional = {**ROW, "required": ["label"]}
    with pytest.raises(openai.BadRequestError, match="Missing 'n'"):
        ask(client, "x", schema_rf(optional))
    assert ask(client, "x", schema_rf(optional, strict=False))  # non-strict: accepted
    with pytest.raises(openai.BadRequestError, match="name"):
        ask(client, "x", schema_rf(ROW, name="has spaces"))
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
        ask(client, "x", {"type": "json_object"})


def test_a_custom_answer_function_wins():
    with LLMServer(answer=lambda messages, model: "not json at all") as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        try:
            assert ask(c, "x", schema_rf(ROW)) == "not json at all"
        finally:
            c.close()


def test_the_schema_counts_as_prompt_tokens(client, server):
    r1 = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    r2 = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                        response_format=schema_rf(ROW))  # fmt: skip
    assert r2.usage.prompt_tokens > r1.usage.prompt_tokens + 50
