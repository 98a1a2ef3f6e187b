"""Parse: an answer's text -> a validated value, or the reason it is not one.

A parse failure is data, not a crash: :meth:`Parser.parse` returns ``(value, None)``
or ``(None, error)``. The engine checks every answer before it is stored (an invalid
answer is asked again, then stored as ``invalid`` with this error): :meth:`Parser.error`,
or the verbs' twin that keeps the parsed value, so the result stage parses again only the
answers read from the cache.

Pydantic models are validated by pydantic (their validators run). JSON schema dicts
are validated here, for the keywords schema.py lets through (anything else is refused
when the schema is built, never silently unchecked).

    >>> from pandas_llm._structured.schema import as_schema
    >>> p = Parser(as_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
    ...                       "required": ["n"]}))
    >>> p.parse('{"n": 3}')
    ({'n': 3}, None)
    >>> p.parse('{"n": 0}')[1]
    'n: 0 is less than the minimum 1'
    >>> p.parse('{"n": 3')[1][:13]
    'invalid JSON:'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from .schema import Schema, resolve

__all__ = ["Parser", "validate", "strip_fences"]

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def strip_fences(text: str) -> str:
    """Drop one Markdown code fence around the whole answer (small models add them)."""
    m = _FENCE.match(text)
    return m.group(1) if m else text


class Parser:
    """Turns answer texts into values for one schema."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self._model = schema.model
        self._root = schema.schema

    def parse(self, text: str | None) -> tuple[Any, str | None]:
        """``(value, None)`` for a valid answer, ``(None, error)`` otherwise."""
        if text is None:
            return None, "the answer was empty"
        text = strip_fences(text)
        if self._model is not None:
            return self._parse_model(text)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return None, f"invalid JSON: {exc}: {_clip(text)}"
        if not isinstance(value, dict):
            return None, f"expected a JSON object, got {_json_type(value)}: {_clip(text)}"
        if self._root is not None:
            error = validate(value, self._root, self._root, "")
            if error is not None:
                return None, error
        return value, None

    def error(self, text: str | None) -> str | None:
        """The validation error of an answer, or None if it is valid (the engine's hook)."""
        return self.parse(text)[1]

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Validate an already-decoded value (one item of a packed answer)."""
        if self._model is not None:
            return self._parse_model(orjson.dumps(value))
        if not isinstance(value, dict):
            return None, f"expected a JSON object, got {_json_type(value)}"
        if self._root is not None:
            error = validate(value, self._root, self._root, "")
            if error is not None:
                return None, error
        return value, None

    def _parse_model(self, text: str | bytes) -> tuple[Any, str | None]:
        from pydantic import ValidationError

        try:
            obj = self._model.model_validate_json(text)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if errors and errors[0].get("type") == "json_invalid":
                return None, f"invalid JSON: {errors[0].get('msg')}: {_clip(text)}"
            parts = [f"{'.'.join(map(str, e.get('loc', ()))) or '(root)'}: {e.get('msg')}" for e in errors[:3]]
            more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
            return None, "; ".join(parts) + more
        except Exception as exc:  # a model's own validator may raise anything: still data, not a crash
            return None, f"the model's validation raised {type(exc).__name__}: {exc}"
        return obj.model_dump(mode="json", by_alias=True), None


def validate(value: Any, node: Any, root: Mapping[str, Any], path: str) -> str | None:
    """The first way ``value`` breaks JSON schema ``node`` (a path and a reason), or None."""
    if node is True or node == {}:
        return None
    if node is False:
        return f"{path or '(root)'}: no value is allowed here"
    where = path or "(root)"
    if "$ref" in node:
        error = validate(value, resolve({"$ref": node["$ref"]}, root), root, path)
        if error is not None:
            return error
    t = node.get("type")
    if t is not None:
        types = [t] if isinstance(t, str) else list(t)
        if not any(_is(value, x) for x in types):
            return f"{where}: expected {' or '.join(types)}, got {_json_type(value)} {_show(value)}"
    if "enum" in node and not any(_same(value, e) for e in node["enum"]):
        return f"{where}: {_show(value)} is not one of {node['enum']}"
    if "const" in node and not _same(value, node["const"]):
        return f"{where}: {_show(value)} is not {node['const']!r}"
    if "anyOf" in node:
        found = [validate(value, sub, root, path) for sub in node["anyOf"]]
        errors = [e for e in found if e is not None]
        if len(errors) == len(found):
            return f"{where}: matches none of the allowed forms ({'; '.join(errors)})"
    if "oneOf" in node:
        n = sum(validate(value, sub, root, path) is None for sub in node["oneOf"])
        if n != 1:
            return f"{where}: must match exactly one of the allowed forms, matches {n}"
    for sub in node.get("allOf", ()):
        error = validate(value, sub, root, path)
        if error is not None:
            return error
    if isinstance(value, dict):
        return _validate_object(value, node, root, path)
    if isinstance(value, list):
        return _validate_array(value, node, root, path)
    if isinstance(value, str):
        return _validate_string(value, node, where)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _validate_number(value, node, where)
    return None


def _validate_object(value: dict, node: Mapping[str, Any], root: Mapping[str, Any], path: str) -> str | None:
    props = node.get("properties", {})
    for name in node.get("required", ()):
        if name not in value:
            return f"{path or '(root)'}: missing required field {name!r}"
    extra = node.get("additionalProperties", True)
    for name, item in value.items():
        sub = f"{path}.{name}" if path else str(name)
        if name in props:
            error = validate(item, props[name], root, sub)
        elif extra is False:
            error = f"{sub}: unexpected field (allowed: {', '.join(props)})"
        elif isinstance(extra, dict):
            error = validate(item, extra, root, sub)
        else:
            error = None
        if error is not None:
            return error
    return None


def _validate_array(value: list, node: Mapping[str, Any], root: Mapping[str, Any], path: str) -> str | None:
    where = path or "(root)"
    if "minItems" in node and len(value) < node["minItems"]:
        return f"{where}: {len(value)} items, fewer than {node['minItems']}"
    if "maxItems" in node and len(value) > node["maxItems"]:
        return f"{where}: {len(value)} items, more than {node['maxItems']}"
    if node.get("uniqueItems"):
        seen = [orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in value]
        if len(set(seen)) != len(seen):
            return f"{where}: items are not unique"
    items = node.get("items")
    if items is not None:
        for i, item in enumerate(value):
            error = validate(item, items, root, f"{path}[{i}]")
            if error is not None:
                return error
    return None


def _validate_string(value: str, node: Mapping[str, Any], where: str) -> str | None:
    if "minLength" in node and len(value) < node["minLength"]:
        return f"{where}: shorter than {node['minLength']} characters"
    if "maxLength" in node and len(value) > node["maxLength"]:
        return f"{where}: longer than {node['maxLength']} characters"
    if "pattern" in node and re.search(node["pattern"], value) is None:
        return f"{where}: {_show(value)} does not match the pattern {node['pattern']!r}"
    return None


def _validate_number(value: float, node: Mapping[str, Any], where: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}: {value} is not a finite number"
    checks = (
        ("minimum", lambda b: value < b, "less than the minimum"),
        ("maximum", lambda b: value > b, "greater than the maximum"),
        ("exclusiveMinimum", lambda b: value <= b, "not greater than"),
        ("exclusiveMaximum", lambda b: value >= b, "not less than"),
    )
    for key, broken, words in checks:
        bound = node.get(key)
        if isinstance(bound, (int, float)) and not isinstance(bound, bool) and broken(bound):
            return f"{where}: {value} is {words} {bound}"
    step = node.get("multipleOf")
    if step and abs(value / step - round(value / step)) > 1e-9:
        return f"{where}: {value} is not a multiple of {step}"
    return None


def _is(value: Any, json_type: str) -> bool:
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if json_type == "boolean":
        return isinstance(value, bool)
    if json_type == "null":
        return value is None
    if json_type == "object":
        return isinstance(value, dict)
    if json_type == "array":
        return isinstance(value, list)
    return False


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(value, name) and not (name == "integer" and isinstance(value, float)):
            return name
    return type(value).__name__


def _show(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _clip(text: Any, n: int = 80) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    return repr(text) if len(text) <= n else repr(text[: n - 3] + "...")
