"""Structured answers for the loopback server: JSON for the request's schema, and faults.

A request with ``response_format`` ``json_schema`` (or ``json_object`` with the
non-standard ``schema`` field, as llama.cpp takes it) gets valid JSON for its schema,
deterministic per prompt: :func:`value_for` computes it, so a test can predict every
row's value. An enum's pick, an ``anyOf``'s branch, a number, a string are all derived
from a hash of the prompt (the last user message) and the field's path.

A *packed* request (the user message holds ``<item id="N">...</item>`` blocks and the
schema is ``{"items": [{id, ...}]}``, see ``pandas_llm._structured.packing``) is answered item by
item, each item exactly as if it had been sent alone with that item's text as prompt
(inside the pack's leading ``<template>`` block in place of ``<item/>``, when it has one).
The items are read as a model reads them: with the tag names the system message gives
(``each between <item-e33 id="N"> and </item-e33>``, else ``item``), each item
ending at the first closing tag (or the next opening one) after it opens, in any case or
spacing, whatever the item's text meant to say. So a row whose text holds the framing's
own tags, sent in a pack framed with them, splits or shifts the items here as it would
for a model.

Like the real API: a strict ``json_schema`` whose objects are not closed
(``additionalProperties: false``) or do not require every property is a 400, and so is
``json_object`` when no message mentions JSON.

Faults, for the fallback paths (``srv.structured.inject(kind, match=..., times=...)``):

- ``"invalid_json"``: the whole answer is cut mid-JSON;
- ``"violate"``: the whole answer is JSON that breaks the schema (a required field
  missing, or a wrong type);
- per item of a packed answer, where the item's text contains ``match``: ``"drop"``
  (left out), ``"duplicate"`` (twice), ``"corrupt"`` (its fields break the schema),
  ``"bad_id"`` (an id that is not in the request).

``times=None`` keeps a fault forever. Counters: ``item_counts`` (item text -> times it
was in a packed request) and ``packed_requests``; single requests are counted by the
server's ``prompt_counts`` as any other request.

    >>> schema = {"type": "object", "properties": {"mood": {"enum": ["up", "down"]}, "n": {"type": "integer"}}}
    >>> v = value_for(schema, "hello")
    >>> v == value_for(schema, "hello"), v["mood"] in ("up", "down"), 0 <= v["n"] <= 99
    (True, True, True)
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .._errors import ConfigError
from .answers import InvalidRequest, answer_for, last_user_content

__all__ = ["StructuredAnswers", "value_for", "FAULT_KINDS"]

FAULT_KINDS = ("invalid_json", "violate", "drop", "duplicate", "corrupt", "bad_id")
_WHOLE = ("invalid_json", "violate")
#: The tag names a packed request's system message announces (packing._INSTRUCTION, _SHARED).
_ITEM_TAG_RE = re.compile(r'each between <([\w-]+) id="N"> and </\1>')
_TEMPLATE_TAG_RE = re.compile(r"starts with a <([\w-]+)> block")
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class _Fault:
    kind: str
    match: str | None
    times: int | None


class StructuredAnswers:
    """The server's JSON answers, fault rules and item counters (``LLMServer.structured``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self.item_counts: Counter[str] = Counter()
        self.packed_requests = 0

    def inject(self, kind: str, *, match: str | None = None, times: int | None = 1) -> None:
        """Break the next ``times`` answers (None: every one) whose prompt, or for item
        faults whose item text, contains ``match`` (any if None). See the module docstring."""
        if kind not in FAULT_KINDS:
            raise ConfigError(f"kind must be one of {FAULT_KINDS}, got {kind!r}")
        if times is not None and times < 1:
            raise ConfigError(f"times must be >= 1 or None, got {times!r}")
        with self._lock:
            self._faults.append(_Fault(kind, match, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Zero the counters (faults stay)."""
        with self._lock:
            self.item_counts.clear()
            self.packed_requests = 0

    @staticmethod
    def handles(body: Mapping[str, Any]) -> bool:
        rf = body.get("response_format")
        return isinstance(rf, Mapping) and rf.get("type") in ("json_schema", "json_object")

    def answer(self, body: Mapping[str, Any], messages: list[dict[str, Any]]) -> str:
        """The answer text for a request that :meth:`handles`; raises InvalidRequest (400)."""
        schema = _schema_of(body["response_format"], messages)
        prompt = last_user_content(messages)
        if schema is None:  # plain json_object: any object will do
            return orjson.dumps({"answer": "echo: " + prompt}).decode()
        items = _items(prompt, messages)
        id_key, item_schema = _envelope(schema)
        if items and id_key is not None:
            value: Any = self._packed(items, id_key, item_schema, schema)
        else:
            value = _fields(schema, prompt, schema)
        fault = self._take(prompt, _WHOLE)
        if fault == "invalid_json":
            return orjson.dumps(value).decode()[:-3]
        if fault == "violate":
            value = _violate(value, schema)
        return orjson.dumps(value).decode()

    def _packed(self, items: list[tuple[str, str]], id_key: str, item_schema: Mapping, root: Mapping) -> dict:
        out = []
        with self._lock:
            self.packed_requests += 1
            self.item_counts.update(text for _, text in items)
        for raw_id, text in items:
            fields = _fields(item_schema, text, root, id_key)
            fields.pop(id_key, None)
            entry = {id_key: int(raw_id), **fields}
            fault = self._take(text, ("drop", "duplicate", "corrupt", "bad_id"))
            if fault == "drop":
                continue
            if fault == "corrupt":
                entry = {id_key: int(raw_id), **_violate(fields, item_schema, root)}
            if fault == "bad_id":
                entry[id_key] = 1000 + int(raw_id)
            out.append(entry)
            if fault == "duplicate":
                out.append(dict(entry))
        return {"items": out}

    def _take(self, text: str, kinds: tuple[str, ...]) -> str | None:
        if not self._faults:
            return None
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and (fault.match is None or fault.match in text):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault.kind
        return None


def _items(prompt: str, messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """A packed prompt's items ``(id, full text)``, read with the tags its instructions name."""
    instructions = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    found = _ITEM_TAG_RE.search(instructions)
    item = found.group(1) if found else "item"
    found = _TEMPLATE_TAG_RE.search(instructions)
    template = re.escape(found.group(1) if found else "template")
    shared = re.match(rf"<{template}>\n(.*?)\n</{template}>\n\n", prompt, re.DOTALL)
    mark = f"<{item}/>"
    if shared is not None and mark in shared.group(1):
        head, _, tail = shared.group(1).partition(mark)
        return [(i, head + text + tail) for i, text in _read_items(prompt[shared.end() :], item)]
    return _read_items(prompt, item)


def _read_items(text: str, tag: str) -> list[tuple[str, str]]:
    """``(id, text)`` of the items in ``text``, read as a model would: an item opens at
    ``<tag id="N">`` and ends at the first closing ``</tag>`` or the next opening, in any
    case and spacing, whatever the item's text meant; text between items is not read."""
    t = re.escape(tag)
    tags = re.compile(rf'<\s*{t}\s+id\s*=\s*"?(\d+)"?\s*>|<\s*/\s*{t}\s*>', re.IGNORECASE)
    out: list[tuple[str, str]] = []
    current, start = None, 0
    for m in tags.finditer(text):
        if current is not None:
            out.append((current, _unwrap(text[start : m.start()])))
            current = None
        if m.group(1) is not None:
            current, start = m.group(1), m.end()
    if current is not None:
        out.append((current, _unwrap(text[start:])))
    return out


def _unwrap(text: str) -> str:
    """An item's text without the newline the envelope puts on each side."""
    text = text[1:] if text.startswith("\n") else text
    return text[:-1] if text.endswith("\n") else text


def value_for(schema: Any, prompt: str, root: Any = None) -> Any:
    """The server's deterministic valid value for ``schema`` and ``prompt``."""
    return _gen(schema, schema if root is None else root, prompt, "")


def _fields(schema: Mapping, prompt: str, root: Mapping, id_key: str | None = None) -> Any:
    """A row's value; a text answer asked as JSON (``{"answer": string}``, as packed
    ``map`` does) is the plain answer's ``"echo: " + prompt``, so packing changes nothing."""
    props = {k: v for k, v in (schema.get("properties") or {}).items() if k != id_key}
    if list(props) == ["answer"] and props["answer"].get("type") == "string":
        return {"answer": answer_for([{"role": "user", "content": prompt}], "")}
    return value_for(schema, prompt, root)


def _gen(node: Any, root: Any, seed: str, path: str) -> Any:
    node = _resolve(node, root)
    h = int.from_bytes(hashlib.blake2b(f"{path}\0{seed}".encode(), digest_size=8).digest(), "big")
    if not isinstance(node, Mapping) or not node:
        return f"{path.rpartition('.')[2] or 'value'}-{h % 16**6:06x}"
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return node["enum"][h % len(node["enum"])]
    if "anyOf" in node or "oneOf" in node:
        branches = node.get("anyOf") or node["oneOf"]
        return _gen(branches[h % len(branches)], root, seed, path)
    t = node.get("type")
    if isinstance(t, list):
        t = t[h % len(t)]
    if t == "object" or (t is None and "properties" in node):
        return {name: _gen(sub, root, seed, f"{path}.{name}") for name, sub in node.get("properties", {}).items()}
    if t == "array":
        low, high = node.get("minItems", 1), node.get("maxItems", 3)
        n = low + h % (max(high, low) - low + 1)
        return [_gen(node.get("items", {}), root, seed, f"{path}[{i}]") for i in range(n)]
    if t == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -1) + 1 if "exclusiveMinimum" in node else 0)
        high = node.get(
            "maximum", node.get("exclusiveMaximum", low + 100) - 1 if "exclusiveMaximum" in node else low + 99
        )
        return int(low + h % (int(high) - int(low) + 1))
    if t == "number":
        low, high = node.get("minimum", 0), node.get("maximum", 100)
        return round(low + (h % 10_000) / 10_000 * (high - low), 2)
    if t == "boolean":
        return bool(h & 1)
    if t == "null":
        return None
    text = f"{path.rpartition('.')[2] or 'value'}-{h % 16**6:06x}"
    if "minLength" in node:
        text = text.ljust(node["minLength"], "x")
    return text[: node["maxLength"]] if "maxLength" in node else text


def _resolve(node: Any, root: Any) -> Any:
    while isinstance(node, Mapping) and "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _violate(value: Any, schema: Mapping, root: Mapping | None = None) -> Any:
    """A copy of ``value`` that breaks ``schema``: drop a required field, else mistype one."""
    schema = _resolve(schema, root or schema)
    if not isinstance(value, dict):
        return {"unexpected": value}
    out = dict(value)
    required = [k for k in schema.get("required", ()) if k in out]
    if required:
        del out[required[0]]
    elif out:
        out[next(iter(out))] = {"not": "what the schema says"}
    return out


def _envelope(schema: Mapping) -> tuple[str | None, Mapping]:
    """``(id field, item schema)`` if ``schema`` is a packed answer's, else ``(None, {})``."""
    props = schema.get("properties") or {}
    items = (props.get("items") or {}) if len(props) == 1 else {}
    item = items.get("items") if isinstance(items, Mapping) and items.get("type") == "array" else None
    if not isinstance(item, Mapping):
        return None, {}
    first = next(iter(item.get("properties") or {}), None)  # the packer puts its id first
    if first in ("id", "item_id", "_item_id") and item["properties"][first].get("type") == "integer":
        return first, item
    return None, {}


def _schema_of(rf: Mapping[str, Any], messages: list[dict[str, Any]]) -> Mapping | None:
    """The schema a response_format asks for, checked as the real API checks it."""
    if rf["type"] == "json_object":
        if not any("json" in str(m.get("content", "")).lower() for m in messages):
            raise InvalidRequest(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                "'json_object'.", "messages",
            )  # fmt: skip
        schema = rf.get("schema")
        return schema if isinstance(schema, Mapping) else None
    spec = rf.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise InvalidRequest("Missing required parameter: 'response_format.json_schema'.", "response_format")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidRequest(f"Invalid 'response_format.json_schema.name': {name!r}.", "response_format")
    schema = spec["schema"]
    if spec.get("strict"):
        problem = _strict_problem(schema, schema, ())
        if problem:
            raise InvalidRequest(f"Invalid schema for response_format '{name}': {problem}", "response_format")
    return schema


def _strict_problem(node: Any, root: Mapping, context: tuple) -> str | None:
    if not isinstance(node, Mapping):
        return f"In context={context}, schema must be a JSON Schema object."
    if not context and node.get("type") != "object":
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{node.get('type')}\"'."
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        missing = [k for k in node.get("properties", {}) if k not in node.get("required", ())]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (node.get(key) or {}).items():
            problem = _strict_problem(sub, root, (*context, key, name))
            if problem:
                return problem
    if isinstance(node.get("items"), Mapping):
        problem = _strict_problem(node["items"], root, (*context, "items"))
        if problem:
            return problem
    for i, sub in enumerate(node.get("anyOf", ())):
        problem = _strict_problem(sub, root, (*context, "anyOf", str(i)))
        if problem:
            return problem
    return None
