"""Planning: every stage before the first request — prompts, requests, dedup, cache lookup.

Nothing here spends money, so every mistake in the arguments surfaces here, before any
call. The plan keeps one int per row and one per distinct request, never the rendered
prompts nor their keys: those are rendered again, lazily, for the requests that are sent.
For ``str`` templates a row's key is hashed straight from the formatted text (the JSON
around it is serialised once), ~1.2 µs a row; dedup and the cache look-up are in bulk
(dedup.py, resume.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import orjson
import pandas as pd

from .cache import Store
from .config import Settings
from .dedup import KEY_SIZE, Keys, dedup
from .errors import TemplateError
from .prompts import Row, Template, compile_template, to_messages
from .requests import RequestBuilder
from .resume import load_cached
from .results import Outcomes

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    """What a run will do: per-row codes into distinct requests, and which need sending."""

    index: pd.Index
    codes: np.ndarray  # per row: distinct-request number, -1 for a skipped row
    keys: Sequence[bytes]  # per distinct request (dedup.Keys: recomputed once released)
    first_row: np.ndarray  # per distinct request: the first row that asked it
    todo: np.ndarray  # distinct requests not answered by the cache, in row order
    outcomes: Outcomes
    builder: RequestBuilder
    _render: Any  # position -> messages
    _encode: Any = None  # position -> (key, body), the fast way when the template allows

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    def jobs(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(distinct request, key, body) for each request to send, rendered on demand."""
        encode = self._encode or (lambda i: self.builder.encode(self._render(i)))
        first = self.first_row
        for u in self.todo.tolist():
            key, body = encode(first[u])
            yield u, key, body

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
    arrays = None if tmpl.is_callable else _values(frame, tmpl, settings)
    render = _renderer(frame, tmpl, settings, arrays)
    skip = _skip_mask(frame, tmpl, settings)
    encode, keybuf = _keys(tmpl, settings, builder, render, arrays, skip, len(frame))
    codes, first, blob = dedup(keybuf, skip)
    del keybuf
    keys = Keys(blob, lambda u: encode(first[u])[0])
    outcomes = Outcomes(len(keys))
    load_cached(store, keys, outcomes)
    keys.release()  # the engine gets each key with its body; 32 bytes a row saved
    todo = np.flatnonzero(~outcomes.from_cache)
    return Plan(frame.index, codes, keys, first, todo, outcomes, builder, render, encode)


_CHUNK = 1 << 16  # rows rendered at a time while keying (bounds the temporary strings)


def _keys(tmpl: Template, settings: Settings, builder: RequestBuilder, render, arrays, skip, n: int):
    """``(encode, keybuf)``: a row -> (key, body) function, and every row's key end to end."""
    keybuf = bytearray(KEY_SIZE * n)
    rows = range(n) if skip is None else np.flatnonzero(~skip)
    codec = None
    if not tmpl.is_callable:
        system = settings.system
        codec = builder.text_codec([{"role": "system", "content": system}] if system is not None else [])
    if codec is None:
        encode = lambda i: builder.encode(render(i))  # noqa: E731

        for i in rows:
            keybuf[KEY_SIZE * i : KEY_SIZE * (i + 1)] = encode(i)[0]
        return encode, keybuf
    fmt = tmpl._fmt.format  # type: ignore[union-attr]
    if len(arrays) == 1:
        only = arrays[0]

        def encode(i: int) -> tuple[bytes, bytes]:
            return codec.encode(fmt(only[i]))

    else:

        def encode(i: int) -> tuple[bytes, bytes]:
            return codec.encode(fmt(*[a[i] for a in arrays]))

    pre, tail, dumps = codec._pre, codec.tail, orjson.dumps
    positions = np.arange(n) if skip is None else rows
    for start in range(0, len(positions), _CHUNK):
        at = positions[start : start + _CHUNK]
        if skip is None:
            cols = [a[start : start + _CHUNK].tolist() for a in arrays]
        else:
            cols = [a[at].tolist() for a in arrays]
        if len(cols) == 1:
            texts = map(fmt, cols[0])
        elif cols:
            texts = (fmt(*values) for values in zip(*cols))
        else:
            texts = [fmt()] * len(at)
        for i, text in zip(at.tolist(), texts):
            h = pre.copy()
            h.update(dumps(text))
            h.update(tail)
            keybuf[KEY_SIZE * i : KEY_SIZE * (i + 1)] = h.digest()
    return encode, keybuf


def _values(frame: pd.DataFrame, tmpl: Template, settings: Settings) -> list[np.ndarray]:
    """The template's columns as object arrays (NA as "" when ``na="empty"``)."""
    arrays = []
    for col in tmpl.columns:
        values = frame[col].to_numpy(dtype=object)
        if settings.na == "empty":
            values = np.where(pd.isna(values), "", values)
        arrays.append(values)
    return arrays


def _renderer(frame: pd.DataFrame, tmpl: Template, settings: Settings, arrays: list[np.ndarray] | None = None):
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
    if arrays is None:
        arrays = _values(frame, tmpl, settings)
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
