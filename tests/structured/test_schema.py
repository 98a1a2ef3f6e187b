"""Schema canonical form, strict mode, the validator, and field -> dtype mapping (no server)."""

from __future__ import annotations

from typing import Literal

import orjson
import pandas as pd
import pytest
from pydantic import BaseModel, Field

from pandas_llm import ConfigError
from pandas_llm._structured.columns import columns_for, dtype_for
from pandas_llm._structured.parse import Parser, strip_fences, validate
from pandas_llm._structured.schema import as_schema


class Opt(BaseModel):
    a: int
    b: str | None = None


class WithDefault(BaseModel):
    a: int
    b: int = 5


def rf_of(schema, mode="json_schema") -> dict:
    return orjson.loads(orjson.dumps(as_schema(schema).response_format(mode)))


def test_pydantic_optional_fields_become_required_nullable_in_strict_mode():
    s = as_schema(Opt)
    assert s.strict and s.sent["required"] == ["a", "b"] and s.sent["additionalProperties"] is False
    assert "default" not in s.sent["properties"]["b"]
    assert s.schema["required"] == ["a"]  # validation keeps the model's own meaning
    rf = rf_of(Opt)
    assert rf["json_schema"] == {"name": "Opt", "schema": s.sent, "strict": True}


def test_schemas_that_strict_mode_would_change_are_sent_non_strict():
    assert not as_schema(WithDefault).strict  # b=5 is not "nullable, default null"
    assert not as_schema(
        {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}
    ).strict
    assert not as_schema({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}).strict
    assert not as_schema({"type": "object", "properties": {"a": {"type": "string"}}}).strict  # a optional, not nullable
    dated = {"type": "object", "properties": {"a": {"type": "string", "format": "date"}}, "required": ["a"]}
    assert as_schema(dated).strict
    assert not as_schema({**dated, "properties": {"a": {"type": "string", "format": "uri"}}}).strict


def test_canonical_form_drops_titles_sorts_keywords_keeps_property_order():
    a = {"type": "object", "title": "T", "properties": {"z": {"type": "string", "title": "Z"},
                                                          "a": {"title": "A", "type": "integer"}}}  # fmt: skip
    b = {"properties": {"z": {"type": "string"}, "a": {"type": "integer"}}, "type": "object"}
    assert orjson.dumps(as_schema(a).response_format("json_schema")) != orjson.dumps(
        as_schema(b).response_format("json_schema")
    )  # name differs
    assert as_schema(a).sent == as_schema(b).sent and list(as_schema(a).sent["properties"]) == ["z", "a"]
    titled = {"type": "object", "properties": {"title": {"type": "string", "title": "Title"}}}
    assert as_schema(titled).sent["properties"] == {"title": {"type": "string"}}  # a field named title stays


def test_response_format_wrappers_are_accepted():
    inner = {"type": "object", "properties": {"a": {"type": "string"}}}
    for given in (
        inner,
        {"name": "thing", "schema": inner},
        {"type": "json_schema", "json_schema": {"name": "thing", "schema": inner}},
    ):
        assert as_schema(given).properties == {"a": {"type": "string"}}
    assert as_schema({"name": "thing", "schema": inner}).name == "thing"


@pytest.mark.parametrize("bad", [{"type": "object", "properties": {"a": {"if": {}}}},
                                 {"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}},
                                 {"type": "object", "properties": {}}, {"type": "array"}, "json", 3])  # fmt: skip
def test_bad_schemas_are_refused(bad):
    with pytest.raises(ConfigError):
        as_schema(bad)


@pytest.mark.parametrize(
    "schema, good, bad",
    [
        ({"type": "integer"}, [1, 2.0], [1.5, True, "1", None]),
        ({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, [0, 0.5], [1, -0.1, float("nan")]),
        ({"type": ["string", "null"], "maxLength": 2}, ["ab", None], ["abc", 1]),
        ({"enum": [1, "a", None]}, [1, "a", None], [True, 2, "b"]),
        ({"const": False}, [False], [0, True]),
        ({"type": "string", "pattern": "^[a-z]+$", "minLength": 2}, ["ab"], ["a", "AB"]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2, "uniqueItems": True},
         [[1], [1, 2]], [[], [1, 2, 3], [1, 1], ["x"]]),
        ({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, [1, True], ["x"]),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, [1.5], [1]),
        ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, [3], [2]),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}, [{"a": 1}], [{}, {"a": 1, "b": 2}, {"a": "1"}]),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, [{"x": 1}], [{"x": "y"}]),
        ({"type": "number", "multipleOf": 0.5}, [1.5], [1.2]),
    ],
)  # fmt: skip
def test_validator(schema, good, bad):
    for v in good:
        assert validate(v, schema, schema, "") is None, v
    for v in bad:
        assert validate(v, schema, schema, "") is not None, v


def test_parser_reports_errors_as_data():
    p = Parser(as_schema(Opt))
    assert p.parse('{"a": 1}') == ({"a": 1, "b": None}, None)
    assert p.parse(None)[1] == "the answer was empty"
    assert p.parse("{")[1].startswith("invalid JSON")
    assert "a:" in p.parse('{"a": "x"}')[1]
    d = Parser(as_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}))
    assert d.parse("[1]")[1].startswith("expected a JSON object")
    assert d.parse('{"b": 1}')[1] == "(root): missing required field 'a'"
    assert strip_fences('```json\n{"a": 1}\n```') == '{"a": 1}' and strip_fences("```") == "```"


def test_dtype_mapping():
    class M(BaseModel):
        i: int
        f: float
        b: bool
        s: str
        lit: Literal["x", "y"]
        lit_b: Literal[True]
        oi: int | None = None
        lst: list[int]
        d: dict[str, int]
        u: int | str
        n: int = Field(ge=0)

    s = as_schema(M)
    got = {c.name: c.dtype for c in columns_for(s)}
    assert got == {"i": "Int64", "f": "Float64", "b": "boolean", "s": "string",
                   "lit": pd.CategoricalDtype(["x", "y"]), "lit_b": "boolean", "oi": "Int64", "lst": object,
                   "d": object, "u": object, "n": "Int64"}  # fmt: skip
    assert dtype_for({"type": ["integer", "null"]}, {}) == "Int64"
    assert dtype_for({"enum": [1, 2, None]}, {}) == pd.CategoricalDtype([1, 2])


def test_a_validator_that_raises_anything_is_an_error_not_a_crash():
    from pydantic import field_validator

    class Touchy(BaseModel):
        a: int

        @field_validator("a")
        @classmethod
        def boom(cls, v):
            raise RuntimeError("validator bug")

    assert Parser(as_schema(Touchy)).parse('{"a": 1}') == (
        None,
        "the model's validation raised RuntimeError: validator bug",
    )
