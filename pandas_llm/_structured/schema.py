"""Schemas: what shape an answer must have, and the ``response_format`` that asks for it.

A schema is a pydantic model, a JSON schema dict, or ``"json_object"`` (any JSON
object). :func:`as_schema` turns it into a :class:`Schema`: a canonical JSON schema
(so it is part of the cache key, see requests.py), the request's ``response_format``
body field, and the instruction that goes with it:

- ``structured="json_schema"`` (default): the standard structured-output request,
  ``strict`` when the schema allows it (every object closed, every property required
  or nullable, only keywords strict mode supports), otherwise non-strict. Either way
  every answer is validated (parse.py).
- ``structured="json_object"``: for servers with JSON mode only (llama.cpp, some vLLM
  set-ups). The schema goes into the instruction and into the non-standard ``schema``
  field of ``response_format`` (which llama.cpp enforces and others ignore).

Canonical means: keywords sorted and ``title`` annotations dropped (renaming a class or
a title does not re-pay), but ``properties`` kept in their declared order, because the
model writes fields in schema order (a ``reasoning`` field declared before ``answer``
must stay first). That is why ``response_format`` is passed as a pre-serialised
``orjson.Fragment``: the request body's key sorting must not reorder it.

    >>> s = as_schema({"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
    ...                "required": ["b", "a"]})
    >>> s.strict, list(s.properties)
    (True, ['b', 'a'])
    >>> rf = orjson.loads(orjson.dumps(s.response_format("json_schema")))
    >>> rf["json_schema"]["strict"], rf["json_schema"]["schema"]["additionalProperties"]
    (True, False)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .._config import Structured
from .._errors import ConfigError

__all__ = ["Schema", "as_schema", "STRUCTURED_MODES", "response_format_fragment", "resolve"]

STRUCTURED_MODES = ("json_schema", "json_object")

#: Keywords the validator (parse.py) checks.
VALIDATED = frozenset(
    "type enum const properties required additionalProperties items anyOf oneOf allOf $ref "
    "minimum maximum exclusiveMinimum exclusiveMaximum multipleOf minLength maxLength pattern "
    "minItems maxItems uniqueItems".split()
)
#: Annotations: carried to the model, never checked.
ANNOTATIONS = frozenset(
    "title description default examples format $comment deprecated readOnly writeOnly $defs definitions "
    "$schema $id contentEncoding contentMediaType".split()
)
#: Validation keywords we cannot check: refused up front rather than silently ignored.
UNSUPPORTED = frozenset(
    "not if then else patternProperties propertyNames dependentRequired dependentSchemas prefixItems "
    "contains minContains maxContains unevaluatedProperties unevaluatedItems minProperties maxProperties "
    "$dynamicRef $recursiveRef".split()
)
#: Keywords OpenAI's strict mode does not accept (the request is then sent non-strict).
NOT_STRICT = frozenset("oneOf allOf minLength maxLength uniqueItems default examples".split())

#: String formats strict mode accepts.
STRICT_FORMATS = frozenset("date-time time date duration email hostname ipv4 ipv6 uuid".split())

_NAME_RE = re.compile(r"[^a-zA-Z0-9_-]")
_SCHEMA_VALUED = ("items", "additionalProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")


@dataclass(frozen=True, eq=False)
class Schema:
    """A checked, canonical schema for one kind of answer (see the module docstring)."""

    name: str
    schema: dict[str, Any] | None  # canonical, as validated; None for plain json_object
    sent: dict[str, Any] | None  # what the request carries (strict form when possible)
    strict: bool
    model: Any = None  # the pydantic model, if one was given

    @property
    def properties(self) -> dict[str, Any]:
        return (self.schema or {}).get("properties", {})

    def response_format(self, structured: Structured) -> orjson.Fragment:
        """The ``response_format`` body field for ``structured=`` ("json_schema" | "json_object")."""
        if self.sent is None:
            return response_format_fragment({"type": "json_object"})
        if structured == "json_object":
            return response_format_fragment({"type": "json_object", "schema": self.sent})
        spec = {"name": self.name, "schema": self.sent, "strict": self.strict}
        return response_format_fragment({"type": "json_schema", "json_schema": spec})

    def instruction(self, structured: Structured) -> str | None:
        """Text for the system message: none with json_schema (the API enforces the
        schema), the schema itself with json_object (the model must be told)."""
        if structured == "json_schema" and self.sent is not None:
            return None
        if self.sent is None:
            return "Reply with a single JSON object and nothing else."
        return (
            "Reply with a single JSON object and nothing else (no prose, no code fences) that "
            "matches this JSON schema:\n" + orjson.dumps(self.sent).decode()
        )


def response_format_fragment(response_format: Mapping[str, Any]) -> orjson.Fragment:
    """``response_format`` serialised once, with schema properties in declared order."""
    return orjson.Fragment(orjson.dumps(_canonical_rf(response_format)))


def _canonical_rf(rf: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: rf[k] for k in sorted(rf)}
    if isinstance(out.get("schema"), dict):
        out["schema"] = canonical(out["schema"])
    spec = out.get("json_schema")
    if isinstance(spec, dict):
        spec = {k: spec[k] for k in sorted(spec)}
        if isinstance(spec.get("schema"), dict):
            spec["schema"] = canonical(spec["schema"])
        out["json_schema"] = spec
    # the order the API documents, then the rest sorted: stable either way
    order = [k for k in ("type", "json_schema", "schema") if k in out]
    return {k: out[k] for k in order + [k for k in out if k not in order]}


def as_schema(schema: Any) -> Schema:
    """A pydantic model, a JSON schema dict (or a whole ``response_format`` /
    ``json_schema`` object) or ``"json_object"`` -> :class:`Schema`. Raises ConfigError."""
    if isinstance(schema, Schema):
        return schema
    if schema == "json_object":
        return Schema("result", None, None, False)
    model = None
    name = None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        model = schema
        name = schema.__name__
        raw = schema.model_json_schema()
    elif isinstance(schema, Mapping):
        raw = dict(schema)
        if raw.get("type") == "json_schema" and isinstance(raw.get("json_schema"), Mapping):
            raw = dict(raw["json_schema"])
        if "schema" in raw and isinstance(raw["schema"], Mapping) and "properties" not in raw:
            name = raw.get("name")
            raw = dict(raw["schema"])
        name = name or raw.get("title")
    else:
        raise ConfigError(
            f"schema= must be a pydantic model class, a JSON schema dict, or 'json_object'; got {type(schema).__name__}"
        )
    raw = copy.deepcopy(raw)
    _check_keywords(raw, raw, "schema")
    if _type_of(raw) != "object" or not isinstance(raw.get("properties"), Mapping) or not raw["properties"]:
        raise ConfigError(
            "the schema's top level must be an object with properties (one column per property), "
            f"e.g. {{'type': 'object', 'properties': {{'label': {{'type': 'string'}}}}}}; got {_short(raw)}"
        )
    canon = canonical(raw)
    strict_form = _strict_form(canon)
    name = _NAME_RE.sub("_", str(name or "result"))[:64] or "result"
    return Schema(name, canon, strict_form or canon, strict_form is not None, model)


def canonical(node: Any) -> Any:
    """Sorted keywords, no ``title`` annotations, ``properties`` in declared order."""
    if isinstance(node, list):
        return [canonical(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key in sorted(node):
        value = node[key]
        if key == "title" and isinstance(value, str):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: canonical(sub) for name, sub in value.items()}
        elif key in ("$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: canonical(value[name]) for name in sorted(value)}
        elif key in ("enum", "const", "default", "examples", "required"):
            out[key] = value  # data, not schema: keep as given
        else:
            out[key] = canonical(value)
    return out


def resolve(node: Any, root: Mapping[str, Any]) -> Any:
    """Follow a local ``$ref`` (``#/$defs/X`` or ``#/definitions/X``)."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        target: Any = root
        for part in ref[2:].split("/") if ref.startswith("#/") else ["\0"]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ConfigError(f"the schema has a $ref that does not resolve: {ref!r} (only local refs)")
            target = target[part]
        node = target
        seen += 1
        if seen > 50:
            raise ConfigError(f"the schema's $ref {ref!r} loops")
    return node


def nullable(node: Any, root: Mapping[str, Any]) -> bool:
    """Whether ``null`` is a valid value for ``node``."""
    node = resolve(node, root)
    if not isinstance(node, dict) or node == {}:
        return True
    t = node.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    if "enum" in node and None in node["enum"]:
        return True
    return any(nullable(sub, root) for sub in node.get("anyOf", ()))


def _type_of(node: Mapping[str, Any]) -> str | None:
    t = node.get("type")
    if t is None and "properties" in node:
        return "object"
    return t if isinstance(t, str) else None


def _check_keywords(node: Any, root: Mapping[str, Any], path: str) -> None:
    """Refuse what the validator could not check, before anything is sent."""
    if isinstance(node, bool):
        return
    if not isinstance(node, Mapping):
        raise ConfigError(f"{path} must be a JSON schema object, got {_short(node)}")
    for key, value in node.items():
        if key in UNSUPPORTED:
            raise ConfigError(
                f"{path} uses the JSON schema keyword {key!r}, which pandas-llm cannot validate; "
                "remove it or express the rule with a pydantic model"
            )
        if key == "$ref":
            resolve(node, root)
        elif key in _SCHEMA_VALUED and isinstance(value, (Mapping, bool)):
            _check_keywords(value, root, f"{path}.{key}")
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{path}.{key} must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                _check_keywords(sub, root, f"{path}.{key}[{i}]")
        elif key in _SCHEMA_MAPS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}.{key} must map names to schemas")
            for name, sub in value.items():
                _check_keywords(sub, root, f"{path}.{key}.{name}")
        elif key == "enum" and (not isinstance(value, list) or not value):
            raise ConfigError(f"{path}.enum must be a non-empty list")
        elif key == "required" and (not isinstance(value, list) or not all(isinstance(r, str) for r in value)):
            raise ConfigError(f"{path}.required must be a list of property names")


def _strict_form(canon: dict[str, Any]) -> dict[str, Any] | None:
    """The schema as OpenAI's strict mode wants it, or None if that would change its meaning.

    Objects get ``additionalProperties: false``; an optional property may become
    required only if it is nullable with no default but null (the model then writes
    null instead of leaving it out, which validates the same).
    """
    out = copy.deepcopy(canon)
    return canonical(out) if _strictify(out, out) else None


def _strictify(node: Any, root: dict[str, Any]) -> bool:
    if not isinstance(node, dict):
        return False  # boolean schemas are not strict-mode material
    if any(k in NOT_STRICT for k in node):
        return False
    if "format" in node and node["format"] not in STRICT_FORMATS:
        return False
    if _type_of(node) == "object" or "properties" in node:
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            return False
        if node.get("additionalProperties", False) is not False:
            return False
        required = set(node.get("required", ()))
        for name, sub in props.items():
            if name not in required:
                if not isinstance(sub, dict) or not nullable(sub, root) or sub.get("default", None) is not None:
                    return False
                sub.pop("default", None)
        node["additionalProperties"] = False
        node["required"] = list(props)
        node["type"] = "object"
    children: list[Any] = []
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            children.extend(node[key].values())
    if isinstance(node.get("items"), (dict, bool)):
        children.append(node["items"])
    for key in _SCHEMA_LISTS:
        children.extend(node.get(key, ()))
    return all(_strictify(child, root) for child in children)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
