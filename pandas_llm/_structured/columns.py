"""Columns: validated JSON values -> typed pandas columns aligned to the input index.

One column per schema property, with a dtype that keeps missing values as NA:

==========================================  ==============================================
JSON schema                                 column dtype
==========================================  ==============================================
``integer``                                 ``Int64``
``number``                                  ``Float64``
``boolean`` (or an enum of booleans)        ``boolean``
``string`` (dates and times too: ISO text)  ``string``
``enum`` / ``const`` / ``Literal[...]``     ``category`` (categories in the schema's order)
object, array, anything else                ``object`` (Python dicts / lists)
==========================================  ==============================================

Nullable forms (``anyOf [X, null]``, ``type: [X, "null"]``, ``Optional[X]``) map like
``X``. With ``flatten=True`` a nested object becomes one column per field, named
``parent.child`` (``flatten="_"`` picks another separator).

Values are converted once per distinct request, then broadcast to the rows through the
dedup codes, so a frame with many repeated prompts costs little to assemble.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .schema import Schema, resolve

__all__ = ["Column", "columns_for", "dtype_for", "build_frame", "take"]


@dataclass(frozen=True)
class Column:
    name: str
    path: tuple[str, ...]
    dtype: Any  # "Int64" | "Float64" | "boolean" | "string" | pd.CategoricalDtype | object


def dtype_for(node: Any, root: Mapping[str, Any]) -> Any:
    """The pandas dtype for one property's schema (see the module docstring)."""
    node = _non_null(node, root)
    if node is None:
        return object
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if values is not None:
        values = [v for v in values if v is not None]
        if values and all(isinstance(v, bool) for v in values):
            return "boolean"
        if values and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            return pd.CategoricalDtype(list(dict.fromkeys(values)))
        return object
    t = node.get("type")
    return {"integer": "Int64", "number": "Float64", "boolean": "boolean", "string": "string"}.get(t, object)


def columns_for(schema: Schema, flatten: bool | str = False) -> list[Column]:
    """The columns for ``schema``'s properties, nested objects flattened if asked."""
    sep = flatten if isinstance(flatten, str) else "."
    root = schema.schema or {}
    out: list[Column] = []

    def walk(props: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for name, sub in props.items():
            path = (*prefix, name)
            inner = _non_null(sub, root)
            if flatten and inner is not None and isinstance(inner.get("properties"), dict) and inner["properties"]:
                walk(inner["properties"], path)
            else:
                out.append(Column(sep.join(path), path, dtype_for(sub, root)))

    walk(schema.properties, ())
    return out


def build_frame(
    values: Sequence[Any], codes: np.ndarray, index: pd.Index, columns: list[Column] | None
) -> pd.DataFrame:
    """A frame from per-request ``values`` (dicts, None where there is no value).

    ``columns=None`` (plain ``json_object``): one column per key seen, dtypes inferred.
    """
    if columns is None:
        names: dict[str, None] = {}
        for v in values:
            if isinstance(v, dict):
                names.update(dict.fromkeys(v))
        columns = [Column(str(n), (n,), None) for n in names]
    data = {}
    for col in columns:
        per_request = [_get(v, col.path) for v in values]
        data[col.name] = take(_array(per_request, col.dtype), codes)
    return pd.DataFrame(data, index=index)


def take(array: Any, codes: np.ndarray) -> Any:
    """Broadcast a per-request array to rows; code -1 (a row with no request) is NA."""
    if len(array) == 0:
        array = pd.array([None], dtype=array.dtype)
        codes = np.full(len(codes), -1)
    return array.take(codes, allow_fill=True)


def _array(values: list[Any], dtype: Any) -> Any:
    if dtype is None:
        return pd.array(pd.Series(values, dtype=object).convert_dtypes().array)
    if isinstance(dtype, pd.CategoricalDtype):
        known = set(dtype.categories)
        extra = [v for v in dict.fromkeys(v for v in values if v is not None) if v not in known]
        if extra:  # never turn an unexpected value into NA silently
            dtype = pd.CategoricalDtype([*dtype.categories, *extra])
        return pd.Categorical(values, dtype=dtype)
    if dtype is object:
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return pd.array(arr, dtype=object)
    return pd.array(values, dtype=dtype)


def _get(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _non_null(node: Any, root: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema without its null branch (``Optional[X]`` -> ``X``); None if ambiguous."""
    node = resolve(node, root)
    if not isinstance(node, dict):
        return None
    t = node.get("type")
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        if len(rest) != 1:
            return None
        node = {**node, "type": rest[0]}
    if "anyOf" in node:
        branches = [resolve(b, root) for b in node["anyOf"]]
        rest = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        if len(rest) != 1:
            return None
        return _non_null(rest[0], root)
    return node
