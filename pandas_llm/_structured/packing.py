"""Packing's envelope: what a request of several rows and its answer look like.

With ``rows_per_request=k`` several rows go in one request (the run-time part, sending
packs and falling back row by row, is ``_run/packing.py``). The fixed text (system
message, task and packing instructions, the schema, and the template's own text before
its first ``{column}`` and after its last) is sent once per k rows instead of once per
row, and it comes first, so providers' automatic prompt caching reuses it; the rows' own
content comes last, one ``<item id="N">`` block each holding only what differs from row
to row. A template ``"<instructions> Ticket: {text}"`` is sent as
``<template>\n<instructions> Ticket: <item/>\n</template>`` once, then the items (the
template's text is shared only where that is shorter than repeating it). The answer must
be ``{"items": [{"id": N, <the row's fields>}, ...]}`` (a schema the API enforces, or
that is given in the instruction with ``structured="json_object"``); :meth:`Envelope.values`
reads it back to one value per row, or why a row has none (missing, duplicated, invalid).

Cache: each packed row is stored under its own key = sha256(packing format version +
the key its single-row request would have) (:func:`packed_key`), so a rerun with any
``rows_per_request`` reuses it, whatever rows it was packed with.

This module imports nothing from the planner, the runner or the store.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .._config import Structured
from .parse import Parser, strip_fences
from .schema import Schema, as_schema

__all__ = [
    "Envelope",
    "envelope_error",
    "packed_key",
    "shares",
    "template_edges",
    "PACK_FORMAT",
    "ITEM_OPEN",
    "ITEM_CLOSE",
    "ITEM_MARK",
]

#: Bumped when the packed prompt or answer format changes (part of every packed row's key).
PACK_FORMAT = b"pandas-llm/packed-row/2\n"
ITEM_OPEN = '<item id="{}">'
ITEM_CLOSE = "</item>"
#: Where each item goes in the shared ``<template>`` block of a pack.
ITEM_MARK = "<item/>"
TEMPLATE_OPEN, TEMPLATE_CLOSE = "<template>", "</template>"
TEXT_FIELD = "answer"

_INSTRUCTION = (
    'The input holds several independent items, each between <item id="N"> and </item>. '
    "Treat every item as a separate request: apply the instructions to each item on its own, "
    'as if it were the only input. Reply with one JSON object {{"items": [...]}} holding exactly '
    'one entry per item, in the same order, each with the item\'s "{id}" (an integer) and {fields}.'
)
_SHARED = (
    "The input starts with a <template> block: each item's full input is that template with "
    f"{ITEM_MARK} replaced by the item's text."
)


def template_edges(template: Any) -> tuple[str, str] | None:
    """``(head, tail)``: a str template's text before its first and after its last
    placeholder, as rendered (None: a callable template, or no fixed text at the edges).

    >>> template_edges("Label this ticket.\\n\\nTicket: {text} (end)")
    ('Label this ticket.\\n\\nTicket: ', ' (end)')
    """
    if not isinstance(template, str):
        return None
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return None
    if not any(field is not None for _, field, _, _ in parts):
        return None
    head = parts[0][0]
    tail = parts[-1][0] if parts[-1][1] is None else ""
    return (head, tail) if head or tail else None


def packed_key(single_key: bytes) -> bytes:
    """The cache key of a row answered inside a pack (see the module docstring)."""
    return hashlib.sha256(PACK_FORMAT + single_key).digest()


class Envelope:
    """The packed request and answer of one run: ``row`` is the schema of one row's answer
    (None: a text answer, as ``map``); ``single_system`` the system message a single-row
    request of the run has (rows rendered with another one are not packed); ``head`` the
    fixed instructions packs start with; ``template`` the user's template, whose fixed text
    at the edges (:func:`template_edges`) is sent once per pack."""

    def __init__(self, k: int, row: Schema | None, *, single_system: str | None, head: str | None,
                 structured: Structured, template: Any = None):  # fmt: skip
        props = row.properties if row is not None else {TEXT_FIELD: {"type": "string"}}
        self.text = row is None
        self.id = next(n for n in ("id", "item_id", "_item_id") if n not in props)
        self._parser = Parser(row) if row is not None else None
        self._single_system = single_system
        self.schema = _envelope(row, self.id)
        fields = f'its answer to that item as "{TEXT_FIELD}"' if row is None else "the item's answer fields"
        edges = template_edges(template)
        # share the template's text only where it is shorter than repeating it in every item
        if edges is not None and (k - 1) * len("".join(edges)) <= len(_SHARED) + 2 * len(TEMPLATE_OPEN) + 12:
            edges = None
        self._edges = edges
        self._shared = (
            "" if edges is None else f"{TEMPLATE_OPEN}\n{edges[0]}{ITEM_MARK}{edges[1]}\n{TEMPLATE_CLOSE}\n\n"
        )
        instruction = _INSTRUCTION.format(id=self.id, fields=fields) + (" " + _SHARED if edges else "")
        parts = [head, instruction, self.schema.instruction(structured)]
        self.system = "\n\n".join(p for p in parts if p)

    def response_format(self, structured: Structured) -> Any:
        return self.schema.response_format(structured)

    def content(self, messages: list[dict[str, Any]]) -> str | None:
        """A row's item: its user text, if the row's request is [system?] + one user message
        (None: the row cannot be packed and is sent alone)."""
        system = None
        if messages and messages[0].get("role") == "system":
            system = messages[0].get("content")
            messages = messages[1:]
        if system != self._single_system or len(messages) != 1 or messages[0].get("role") != "user":
            return None
        content = messages[0].get("content")
        if not isinstance(content, str):
            return None
        if self._edges is not None:  # only what differs goes in the item
            start, end = self._edges
            if not (content.startswith(start) and content.endswith(end) and len(content) >= len(start) + len(end)):
                return None
            content = content[len(start) : len(content) - len(end)]
        return content

    def messages(self, contents: Sequence[str]) -> list[dict[str, str]]:
        """The messages of one packed request holding ``contents`` (items 1..n)."""
        n = len(contents)
        items = "\n\n".join(f"{ITEM_OPEN.format(i)}\n{c}\n{ITEM_CLOSE}" for i, c in enumerate(contents, 1))
        user = self._shared + (f"{items}\n\nAnswer all {n} items (ids 1 to {n})." if n > 1 else items)
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": user}]

    def values(self, text: str | None, n: int) -> list[tuple[str | None, str | None]]:
        """A packed answer read back: per item 1..n, ``(output, None)`` (the row's answer as
        it is stored) or ``(None, why)`` with why in missing | duplicated | invalid."""
        entries = _entries(text, self.id, n)
        out: list[tuple[str | None, str | None]] = []
        for i in range(1, n + 1):
            found = entries.get(i, [])
            if len(found) != 1:
                out.append((None, "missing" if not found else "duplicated"))
                continue
            output = self._output({k: v for k, v in found[0].items() if k != self.id})
            out.append((None, "invalid") if output is None else (output, None))
        return out

    def _output(self, fields: dict[str, Any]) -> str | None:
        if self.text:
            value = fields.get(TEXT_FIELD)
            return value if isinstance(value, str) and len(fields) == 1 else None
        assert self._parser is not None
        _, error = self._parser.check(fields)
        return None if error is not None else orjson.dumps(fields).decode()


def _envelope(row: Schema | None, id_key: str) -> Schema:
    """The packed answer's schema: ``{"items": [{id, <row fields>}]}``, strict if the row's is."""
    props = row.properties if row is not None else {TEXT_FIELD: {"type": "string"}}
    root = (row.schema or {}) if row is not None else {}
    item = {"type": "object", "properties": {id_key: {"type": "integer"}, **props}}
    item["required"] = [id_key, *root.get("required", list(props))]
    if "additionalProperties" in root:
        item["additionalProperties"] = root["additionalProperties"]
    envelope: dict[str, Any] = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item}},
        "required": ["items"],
        "additionalProperties": False,
    }
    for defs in ("$defs", "definitions"):
        if defs in root:
            envelope[defs] = root[defs]
    out = as_schema({"name": f"{row.name if row is not None else 'answer'}_items"[:64], "schema": envelope})
    return out


def envelope_error(text: str | None) -> str | None:
    """The engine's hook for packs: only the envelope; items are checked one by one."""
    try:
        data = orjson.loads(strip_fences(text or ""))
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        return 'expected {"items": [...]}'
    return None


def _entries(text: str | None, id_key: str, n: int) -> dict[int, list[dict[str, Any]]]:
    """Items by id; entries without a valid id (1..n, an integer) are dropped."""
    out: dict[int, list[dict[str, Any]]] = {}
    try:
        items = orjson.loads(strip_fences(text or "")).get("items", [])
    except (orjson.JSONDecodeError, AttributeError):
        return out
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        i = item.get(id_key)
        if isinstance(i, float) and i.is_integer():
            i = int(i)
        if isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= n:
            out.setdefault(i, []).append(item)
    return out


def shares(prompt_tokens: int, completion_tokens: int, cached_tokens: int, cost: float | None, n: int
           ) -> list[tuple[int, int, int, float | None]]:  # fmt: skip
    """A pack's usage and cost split over its ``n`` rows (integer tokens adding up exactly).

    >>> shares(10, 5, 0, 0.3, 3)
    [(4, 2, 0, 0.09999999999999999), (3, 2, 0, 0.09999999999999999), (3, 1, 0, 0.09999999999999999)]
    """

    def split(total: int) -> list[int]:
        q, r = divmod(total, n)
        return [q + (i < r) for i in range(n)]

    each = None if cost is None else cost / n
    return [(p, c, k, each) for p, c, k in zip(split(prompt_tokens), split(completion_tokens), split(cached_tokens))]


def _counter(model: str) -> Callable[[list[dict[str, Any]]], int]:
    from .._cost.tokens import (  # tiktoken: only when packing
        approx_message_tokens,
        count_message_tokens,
        encoding_name_for,
    )

    if encoding_name_for(model) is None:
        return approx_message_tokens
    return lambda messages: count_message_tokens(messages, model)


def _rf_tokens(response_format: Any, count: Callable[..., int]) -> int:
    """Prompt tokens a response_format adds (providers bill the schema as input), roughly."""
    if response_format is None:
        return 0
    text = orjson.dumps(response_format).decode()  # a Fragment dumps as its own bytes
    return count([{"role": "system", "content": text}]) - count([])
