"""Prompts: a template and a row become chat messages.

A template is a ``str.format``-style string whose ``{column}`` placeholders name columns
(``{}`` names the values of a Series), or a callable ``row -> str | list[message]``.
Templates are checked against the columns before anything is sent. Cell values are
inserted literally (a ``{`` inside a value is just a character), and attribute or index
access in a placeholder (``{a.__class__}``, ``{a[0]}``) is refused.

Cell values are rendered by :func:`render_value`, one rendering per kind, complete and
never truncated (numpy's ``str()`` of an array elides items and drops commas; two rows
holding different long lists must never become one request):

- ``str`` as is; ``int`` and ``bool`` as ``str()`` (``42``, ``True``); ``bytes`` decoded as
  UTF-8 (a cell that is not UTF-8 is a TemplateError naming its column and row);
- floats in their shortest round-trip repr: ``0.1``, ``0.30000000000000004``, ``3.0``,
  ``1e+16``, ``nan``, ``inf`` (``float32`` in its own shortest repr: ``0.1``);
- lists, tuples, numpy arrays of any dtype and shape, pyarrow arrays, pandas Series and
  sets (sorted) as JSON-like lists; mappings as JSON-like objects. Inside them strings are
  JSON strings, ``None``/NA/NaT are ``null``, booleans ``true``/``false``, NaN ``NaN``, and
  a list and an array holding the same items render the same: ``["red", "blue"]``;
- anything else (dates, Decimal, your own objects) as ``str()`` (a JSON string of it
  inside a container).

A placeholder with a format spec or a conversion (``{price:.2f}``, ``{x!r}``) formats the
raw value as ``str.format`` would: that is asking for Python's own formatting. A callable
template gets the raw cells and renders them itself.

    >>> import pandas as pd
    >>> t = compile_template("Translate to French: {text}", ["text", "id"])
    >>> t.columns
    ('text',)
    >>> t.render(("I {love} it",))
    'Translate to French: I {love} it'
"""

from __future__ import annotations

import difflib
import json
import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .._errors import TemplateError

__all__ = ["Template", "compile_template", "to_messages", "Row", "render_value", "render_column"]

SERIES_FIELD = ""  # the name `{}` stands for when the frame is a Series


class Row(dict):
    """A row handed to a callable template: ``row["col"]`` and ``row.col`` both work."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Template:
    """A checked template: ``columns`` are the columns it reads, in placeholder order (a
    column read both plainly and with a format spec appears twice); ``raw[i]`` is True
    where the placeholder formats the raw value itself (a spec or a conversion)."""

    source: str | Callable[..., Any]
    columns: tuple[Any, ...]
    _fmt: str | None = None
    raw: tuple[bool, ...] = ()

    @property
    def is_callable(self) -> bool:
        return self._fmt is None

    def render(self, values: Sequence[Any]) -> Any:
        """Render one row given the values of ``columns`` (str templates only)."""
        raw = self.raw
        values = [v if (raw and raw[i]) or type(v) is str else render_value(v) for i, v in enumerate(values)]
        fmt = self._fmt
        assert fmt is not None, "a function template renders whole rows: render_row"
        return fmt.format(*values)

    def render_row(self, row: Row) -> Any:
        """Render one row given all its cells (callable templates)."""
        source = self.source
        assert not isinstance(source, str), "a str template renders the values of its columns: render"
        return source(row)


def compile_template(template: Any, columns: Sequence[Any], *, series: bool = False) -> Template:
    """Check ``template`` against ``columns`` and prepare it for fast rendering."""
    if callable(template) and not isinstance(template, str):
        return Template(template, tuple(columns))
    if not isinstance(template, str):
        raise TemplateError(
            f"template must be a str with {{column}} placeholders or a callable row -> str, "
            f"got {type(template).__name__}"
        )
    if not template.strip():
        raise TemplateError(
            f"the template is empty ({template!r}): every prompt would be empty. Write what to ask, with "
            f"{{column}} placeholders for the values, e.g. 'Summarise: {{{_first(columns) if not series else ''}}}'"
        )
    by_name = {str(c): c for c in columns}
    used: list[Any] = []
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        named = [c for c in columns if "{" + str(c) + "}" in template]
        advice = _names_hint("", named) or " Write a literal brace as '{{' or '}}'."
        raise TemplateError(f"cannot parse template {template!r}: {exc}.{advice}") from exc
    for literal, field_name, spec, conversion in parsed:
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field_name is None:
            continue
        if field_name == "" and not series:
            raise TemplateError(
                "'{}' only works on a Series (s.llm.map); on a DataFrame name the column, "
                f"e.g. '{{{_first(columns)}}}'"
            )
        if conversion not in (None, "r", "s", "a"):
            raise TemplateError(
                f"{{{field_name}!{conversion}}}: unknown conversion '!{conversion}'; Python knows !r, !s and "
                f"!a. Write {{{field_name}}} for the value as it is.{_names_hint(field_name, columns)}"
            )
        if field_name != "" and ("." in field_name or "[" in field_name) and field_name not in by_name:
            raise TemplateError(
                f"placeholder {{{field_name}}} uses attribute or index access, which is not "
                "allowed; name a column instead"
            )
        if spec and ("{" in spec):
            raise TemplateError(f"nested placeholders in a format spec are not allowed: {{{field_name}:{spec}}}")
        if series:
            if field_name not in ("", "0") and field_name not in by_name:
                raise TemplateError(f"a Series template uses '{{}}' for the value; {{{field_name}}} is unknown")
            column = SERIES_FIELD
        else:
            if field_name not in by_name:
                special = _names_hint(field_name, columns)
                close = difflib.get_close_matches(field_name, list(by_name), n=1)
                hint = special or (f" Did you mean {{{close[0]}}}?" if close else "")
                raise TemplateError(
                    f"unknown placeholder {{{field_name}}} in the template.{hint} "
                    f"Available columns: {', '.join(map(str, columns)) or '(none)'}. "
                    "Write a literal brace as '{{' or '}}'."
                )
            column = by_name[field_name]
        slot = (column, bool(spec or conversion))  # a spec formats the raw value; else render_value
        if slot in used:
            index = used.index(slot)
        else:
            index = len(used)
            used.append(slot)
        parts.append("{" + str(index) + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    return Template(template, tuple(c for c, _ in used), "".join(parts), tuple(r for _, r in used))


def _first(columns: Sequence[Any]) -> str:
    return str(columns[0]) if len(columns) else "column"


_FORMAT_CHARS = ":!{}[]."


def _names_hint(field_name: str, columns: Sequence[Any]) -> str:
    """Advice when the placeholder is the start of a column name that a str template cannot
    spell (``Ratio a:b``, ``wow!``, ``a{b}``): such names need a function template."""
    for c in columns:
        name = str(c)
        if any(ch in name for ch in _FORMAT_CHARS) and name != field_name and name.startswith(field_name.strip()):
            return (
                f" The column {name!r} cannot be named in a str template (':' starts a format spec, "
                "'!' a conversion, '{' '}' '[' '.' are template syntax). Use a function template, e.g. "
                f'df.llm.map(lambda row: f"Translate: {{row[{name!r}]}}") or rename the column.'
            )
    return ""


# -- rendering cell values ------------------------------------------------------------------


class _NotUTF8(Exception):
    """A bytes cell that is not UTF-8 (reported with its column and row by render_column)."""


def render_value(value: Any) -> str:
    """The text a cell becomes in a prompt (see the module docstring for the table).

    >>> render_value(np.array(["red", "blue"])), render_value(["red", "blue"])
    ('["red", "blue"]', '["red", "blue"]')
    >>> render_value(0.1 + 0.2), render_value(np.float32(0.1)), render_value(3.0)
    ('0.30000000000000004', '0.1', '3.0')
    >>> render_value("café".encode()), render_value({"a": [1, None, float("nan")]})
    ('café', '{"a": [1, null, NaN]}')
    """
    t = type(value)
    if t is str:
        return value
    if t is int or t is bool:
        return str(value)
    if t is float:
        return repr(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        return _utf8(value)
    if isinstance(value, (np.floating, float)):
        return _float(value)
    if isinstance(value, (np.integer, np.bool_, int)):
        return str(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if t is list or t is tuple or t is dict or (t is np.ndarray and value.ndim):
        return _json(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return render_value(value[()])
    if _is_container(value):
        return _json(value)
    if _is_arrow(value) and hasattr(value, "as_py"):
        return render_value(value.as_py())
    return str(value)


def _float(value: Any) -> str:
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return str(value)  # numpy's shortest repr for float32/float16 (repr(float(x)) is float64's)
    return repr(float(value))


def _utf8(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotUTF8(f"a bytes cell is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _is_arrow(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pyarrow"


def _is_container(value: Any) -> bool:
    if isinstance(value, (list, tuple, np.ndarray, Mapping, set, frozenset, pd.Series, pd.Index, pd.DataFrame)):
        return True
    if isinstance(value, pd.api.extensions.ExtensionArray):
        return True
    return _is_arrow(value) and hasattr(value, "to_pylist")


def _items(value: Any) -> list[Any]:
    """A sequence's items, keeping numpy scalar types where ``tolist`` would change them."""
    if isinstance(value, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
        value = value.to_numpy(dtype=object) if not isinstance(value.dtype, np.dtype) else np.asarray(value)
    if isinstance(value, np.ndarray):
        return _array_items(value)
    if _is_arrow(value):
        if str(getattr(value, "type", "")) in ("float", "halffloat"):
            return list(value.to_numpy(zero_copy_only=False))  # float32: its own shortest repr
        return value.to_pylist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=_json)  # a set has no order; its text must not vary by run
    return list(value)


def _array_items(value: np.ndarray) -> list[Any]:
    dt = value.dtype
    if dt.kind in "biuUSO" or dt == np.float64 or dt == np.complex128:
        return value.tolist() if value.ndim == 1 or dt.kind != "O" else list(value)
    return list(value)  # float32, datetime64, ...: numpy scalars (tolist would widen or give ints)


def _json(value: Any) -> str:
    """JSON-like text of a value inside a container (strings quoted, NA as null)."""
    t = type(value)
    if t is str:
        return _quote(value)
    if t is int:
        return str(value)
    if t is float:
        return _json_float(value)
    if t is list or t is tuple:
        return "[" + ", ".join(map(_json, value)) + "]"
    if t is np.ndarray and value.ndim:
        return "[" + ", ".join(map(_json, _array_items(value))) + "]"
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if t is bool or isinstance(value, np.bool_):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(str(value))
    if isinstance(value, np.floating):
        return _json_float(value)
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        return _quote(_utf8(value))
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _json(value[()])
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_json(k)}: {_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, pd.DataFrame):  # str() of a frame elides rows: its records instead
        return _json(value.to_dict(orient="records"))
    if _is_container(value):
        return "[" + ", ".join(map(_json, _items(value))) + "]"
    if _is_arrow(value) and hasattr(value, "as_py"):
        return _json(value.as_py())
    if isinstance(value, (np.datetime64, np.timedelta64)) and np.isnat(value):
        return "null"
    if isinstance(value, (Decimal, complex, np.complexfloating)):
        return str(value)
    return _quote(str(value))


def _json_float(value: Any) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return _float(value)


def _quote(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except orjson.JSONEncodeError:  # a lone surrogate: json escapes it
        return json.dumps(text, ensure_ascii=False)


#: infer_dtype kinds whose str.format is already the rendering (the common case: no copy)
_AS_IS = frozenset({"string", "integer", "boolean", "empty"})


def render_column(values: np.ndarray, column: Any, index: Any = None) -> np.ndarray:
    """``values`` (an object array) rendered cell by cell; returned as is when every cell
    is a ``str``, ``int`` or ``bool`` (NA cells are left to the caller's ``na`` rule)."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in _AS_IS:
        return values
    if kind in ("floating", "mixed-integer-float") and all(type(v) in (float, int) for v in values):
        return values  # Python floats format as their repr already (a float64 column)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if type(v) is str:
            out[i] = v
            continue
        try:
            out[i] = render_value(v)
        except _NotUTF8 as exc:
            where = index[i] if index is not None else i
            raise TemplateError(
                f"column {column!r}, row {where!r}: {exc}. Decode the column first, e.g. "
                f"df[{column!r}].str.decode('latin-1'), or convert it with a function template."
            ) from None
        except RecursionError:
            raise TemplateError(f"column {column!r}, row {index[i] if index is not None else i!r}: "
                                "the cell contains itself and cannot be rendered") from None  # fmt: skip
    return out


def to_messages(rendered: Any, system: str | None) -> list[dict[str, Any]]:
    """Turn a rendered prompt (a str, or a list of messages) into chat messages."""
    if isinstance(rendered, str):
        messages = [{"role": "user", "content": rendered}]
    elif isinstance(rendered, list) and all(isinstance(m, dict) and "role" in m for m in rendered):
        messages = rendered
    else:
        raise TemplateError(
            "a callable template must return a str or a list of {'role': ..., 'content': ...} "
            f"messages, got {type(rendered).__name__}"
        )
    if system is not None and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return messages
