"""Planning: every stage before the first request — prompts, requests, dedup, cache lookup.

Nothing here spends money, so every mistake in the arguments surfaces here, before any
call. The plan keeps one 32-byte key per distinct request and one int per row, never
the rendered prompts: those are rendered again, lazily, for the requests that are sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .cache import Store
from .config import Settings
from .errors import TemplateError
from .prompts import Row, Template, compile_template, to_messages
from .requests import RequestBuilder
from .results import Outcomes

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    """What a run will do: per-row codes into distinct requests, and which need sending."""

    index: pd.Index
    codes: np.ndarray  # per row: distinct-request number, -1 for a skipped row
    keys: list[bytes]  # per distinct request
    first_row: np.ndarray  # per distinct request: the first row that asked it
    todo: np.ndarray  # distinct requests not answered by the cache, in row order
    outcomes: Outcomes
    builder: RequestBuilder
    _render: Any  # position -> messages

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    def jobs(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(distinct request, key, body) for each request to send, rendered on demand."""
        encode = self.builder.encode
        render = self._render
        keys = self.keys
        first = self.first_row
        for u in self.todo.tolist():
            _, body = encode(render(first[u]))
            yield u, keys[u], body

    def body_of(self, u: int) -> bytes:
        return self.builder.encode(self._render(self.first_row[u]))[1]


def make_plan(
    data: pd.DataFrame | pd.Series,
    template: Any,
    settings: Settings,
    store: Store,
    *,
    extra: dict[str, Any] | None = None,
) -> Plan:
    """Render, key, dedup and look up every row of ``data``; raise before spending on bad input."""
    series = isinstance(data, pd.Series)
    frame = data.to_frame(name="__value__") if series else data
    columns = list(frame.columns)
    names = ([data.name] if data.name is not None else []) if series else columns
    tmpl = compile_template(template, names, series=series)
    if series and not tmpl.is_callable:
        tmpl = Template(tmpl.source, ("__value__",), tmpl._fmt)
    if not series and frame.columns.duplicated().any():
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise TemplateError(f"the frame has duplicate column names {dupes}; rename them first")
    builder = RequestBuilder(settings, extra=extra)
    render = _renderer(frame, tmpl, settings)
    skip = _skip_mask(frame, tmpl, settings)

    n = len(frame)
    codes = np.empty(n, dtype=np.int64)
    index_of: dict[bytes, int] = {}
    keys: list[bytes] = []
    first: list[int] = []
    encode = builder.encode
    for i in range(n):
        if skip is not None and skip[i]:
            codes[i] = -1
            continue
        key, _ = encode(render(i))
        u = index_of.get(key)
        if u is None:
            u = index_of[key] = len(keys)
            keys.append(key)
            first.append(i)
        codes[i] = u

    outcomes = Outcomes(len(keys))
    for record in store.lookup(keys):
        if record.status == "ok":
            outcomes.fill(index_of[record.key], record, from_cache=True)
    del index_of
    todo = np.flatnonzero(~outcomes.from_cache)
    return Plan(frame.index, codes, keys, np.asarray(first, dtype=np.int64), todo, outcomes, builder, render)


def _renderer(frame: pd.DataFrame, tmpl: Template, settings: Settings):
    system = settings.system
    if tmpl.is_callable:
        names = [str(c) for c in frame.columns]
        arrays = [frame.iloc[:, j].to_numpy(dtype=object) for j in range(frame.shape[1])]

        def render_callable(i: int) -> list[dict]:
            row = Row(zip(names, (a[i] for a in arrays)))
            try:
                out = tmpl.render_row(row)
            except Exception as exc:
                raise TemplateError(f"the template function failed on row {i}: {type(exc).__name__}: {exc}") from exc
            return to_messages(out, system)

        return render_callable
    arrays = []
    for col in tmpl.columns:
        values = frame[col].to_numpy(dtype=object)
        if settings.na == "empty":
            values = np.where(pd.isna(values), "", values)
        arrays.append(values)
    fmt = tmpl.render
    head = [{"role": "system", "content": system}] if system is not None else []
    if len(arrays) == 1:
        only = arrays[0]

        def render_one(i: int) -> list[dict]:
            return [*head, {"role": "user", "content": fmt((only[i],))}]

        return render_one

    def render_many(i: int) -> list[dict]:
        return [*head, {"role": "user", "content": fmt([a[i] for a in arrays])}]

    return render_many


def _skip_mask(frame: pd.DataFrame, tmpl: Template, settings: Settings) -> np.ndarray | None:
    if tmpl.is_callable or settings.na != "skip" or not tmpl.columns:
        return None
    mask = frame[list(tmpl.columns)].isna().any(axis=1).to_numpy()
    return mask if mask.any() else None
