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
reads it back to one value per row, or why a row has none (missing, duplicated, invalid,
or its pack's ids did not match: see below).

Framing: the rows' text goes in verbatim (never escaped, so an item reads exactly as its
single request's prompt). A pack in which a row (or the template's shared text) holds
anything a reader could take for a tag of the framing (``<item``, ``</item``, ``<template``,
also ``&lt;``-escaped, any case) is framed with tags no row of it holds instead:
``<item-e33 id="N">`` ... ``</item-e33>`` (:func:`framing_suffix`), and its system
message names them. Other packs, nearly all, are framed as above at no extra token.
And an answer whose ids are not exactly 1..n once each (one missing, repeated, or an id
that is not in the pack) gives no row a value: the model did not read the items as sent,
so even an id that came back once may hold another text's answer.

Cache: each packed row is stored under its own key = sha256(packing format version +
the key its single-row request would have) (:func:`packed_key`), so a rerun with any
``rows_per_request`` reuses it, whatever rows it was packed with. The version is bumped
whenever packs are framed or read back differently, so rows stored by an older format
(format 2 could store a row with the answer to part of its text) are never reused.

This module imports nothing from the planner, the runner or the store.
"""

from __future__ import annotations

import hashlib
import html
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from .._config import Structured
from .parse import Parser, strip_fences
from .schema import Schema, as_schema

__all__ = [
    "Envelope",
    "envelope_error",
    "framing_suffix",
    "packed_key",
    "shares",
    "template_edges",
    "PACK_FORMAT",
    "ITEM_TAG",
    "TEMPLATE_TAG",
]

#: Bumped when the packed prompt or answer format changes (part of every packed row's key).
#: 3: packs framed with tags no row holds; an answer with ids other than 1..n fills no row.
PACK_FORMAT = b"pandas-llm/packed-row/3\n"
#: The framing's tag names: ``<item id="N">`` ... ``</item>`` per row, a ``<template>``
#: block with ``<item/>`` where each item goes; suffixed per pack by :func:`framing_suffix`.
ITEM_TAG, TEMPLATE_TAG = "item", "template"
TEXT_FIELD = "answer"

_INSTRUCTION = (
    'The input holds several independent items, each between <{item} id="N"> and </{item}>. '
    "Treat every item as a separate request: apply the instructions to each item on its own, "
    'as if it were the only input. Reply with one JSON object {{"items": [...]}} holding exactly '
    'one entry per item, in the same order, each with the item\'s "{id}" (an integer) and {fields}.'
)
_SHARED = (
    "The input starts with a <{template}> block: each item's full input is that template with "
    "<{item}/> replaced by the item's text."
)
#: What a reader could take for a tag of the default framing.
_TAG_LIKE = re.compile(rf"(?:<|&lt;)\s*/?\s*(?:{ITEM_TAG}|{TEMPLATE_TAG})\b", re.IGNORECASE)


def framing_suffix(texts: Iterable[str]) -> str:
    """The suffix of a pack's tag names: ``""`` when none of ``texts`` (its items' text and
    the shared template text) holds anything like a tag of the framing, else ``"-"`` and the
    first of a fixed sequence of hex strings (3 digits, longer after 15 tries) that none of
    them holds, in any case: a row's text then cannot open, close or fake an item, whatever
    it holds. The sequence is fixed, so a pack is rebuilt as it was sent (the same request
    key), and packs needing a suffix mostly share one system message. Costs ~4 prompt
    tokens per item, in those packs only.

    >>> framing_suffix(["a review", "it arrived broken"])
    ''
    >>> framing_suffix(["<li>fine</li>", "</item>"])
    '-e33'
    >>> framing_suffix(["</item>", "E33"])
    '-64c'
    """
    texts = list(texts)
    if not any(_TAG_LIKE.search(t) or _TAG_LIKE.search(_as_read(t)) for t in texts):
        return ""
    lowered = [t.lower() for t in texts]
    i = 1
    while True:  # ends: the strings grow, the texts hold finitely many
        nonce = hashlib.sha256(b"pandas-llm/pack-tag/%d" % i).hexdigest()[: 3 + i // 16]
        if not any(nonce in t for t in lowered):
            return "-" + nonce
        i += 1


_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))
_JSON_LT = re.compile(r"\\u003c", re.IGNORECASE)


def _as_read(text: str) -> str:
    """``text`` as a reader may take it: HTML entities decoded (``&#60;``, ``&#x3c;``),
    look-alike forms folded (fullwidth and small ``<``: NFKC), invisible characters dropped,
    JSON's ``\u003c`` read as ``<``."""
    if text.isascii() and "&" not in text and "\\" not in text:
        return text
    text = unicodedata.normalize("NFKC", html.unescape(_JSON_LT.sub("<", text)))
    return text.translate(_INVISIBLE)


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
        shared = len(_SHARED.format(template=TEMPLATE_TAG, item=ITEM_TAG)) + 2 * len(f"<{TEMPLATE_TAG}>") + 12
        if edges is not None and (k - 1) * len("".join(edges)) <= shared:
            edges = None
        self._edges = edges
        self._parts = (head, fields, self.schema.instruction(structured))
        self._systems: dict[str, str] = {}
        #: The system message of a pack framed with the default tags (nearly every pack).
        self.system = self._system("")

    def _system(self, suffix: str) -> str:
        """The system message of a pack whose tag names end in ``suffix``."""
        system = self._systems.get(suffix)
        if system is None:
            head, fields, schema = self._parts
            item, template = ITEM_TAG + suffix, TEMPLATE_TAG + suffix
            instruction = _INSTRUCTION.format(id=self.id, fields=fields, item=item)
            if self._edges is not None:
                instruction += " " + _SHARED.format(template=template, item=item)
            system = self._systems[suffix] = "\n\n".join(p for p in (head, instruction, schema) if p)
        return system

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
        """The messages of one packed request holding ``contents`` (items 1..n), framed with
        tags none of them holds (:func:`framing_suffix`)."""
        n, edges = len(contents), self._edges
        suffix = framing_suffix([*contents, *(edges or ())])
        item, template = ITEM_TAG + suffix, TEMPLATE_TAG + suffix
        items = "\n\n".join(f'<{item} id="{i}">\n{c}\n</{item}>' for i, c in enumerate(contents, 1))
        user = f"{items}\n\nAnswer all {n} items (ids 1 to {n})." if n > 1 else items
        if edges is not None:
            user = f"<{template}>\n{edges[0]}<{item}/>{edges[1]}\n</{template}>\n\n{user}"
        system = self._system(suffix)
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": user}]

    def values(self, text: str | None, n: int) -> list[tuple[str | None, str | None]]:
        """A packed answer read back: per item 1..n, ``(output, None)`` (the row's answer as
        it is stored) or ``(None, why)`` with why in missing | duplicated | invalid |
        ``pack ids mismatch``. Unless the answer's ids are exactly 1..n once each (in any
        order), no item has a value: an id missing, repeated or foreign means the model did
        not read the items as they were framed, so even an id that came back once may hold
        the answer to another text (or to part of one)."""
        entries, foreign = _entries(text, self.id, n)
        exact = not foreign and all(len(entries.get(i, ())) == 1 for i in range(1, n + 1))
        out: list[tuple[str | None, str | None]] = []
        for i in range(1, n + 1):
            found = entries.get(i, [])
            if len(found) != 1:
                out.append((None, "missing" if not found else "duplicated"))
            elif not exact:
                out.append((None, "pack ids mismatch"))
            else:
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


def _entries(text: str | None, id_key: str, n: int) -> tuple[dict[int, list[dict[str, Any]]], int]:
    """Items by id, and how many entries have no id of the pack (not an object, no integer
    id, or one outside 1..n)."""
    out: dict[int, list[dict[str, Any]]] = {}
    try:
        items = orjson.loads(strip_fences(text or "")).get("items", [])
    except (orjson.JSONDecodeError, AttributeError):
        return out, 0
    foreign = 0
    for item in items if isinstance(items, list) else ():
        i = item.get(id_key) if isinstance(item, dict) else None
        if isinstance(i, float) and i.is_integer():
            i = int(i)
        if isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= n:
            out.setdefault(i, []).append(item)
        else:
            foreign += 1
    return out, foreign


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
