"""Planning: every stage before the first request — prompts, requests, dedup, cache lookup.

Nothing here spends money, so every mistake in the arguments surfaces here, before any
call. For ``str`` templates the plan keeps one int per row and one per distinct request,
never the rendered prompts nor their keys: those are pure, and rendered again, lazily,
for the requests that are sent. A row's key is hashed straight from the formatted text
(the JSON around it is serialised once), ~1.2 µs a row; dedup and the cache look-up are
in bulk (dedup.py, lookup.py).

A function template is called exactly once per row per plan, and its result is never
rendered again (the plan holds no renderer for it): a function need not be pure (random
examples, a timestamp, a paid look-up), and the body sent must be the body whose key was
computed. So the plan keeps, per distinct request still to send, its body as keyed (a
right-sized ``bytes``: ``len(body)`` + 33, and an 8-byte list slot) and keeps the 32-byte
keys: ``len(body)`` + 73 bytes a request, 174 for a short prompt (a 101-byte body; 17 MB
at 100k rows, measured with tracemalloc). While keying, every row's body is held until
dedup and the cache look-up are done; the bodies of requests answered from the cache
are then dropped (their slot and key left: 40 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .._config import Settings
from .._errors import PandasLLMError, TemplateError
from .._store.store import Store
from .dedup import KEY_SIZE, Keys, dedup
from .lookup import load_cached
from .outcomes import Outcomes
from .prompts import Row, Template, compile_template, render_column, to_messages
from .requests import RequestBuilder, to_keep

__all__ = ["Plan", "make_plan", "frame_of"]


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
    _render: Any  # position -> messages (str templates: pure, rendered again on demand; else None)
    _encode: Any = None  # position -> (key, body), the fast way when the template allows
    #: per distinct request: its body as keyed, None once answered (function templates, packs)
    _bodies: list[bytes | None] | None = None

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    def jobs(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(distinct request, key, body) for each request to send, rendered on demand."""
        return Sized(self._jobs(), len(self.todo))

    def _jobs(self) -> Iterator[tuple[int, bytes, bytes]]:
        bodies = self._bodies
        if bodies is not None:
            keys = self.keys
            for u in self.todo.tolist():
                body = bodies[u]
                assert body is not None, "a request answered from the cache is not sent"
                yield u, keys[u], body
            return
        encode = self._encode or (lambda i: self.builder.encode(self._render(i)))
        first = self.first_row
        for u in self.todo.tolist():
            key, body = encode(first[u])
            yield u, key, body

    def body_of(self, u: int) -> bytes:
        """The body of distinct request ``u`` (one in ``todo``), byte for byte as keyed."""
        if self._bodies is not None:
            body = self._bodies[u]
            assert body is not None, "a request answered from the cache has no body kept"
            return body
        return self.builder.encode(self._render(self.first_row[u]))[1]

    def messages_of(self, u: int) -> list[dict[str, Any]]:
        """The chat messages of distinct request ``u`` (one in ``todo``), as keyed: a function
        template's are read back from the body it gave, never asked of the function again."""
        if self._bodies is not None:
            return orjson.loads(self.body_of(u))["messages"]
        return self._render(self.first_row[u])

    def answered(self, us: np.ndarray) -> None:
        """Drop the kept bodies of distinct requests ``us``, answered without being sent."""
        bodies = self._bodies
        if bodies is not None:
            for u in us.tolist():
                bodies[u] = None


def make_plan(
    data: pd.DataFrame | pd.Series,
    template: Any,
    settings: Settings,
    store: Store,
    *,
    extra: dict[str, Any] | None = None,
    kind: Any = None,
) -> Plan:
    """Render, key, dedup and look up every row of ``data``; raise before spending on bad input.

    ``kind`` (endpoints.py): another endpoint's request builder and outcome slots."""
    series, frame, names = frame_of(data)
    tmpl = compile_template(template, names, series=series)
    if series and not tmpl.is_callable:
        tmpl = Template(tmpl.source, ("__value__",) * len(tmpl.columns), tmpl._fmt, tmpl.raw)
    if not series and not tmpl.is_callable:
        _check_duplicates(frame, tmpl.columns)  # duplicates the template does not read are fine
    builder = RequestBuilder(settings, extra=extra) if kind is None else kind.builder(settings)
    arrays = None if tmpl.is_callable else _values(frame, tmpl, settings)
    render = _renderer(frame, tmpl, settings, arrays)
    skip = _skip_mask(frame, tmpl, settings)
    bodies: list[bytes | None] | None = None
    encode: Any = None
    if tmpl.is_callable:
        keybuf, skip, bodies = _callable_keys(builder, render, len(frame))
    else:
        encode, keybuf = _keys(tmpl, settings, builder, render, arrays, skip, len(frame), frame.index)
    codes, first, blob = dedup(keybuf, skip)
    del keybuf
    if bodies is not None:
        bodies = [bodies[i] for i in first.tolist()]  # the other rows' bodies are the same bytes
    if kind is None:
        _refuse_blank(len(first), (lambda u: orjson.loads(bodies[u] or b"{\"messages\": []}")["messages"]) if bodies is not None
                      else (lambda u: render(first[u])), template)  # fmt: skip
        keys = Keys(blob)  # kept: a function is never called again to recompute one
    else:
        keys = Keys(blob, lambda u: encode(first[u])[0])
    outcomes = Outcomes(len(keys)) if kind is None else kind.outcomes(len(keys))
    load_cached(store, keys, outcomes)
    keys.release()  # str templates: the engine gets each key with its body; 32 bytes a row saved
    todo = np.flatnonzero(~outcomes.from_cache)
    if bodies is None:
        return Plan(frame.index, codes, keys, first, todo, outcomes, builder, render, encode)
    plan = Plan(frame.index, codes, keys, first, todo, outcomes, builder, None, None, bodies)  # no way to call it again
    plan.answered(np.flatnonzero(outcomes.from_cache))
    return plan


def _refuse_blank(n: int, messages_of: Any, template: Any) -> None:
    """Raise TemplateError when every one of the ``n`` distinct requests asks nothing (its user
    messages empty or whitespace): nothing is sent. Stops at the first one that asks something
    (one render on a usual run)."""

    def blank(messages: list[dict[str, Any]]) -> bool:
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        return bool(users) and all(isinstance(c, str) and not c.strip() for c in users)

    if n and all(blank(messages_of(u)) for u in range(n)):
        raise TemplateError(
            f"the template {template!r} renders an empty prompt (only whitespace) for every row: nothing "
            "was sent. Name the column(s) to send in it, e.g. '{text}', and check that they hold text."
        )


def frame_of(data: pd.DataFrame | pd.Series) -> tuple[bool, pd.DataFrame, list[Any]]:
    """``(series, frame, names)``: whether ``data`` is a Series, the frame its rows are read
    from, and the names a template may use."""
    series = isinstance(data, pd.Series)
    frame = data.to_frame(name="__value__") if series else data
    names = ([data.name] if data.name is not None else []) if series else list(frame.columns)
    return series, frame, names


_CHUNK = 1 << 16  # rows rendered at a time while keying (bounds the temporary strings)


def _check_duplicates(frame: pd.DataFrame, used: Sequence[Any]) -> None:
    dupes = frame.columns[frame.columns.duplicated()]
    clash = sorted({str(c) for c in used if c in set(dupes)})
    if clash:
        raise TemplateError(
            f"the template reads {clash}, and the frame has several columns of that name; "
            "rename them first (e.g. df.columns = [...])"
        )


def _callable_keys(builder: RequestBuilder, render, n: int):
    """``(keybuf, skip, bodies)`` for a function template: each row rendered once, its body
    kept as keyed (None for a skipped row: its function read an NA cell under ``na="skip"``,
    ``render`` returned None)."""
    keybuf = bytearray(KEY_SIZE * n)
    skip = np.zeros(n, dtype=bool)
    bodies: list[bytes | None] = [None] * n
    encode = builder.encode
    for i in range(n):
        messages = render(i)
        if messages is None:
            skip[i] = True
            continue
        key, body = encode(messages)
        bodies[i] = to_keep(body)
        keybuf[KEY_SIZE * i : KEY_SIZE * (i + 1)] = key
    return keybuf, (skip if skip.any() else None), bodies


def _format_failure(tmpl: Template, arrays, index: pd.Index, exc: Exception) -> TemplateError:
    """The row that a format spec cannot format, and why (``{text:%Y}`` on a str)."""
    fmt = tmpl._fmt
    assert fmt is not None, "str templates only (a function template's rows are keyed by _callable_keys)"
    for i in range(len(index)):
        try:
            fmt.format(*[a[i] for a in arrays])
        except Exception as row_exc:  # noqa: BLE001 - reported with its row
            exc = row_exc
            where = f" on row {index[i]!r}"
            break
    else:
        where = ""
    return TemplateError(
        f"the template {tmpl.source!r} cannot be formatted{where}: {type(exc).__name__}: {exc}. "
        "Check the format specs after ':' (e.g. {price:.2f} needs a number), or use a function template."
    )


def _keys(tmpl: Template, settings: Settings, builder: RequestBuilder, render, arrays, skip, n: int, index=None):
    """``(encode, keybuf)``: a row -> (key, body) function, and every row's key end to end."""
    try:
        return _keys_unchecked(tmpl, settings, builder, render, arrays, skip, n)
    except PandasLLMError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise _format_failure(tmpl, arrays, index if index is not None else pd.RangeIndex(n), exc) from exc


def _keys_unchecked(tmpl: Template, settings: Settings, builder: RequestBuilder, render, arrays, skip, n: int):
    keybuf = bytearray(KEY_SIZE * n)
    rows = range(n) if skip is None else np.flatnonzero(~skip)
    system = settings.system
    codec = builder.text_codec([{"role": "system", "content": system}] if system is not None else [])
    if codec is None:
        encode = lambda i: builder.encode(render(i))  # noqa: E731

        for i in rows:
            keybuf[KEY_SIZE * i : KEY_SIZE * (i + 1)] = encode(i)[0]
        return encode, keybuf
    assert tmpl._fmt is not None, "str templates only (a function template's rows are keyed by _callable_keys)"
    fmt = tmpl._fmt.format
    if len(arrays) == 1:
        only = arrays[0]

        def encode(i: int) -> tuple[bytes, bytes]:
            return codec.encode(fmt(only[i]))

    else:

        def encode(i: int) -> tuple[bytes, bytes]:
            return codec.encode(fmt(*[a[i] for a in arrays]))

    copy, tail, dumps = codec._pre.copy, codec.tail, orjson.dumps
    positions = np.arange(n) if skip is None else np.asarray(rows)
    grid = np.frombuffer(keybuf, dtype=np.uint8).reshape(n, KEY_SIZE)  # writes through to keybuf
    for start in range(0, len(positions), _CHUNK):
        at = positions[start : start + _CHUNK]
        if skip is None:
            cols = [a[start : start + _CHUNK].tolist() for a in arrays]
        else:
            cols = [a[at].tolist() for a in arrays]
        texts: Iterable[str]
        if len(cols) == 1:
            texts = map(fmt, cols[0])
        elif cols:
            texts = (fmt(*values) for values in zip(*cols))
        else:
            texts = [fmt()] * len(at)
        digests = []  # the same bytes hashed as codec.key, with fewer calls a row
        for text in texts:
            h = copy()
            h.update(dumps(text) + tail)
            digests.append(h.digest())
        grid[at] = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(at), KEY_SIZE)
    return encode, keybuf


def _values(frame: pd.DataFrame, tmpl: Template, settings: Settings) -> list[np.ndarray]:
    """One object array per placeholder slot: the cells rendered (prompts.render_value), or
    raw where the placeholder has a format spec; NA as "" when ``na="empty"``."""
    arrays = []
    raw_flags = tmpl.raw or (False,) * len(tmpl.columns)
    for col, raw in zip(tmpl.columns, raw_flags):
        values = _cells(frame[col])
        if settings.na == "empty":
            values = np.where(pd.isna(values), "", values)
        if not raw:
            values = render_column(values, col, frame.index)
        arrays.append(values)
    return arrays


def _cells(column: pd.Series) -> np.ndarray:
    """The column as an object array; float32/float16 cells stay numpy scalars so they
    render in their own shortest repr (``to_numpy(object)`` would widen them to float64)."""
    dtype = column.dtype
    npdt = getattr(dtype, "numpy_dtype", dtype)
    if isinstance(npdt, np.dtype) and npdt.kind == "f" and npdt.itemsize < 8:
        narrow = column.to_numpy(dtype=npdt, na_value=np.nan)
        out = np.empty(len(narrow), dtype=object)
        out[:] = list(narrow)
        return out
    return column.to_numpy(dtype=object)


def _renderer(frame: pd.DataFrame, tmpl: Template, settings: Settings, arrays: list[np.ndarray] | None = None):
    system = settings.system
    if tmpl.is_callable:
        names = [str(c) for c in frame.columns]
        cells = [frame.iloc[:, j].to_numpy(dtype=object) for j in range(frame.shape[1])]
        dupes = {str(c) for c in frame.columns[frame.columns.duplicated()]}
        na, index = settings.na, frame.index

        def render_callable(i: int) -> list[dict] | None:
            """The row's messages; None under ``na="skip"`` when the function read an NA cell."""
            row = _ReadRow(zip(names, (a[i] for a in cells)), na=na, ambiguous=dupes, position=i)
            try:
                out = tmpl.render_row(row)
            except PandasLLMError:
                raise
            except Exception as exc:
                raise TemplateError(
                    f"the template function failed on row {index[i]!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if row._read_na:
                return None
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


class _ReadRow(Row):
    """A function template's row that applies ``na=`` to the cells the function reads
    (``row["col"]``, ``row.col``, ``row.get("col")``; ``values()``/``items()``, ``dict(row)``,
    ``str(row)`` and f-strings of the row read them all): under ``"skip"`` reading an NA
    cell skips the row, under ``"empty"`` it reads as "".

    ``row.<name>`` is the column when the frame has one of that name, even where a dict has a
    method of that name (``row.items``, ``row.values``, ``row.count``); iterating the row is a
    TemplateError, since a dict gives its column names and a pandas row (``df.apply``) its values:
    each would silently make other prompts than meant. ``_position``: the row's position in the
    frame planned (replay.Replay finds its result by it)."""

    def __init__(self, cells: Any, *, na: str, ambiguous: set[str], position: int = -1):
        super().__init__(cells)
        self._na, self._ambiguous, self._read_na, self._position = na, ambiguous, False, position

    def _seen(self, name: Any, value: Any) -> Any:
        if name in self._ambiguous:
            raise TemplateError(
                f"the template function reads {name!r}, and the frame has several columns of that name; rename them first"
            )
        if _is_na(value):
            if self._na == "empty":
                return ""
            self._read_na = True
        return value

    def __getitem__(self, name: Any) -> Any:
        return self._seen(name, dict.__getitem__(self, name))

    def __getattribute__(self, name: str) -> Any:
        if name[:1] != "_" and dict.__contains__(self, name):  # a column wins over a dict method
            return self[name]
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Any:
        raise TemplateError(
            "the template function iterates over its row, which is ambiguous (a dict gives the column "
            "names, a pandas row its values): use row.keys() for the names or row.values() for the cells"
        )

    def get(self, name: Any, default: Any = None) -> Any:
        return self[name] if dict.__contains__(self, name) else default

    def keys(self) -> Any:
        return list(dict.keys(self))

    def values(self) -> Any:
        return [self[k] for k in dict.keys(self)]

    def items(self) -> Any:
        return [(k, self[k]) for k in dict.keys(self)]

    def __repr__(self) -> str:
        return repr({k: self[k] for k in dict.keys(self)})

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)


def _is_na(value: Any) -> bool:
    try:
        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def _skip_mask(frame: pd.DataFrame, tmpl: Template, settings: Settings) -> np.ndarray | None:
    if tmpl.is_callable or settings.na != "skip" or not tmpl.columns:
        return None
    mask = frame[list(tmpl.columns)].isna().any(axis=1).to_numpy()
    return mask if mask.any() else None


class Sized:
    """An iterator that knows how many items it will give (``operator.length_hint``), so
    the engine starts no more workers than there are jobs."""

    __slots__ = ("_it", "_left")

    def __init__(self, items: Iterable[Any], count: int):
        self._it, self._left = iter(items), count

    def __iter__(self) -> Sized:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        self._left -= 1
        return item

    def __length_hint__(self) -> int:
        return max(0, self._left)
