"""Packing: several rows in one request (``rows_per_request=k``), one value per row back.

The fixed text (system message, task and packing instructions, the schema, and the
template's own text before its first ``{column}`` and after its last) is sent once per
k rows instead of once per row, and it comes first, so providers' automatic prompt
caching reuses it; the rows' own content comes last, one ``<item id="N">`` block each
holding only what differs from row to row. A template ``"<instructions> Ticket: {text}"``
is sent as ``<template>\n<instructions> Ticket: <item/>\n</template>`` once, then the
items (the template's text is shared only where that is shorter than repeating it).
The answer must be ``{"items": [{"id": N, <the row's fields>}, ...]}`` (a schema the API
enforces, or that is given in the instruction with ``structured="json_object"``).

Every id must come back exactly once with a valid value. A row whose item is missing,
duplicated, or fails validation (or whose whole pack failed: invalid JSON after the
retries, cut off at max_tokens, an HTTP 400) is sent again on its own, automatically,
after the packs. Rows that cannot be packed (a template function returning its own
system message or several messages) are simply sent on their own.

Cache: each packed row is stored under its own key = sha256(packing format version +
the key its single-row request would have), so a rerun with any ``rows_per_request``
reuses it, whatever rows it was packed with. ``k`` is deliberately not in the key: it
only decides which rows share a request. A packed run also reuses single-row answers
(looked up first), and rows that fell back are stored under their single-row keys, so
a later run without packing reuses those. A run without packing does not reuse packed
answers: they answered a different request. The raw packed answer is stored too, under
the pack's own request key, so a crash between the two commits loses nothing.

Tokens saved: :class:`PackingReport` compares, with offline token counts, the prompt
tokens of what was sent (packs + fallbacks) with what the same rows would have taken
one request each (messages + ``response_format``); see ``pandas_llm.last_run().packing``.
"""

from __future__ import annotations

import hashlib
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .._config import Settings, Structured
from .._errors import ConfigError
from .._plan.planner import Plan, Sized
from .._plan.requests import RequestBuilder
from .._store.store import Record, Store
from .parse import Parser, strip_fences
from .schema import Schema, as_schema

__all__ = [
    "Packer",
    "PackingReport",
    "packed_key",
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


@dataclass
class PackingReport:
    """What packing did in one run; ``str()`` is a one-line summary."""

    rows_per_request: int
    packs: int = 0  # packed requests sent
    rows_packed: int = 0  # rows answered by a packed request
    reused: int = 0  # rows answered by packed answers already in the cache
    fallback_rows: int = 0  # rows sent again on their own
    fallback_reasons: Counter = field(default_factory=Counter)
    prompt_tokens_single: int = 0  # estimate: the sent rows as one request each
    prompt_tokens_sent: int = 0  # estimate: the packs and the fallback requests
    fallback_via: str = ""  # with the Batch API: "in realtime" | "in a follow-up batch"

    @property
    def saved_prompt_tokens(self) -> int:
        return self.prompt_tokens_single - self.prompt_tokens_sent

    @property
    def saved_fraction(self) -> float:
        return self.saved_prompt_tokens / self.prompt_tokens_single if self.prompt_tokens_single else 0.0

    def __str__(self) -> str:
        why = ", ".join(f"{n} {k}" for k, n in self.fallback_reasons.most_common())
        return (
            f"packing {self.rows_per_request} rows/request: {self.packs} packs answered "
            f"{self.rows_packed} rows, {self.fallback_rows} rows sent alone"
            + (f" ({why})" if why else "")
            + (f" {self.fallback_via}" if self.fallback_via and self.fallback_rows else "")
            + f"; prompt tokens ~{self.prompt_tokens_sent} instead of ~{self.prompt_tokens_single} "
            f"(saved ~{self.saved_prompt_tokens}, {self.saved_fraction:.0%})"
        )


class Packer:
    """Packs a plan's rows ``k`` at a time (``prepare`` then ``send``; see pipeline.Run).

    ``row``: the schema of one row's answer (None: a text answer, as ``map``);
    ``single_system``: the system message a single-row request of this run has (rows
    rendered with another one are not packed); ``head``: the fixed instructions packs
    start with (the user's system message and the task's instruction, without any
    single-row schema text); ``template``: the user's template, whose fixed text at the
    edges (:func:`template_edges`) is sent once per pack.
    """

    def __init__(
        self, settings: Settings, k: int, *, row: Schema | None, single_system: str | None, head: str | None, structured: Structured,
        template: Any = None,
    ):  # fmt: skip
        if k < 2:
            raise ConfigError("packing needs rows_per_request >= 2")
        if row is not None and row.schema is None:
            raise ConfigError("rows_per_request > 1 needs a schema with properties, not plain 'json_object'")
        if row is None and "response_format" in settings.params:
            raise ConfigError("rows_per_request > 1 with response_format=: pass the schema as schema= instead")
        self.k = k
        self.report = PackingReport(k)
        self._row_props = row.properties if row is not None else {TEXT_FIELD: {"type": "string"}}
        self._text = row is None
        self._id = next(n for n in ("id", "item_id", "_item_id") if n not in self._row_props)
        self._parser = Parser(row) if row is not None else None
        self._single_system = single_system
        envelope = _envelope(row, self._id)
        fields = f'its answer to that item as "{TEXT_FIELD}"' if row is None else "the item's answer fields"
        edges = template_edges(template)
        # share the template's text only where it is shorter than repeating it in every item
        if edges is not None and (k - 1) * len("".join(edges)) <= len(_SHARED) + 2 * len(TEMPLATE_OPEN) + 12:
            edges = None
        self._edges = edges
        self._shared = (
            "" if edges is None else f"{TEMPLATE_OPEN}\n{edges[0]}{ITEM_MARK}{edges[1]}\n{TEMPLATE_CLOSE}\n\n"
        )
        instruction = _INSTRUCTION.format(id=self._id, fields=fields) + (" " + _SHARED if edges else "")
        parts = [head, instruction, envelope.instruction(structured)]
        self._system = "\n\n".join(p for p in parts if p)
        self._builder = RequestBuilder(
            _scaled(settings, k), extra={"response_format": envelope.response_format(structured)}
        )
        self._model = settings.model
        self._count = _counter(settings.model)
        self._rf_single = _rf_tokens(row.response_format(structured) if row is not None else None, self._count)
        self._rf_pack = _rf_tokens(self._builder.base["response_format"], self._count)
        self._members: dict[int, list[int]] = {}
        self._fallback: list[int] = []
        self._alone: set[int] = set()  # rows that could not be packed at all
        self._plan: Plan | None = None
        self._store: Store | None = None
        self._stats: Any = None

    # -- before sending ------------------------------------------------------------------
    def prepare(self, plan: Plan, store: Store) -> None:
        """Fill rows already answered in a pack from the cache; the rest stay in ``plan.todo``."""
        self._plan, self._store = plan, store
        todo = plan.todo
        if not len(todo):
            return
        wanted = [packed_key(plan.keys[u]) for u in todo.tolist()]
        found = {r.key: r for r in store.lookup(wanted) if r.status == "ok"}
        if not found:
            return
        keep = np.ones(len(todo), dtype=bool)
        for i, (u, key) in enumerate(zip(todo.tolist(), wanted)):
            record = found.get(key)
            if record is not None:
                plan.outcomes.fill(u, record, from_cache=True)
                keep[i] = False
        self.report.reused = int((~keep).sum())
        plan.todo = todo[keep]

    # -- sending -------------------------------------------------------------------------
    async def send(self, plan: Plan, engine: Callable[..., Any]) -> None:
        """Send the packs, then every row that needs its own request."""
        packs = engine(validate=_envelope_error, on_result=self._on_pack)
        self._stats = packs.stats
        await packs.run(Sized(self._pack_jobs(plan), -(-len(plan.todo) // self.k)))
        if self._fallback:
            rows = sorted(self._fallback)
            self.report.fallback_rows = len(rows)
            alone = self._alone
            for u in rows:
                if u not in alone:  # rows never packed would have been sent alone anyway
                    self.report.prompt_tokens_sent += self._single_tokens(plan, u)
            await engine().run(Sized(((u, plan.keys[u], plan.body_of(u)) for u in rows), len(rows)))

    def _pack_jobs(self, plan: Plan) -> Iterator[tuple[int, bytes, bytes]]:
        render, first = plan._render, plan.first_row
        store = self._store
        pid = 0
        todo = plan.todo.tolist()
        for start in range(0, len(todo), self.k):
            members: list[int] = []
            contents: list[str] = []
            for u in todo[start : start + self.k]:
                content = self._content(render(first[u]))
                if content is None:
                    self._alone.add(u)
                    self._fall_back(u, "not packable")
                else:
                    members.append(u)
                    contents.append(content)
            if not members:
                continue
            messages = self._messages(contents)
            key, body = self._builder.encode(messages)
            pid += 1
            self._members[pid] = members
            report = self.report
            report.prompt_tokens_sent += self._count(messages) + self._rf_pack
            report.prompt_tokens_single += sum(self._single_tokens(plan, u) for u in members)
            cached = [r for r in store.lookup([key]) if r.status == "ok"] if store is not None else []
            if cached:  # answered before a crash, not yet split into rows
                self._on_pack(pid, cached[0], counted=False)
                continue
            report.packs += 1
            yield pid, key, body

    def _content(self, messages: list[dict[str, Any]]) -> str | None:
        """The row's user text, if the row's request is [system?] + one user message."""
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

    def _messages(self, contents: list[str]) -> list[dict[str, str]]:
        n = len(contents)
        items = "\n\n".join(f"{ITEM_OPEN.format(i)}\n{c}\n{ITEM_CLOSE}" for i, c in enumerate(contents, 1))
        user = self._shared + (f"{items}\n\nAnswer all {n} items (ids 1 to {n})." if n > 1 else items)
        head = [{"role": "system", "content": self._system}] if self._system else []
        return [*head, {"role": "user", "content": user}]

    def layout(self, plan: Plan) -> Iterator[tuple[list[dict[str, Any]], int]]:
        """``(messages, rows)`` of every request a run of ``plan.todo`` would send first (packs,
        and rows that cannot be packed, alone), without sending: for estimates."""
        render, first, todo = plan._render, plan.first_row, plan.todo.tolist()
        for start in range(0, len(todo), self.k):
            contents = []
            for u in todo[start : start + self.k]:
                messages = render(first[u])
                content = self._content(messages)
                if content is None:
                    yield messages, 1
                else:
                    contents.append(content)
            if contents:
                yield self._messages(contents), len(contents)

    @property
    def response_format_tokens(self) -> tuple[int, int]:
        """Prompt tokens the response_format adds: (a single-row request, a pack)."""
        return self._rf_single, self._rf_pack

    # -- answers -------------------------------------------------------------------------
    def _on_pack(self, pid: int, record: Record, *, counted: bool = True) -> None:
        """Split a pack's answer into row records (committed), queue the rest for fallback."""
        members = self._members.pop(pid)
        plan, store = self._plan, self._store
        assert plan is not None and store is not None
        rows: list[tuple[int, Record]] = []
        if record.status != "ok":
            for u in members:
                self._fall_back(u, f"pack {record.status}")
        else:
            entries = _entries(record.output, self._id, len(members))
            shares = _shares(record, len(members))
            for i, u in enumerate(members, 1):
                found = entries.get(i, [])
                if len(found) != 1:
                    self._fall_back(u, "missing" if not found else "duplicated")
                    continue
                fields = {k: v for k, v in found[0].items() if k != self._id}
                output = self._output(fields)
                if output is None:
                    self._fall_back(u, "invalid")
                    continue
                p, c, cached, cost = shares[i - 1]
                rows.append((u, Record(packed_key(plan.keys[u]), "ok", output, record.finish_reason, p, c, cached,
                                       cost, None, 1, record.model)))  # fmt: skip
        if rows:
            store.write(r for _, r in rows)
            for u, r in rows:
                plan.outcomes.fill(u, r)
        self.report.rows_packed += len(rows)
        stats = self._stats
        if stats is not None:  # count rows, not packs: the engine counted this pack as one request
            stats.sent_done += len(rows) - counted
            if record.status == "ok" or not counted:
                stats.ok += len(rows) - (counted and record.status == "ok")
            else:
                stats.failed[record.status] -= 1
                if stats.failed[record.status] <= 0:
                    del stats.failed[record.status]

    def _output(self, fields: dict[str, Any]) -> str | None:
        if self._text:
            value = fields.get(TEXT_FIELD)
            return value if isinstance(value, str) and len(fields) == 1 else None
        assert self._parser is not None
        _, error = self._parser.check(fields)
        return None if error is not None else orjson.dumps(fields).decode()

    def _fall_back(self, u: int, reason: str) -> None:
        self._fallback.append(u)
        self.report.fallback_reasons[reason] += 1

    def _single_tokens(self, plan: Plan, u: int) -> int:
        return self._count(plan._render(plan.first_row[u])) + self._rf_single


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


def _envelope_error(text: str | None) -> str | None:
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


def _shares(record: Record, n: int) -> list[tuple[int, int, int, float | None]]:
    """The pack's usage and cost split over its rows (integer tokens adding up exactly)."""

    def split(total: int) -> list[int]:
        q, r = divmod(total, n)
        return [q + (i < r) for i in range(n)]

    cost = None if record.cost is None else record.cost / n
    return [(p, c, k, cost) for p, c, k in zip(split(record.prompt_tokens), split(record.completion_tokens),
                                               split(record.cached_tokens))]  # fmt: skip


def _scaled(settings: Settings, k: int) -> Settings:
    """A pack answers k rows: give it k times the output budget (plus room for ids)."""
    params = dict(settings.params)
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(params.get(name), int):
            params[name] = params[name] * k + 16 * k
    return settings.merged(params=params) if params != dict(settings.params) else settings


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
