"""Cell values are rendered faithfully: one rendering per kind, complete, never two cells into one prompt."""

from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

import pandas_llm  # noqa: F401
from pandas_llm._config import Settings
from pandas_llm._errors import PandasLLMError, TemplateError
from pandas_llm._plan.planner import make_plan
from pandas_llm._plan.prompts import render_value
from pandas_llm._plan.requests import RequestBuilder
from pandas_llm._store.store import Store


def test_two_long_arrays_that_differ_are_two_requests_with_their_own_answers(server, opts):
    # the case: parquet list columns are numpy arrays; numpy's str() elided the middle
    a = np.array([f"item{i}" for i in range(1200)])
    b = a.copy()
    b[3:1197] = [f"other{i}" for i in range(3, 1197)]
    df = pd.DataFrame({"tags": [a, b]})
    out = df.llm.map("Count: {tags}", **opts, details=True)
    assert out["status"].tolist() == ["ok", "ok"]
    assert out["output"].iloc[0] != out["output"].iloc[1]
    assert "item600" in out["output"].iloc[0] and "other600" in out["output"].iloc[1]
    assert "..." not in out["output"].iloc[0]
    assert server.requests == 2


def test_a_list_and_an_array_with_the_same_items_share_one_request(server, opts):
    df = pd.DataFrame({"c": [["red", "blue"], np.array(["red", "blue"]), ("red", "blue")]})
    out = df.llm.map("Colours: {c}", **opts)
    assert out.tolist() == ['echo: Colours: ["red", "blue"]'] * 3
    assert server.requests == 1
    again = pd.DataFrame({"c": [np.array(["red", "blue"], dtype=object)]}).llm.map("Colours: {c}", **opts)
    assert again.tolist() == out.tolist()[:1] and server.requests == 1  # from the cache


@pytest.mark.parametrize(
    "value, text",
    [
        ("plain", "plain"),
        (42, "42"),
        (np.int64(42), "42"),
        (True, "True"),
        (0.1 + 0.2, "0.30000000000000004"),
        (np.float64(0.1 + 0.2), "0.30000000000000004"),
        (np.float32(0.1), "0.1"),
        (3.0, "3.0"),
        (1e16, "1e+16"),
        (b"caf\xc3\xa9", "café"),
        (bytearray(b"ok"), "ok"),
        (["a", 1, 2.5, None, True], '["a", 1, 2.5, null, true]'),
        (np.array([[1, 2], [3, 4]]), "[[1, 2], [3, 4]]"),
        (np.array([0.1, 0.2], dtype=np.float32), "[0.1, 0.2]"),
        (np.array([0.1, 0.30000000000000004]), "[0.1, 0.30000000000000004]"),
        (np.array([1.5, np.nan]), "[1.5, NaN]"),
        (np.array(["2024-01-02"], dtype="datetime64[D]"), '["2024-01-02"]'),
        (np.array([b"x", b"y"]), '["x", "y"]'),
        (np.array([True, False]), "[true, false]"),
        (np.array(7), "7"),
        (np.array("red"), "red"),
        ({"b": 1, "a": [pd.NA, pd.NaT]}, '{"b": 1, "a": [null, null]}'),
        ({1: "x", "1": "y"}, '{1: "x", "1": "y"}'),
        ({"z", "a"}, '["a", "z"]'),
        (pd.array([1, None], dtype="Int64"), "[1, null]"),
        ([Decimal("1.10"), 1 + 2j], "[1.10, (1+2j)]"),
        (['quote " and \\ and\nnewline'], '["quote \\" and \\\\ and\\nnewline"]'),
        (pd.Timestamp("2024-01-02 03:04:05.000006"), "2024-01-02 03:04:05.000006"),
        (pd.DataFrame({"a": range(100)}), "[" + ", ".join(f'{{"a": {i}}}' for i in range(100)) + "]"),
    ],
)
def test_the_rendering_table(value, text):
    assert render_value(value) == text


class _ArrowLike:
    """Stands in for a pyarrow array / scalar (pyarrow is optional): the same duck type."""

    __module__ = "pyarrow.lib"

    def __init__(self, items):
        self.items = items
        self.type = "string"

    def to_pylist(self):
        return list(self.items)


class _ArrowScalar:
    __module__ = "pyarrow.lib"

    def __init__(self, value):
        self.value = value

    def as_py(self):
        return self.value


def test_arrow_arrays_and_scalars_render_like_lists_and_values():
    assert render_value(_ArrowLike(["red", "blue"])) == render_value(["red", "blue"])
    assert render_value(_ArrowScalar(["a", None])) == '["a", null]'
    assert render_value([_ArrowScalar(1.5)]) == "[1.5]"


def _same(a, b) -> bool:
    """Whether two generated values are the same value (arrays and tuples are lists,
    numpy scalars their Python value, a float32 its shortest decimal, NA kinds one NA)."""
    return _norm(a) == _norm(b)


def _norm(v):
    if v is None or v is pd.NA or v is pd.NaT:
        return ("na",)
    if isinstance(v, (bool, np.bool_)):
        return ("bool", bool(v))
    if isinstance(v, (int, np.integer)):
        return ("num", int(v))
    if isinstance(v, np.float32):
        v = float(str(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f != f:
            return ("nan",)
        return ("num", int(f)) if False else ("float", f)
    if isinstance(v, (bytes, np.bytes_)):
        return ("str", v.decode())
    if isinstance(v, str):
        return ("str", str(v))
    if isinstance(v, dict):
        return ("dict", tuple((_norm(k), _norm(x)) for k, x in v.items()))
    if isinstance(v, np.ndarray):
        return _norm(list(v)) if v.ndim else _norm(v[()])
    if isinstance(v, (list, tuple)):
        return ("list", tuple(_norm(x) for x in v))
    raise AssertionError(type(v))


def _gen(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "f32", "bool", "none", "bytes"] + (
        ["list", "tuple", "array", "dict"] if depth < 3 else []
    )
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "a", "b", "1", "null", "true", "NaN", "a, b", '"', "[1]", "é", "{x}", " ", "a\nb"])
    if kind == "int":
        return rng.choice([0, 1, -1, 10**20, np.int64(7), np.int8(-3)])
    if kind == "float":
        return rng.choice(
            [0.1, 0.30000000000000004, 0.1 + 0.2, 1.0, -0.0, 1e16, 1e-7, float("inf"), float("nan"), np.float64(2.5)]
        )
    if kind == "f32":
        return np.float32(rng.choice([0.1, 2.5, 1e10]))
    if kind == "bool":
        return rng.choice([True, False, np.bool_(True)])
    if kind == "none":
        return rng.choice([None, pd.NA, pd.NaT])
    if kind == "bytes":
        return rng.choice([b"a", b"caf\xc3\xa9", b""])
    n = rng.randint(0, 4)
    items = [_gen(rng, depth + 1) for _ in range(n)]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "array":
        flat = [x for x in items if isinstance(x, str)]
        return np.array(flat, dtype=object if rng.random() < 0.5 else None) if flat else np.array([1.5, 2.0])
    return {rng.choice(["k", "l", 1, 2]): x for x in items}


def test_generated_containers_that_differ_never_render_the_same():
    rng = random.Random(12)
    seen: dict[str, object] = {}
    cases = 0
    for _ in range(6000):
        value = _gen(rng)
        if not isinstance(value, (list, tuple, dict, np.ndarray)):
            value = [value]  # top-level str and int share text by design ("1"); inside a container they do not
        text = render_value(value)
        assert "..." not in text or "..." in repr(value)
        if text in seen:
            assert _same(seen[text], value), (text, seen[text], value)
        else:
            seen[text] = value
            cases += 1
    assert cases > 1000


def test_bytes_that_are_not_utf8_name_the_column_and_row(opts):
    df = pd.DataFrame({"blob": [b"fine", b"\xff\xfe"]}, index=["r1", "r2"])
    with pytest.raises(TemplateError, match=r"column 'blob', row 'r2'.*not UTF-8"):
        df.llm.map("{blob}", **opts)


def test_a_float32_column_renders_in_its_own_shortest_repr(server, opts):
    df = pd.DataFrame({"x": np.array([0.1, 2.5], dtype=np.float32), "y": [0.1 + 0.2, 3.0]})
    out = df.llm.map("{x} {y}", **opts)
    assert out.tolist() == ["echo: 0.1 0.30000000000000004", "echo: 2.5 3.0"]


def test_a_series_of_arrays_renders_in_full(server, opts):
    s = pd.Series([np.arange(50), np.arange(50) + 1])
    out = s.llm.map("{}", **opts)
    assert out.iloc[0] == "echo: " + render_value(list(range(50)))
    assert server.requests == 2


def test_a_format_spec_still_formats_the_raw_value(server, opts):
    df = pd.DataFrame({"price": [1.23456, 2.0], "tags": [["a"], ["b"]]})
    out = df.llm.map("{price:.2f} {price} {tags!r} {tags}", **opts)
    assert out.tolist() == ["echo: 1.23 1.23456 ['a'] [\"a\"]", "echo: 2.00 2.0 ['b'] [\"b\"]"]


@pytest.mark.parametrize("template", ["{text!x}", "{text:%Y}"])
def test_bad_conversions_and_specs_are_pandas_llm_errors(opts, template):
    df = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(TemplateError) as info:
        df.llm.map(template, **opts)
    assert isinstance(info.value, PandasLLMError)
    assert "text" in str(info.value)


KINDS = {
    "str": ["a", "b", "a"],
    "list": [["x", 1], ["x", 2], ["x", 1]],
    "array": [np.array(["p", "q"]), np.array(["p"]), np.array(["p", "q"])],
    "float32": np.array([0.1, 0.2, 0.1], dtype=np.float32),
    "mixed": [{"k": [1.5, None]}, "s", {"k": [1.5, None]}],
    "bytes": [b"by", b"caf\xc3\xa9", b"by"],
    "int": [1, 2, 1],
}


@pytest.mark.parametrize("system", [None, "sys"])
def test_the_fast_keys_and_the_rendered_requests_agree_for_every_kind(system):
    frame = pd.DataFrame(KINDS)
    settings = Settings(model="m", base_url="http://h/v1", system=system, cache=False)
    template = "{str} {list} {array} {float32} {mixed} {bytes} {int}"
    with Store(None) as store:
        plan = make_plan(frame, template, settings, store)
    builder = RequestBuilder(settings)
    head = [{"role": "system", "content": system}] if system else []
    want = []
    for i in range(len(frame)):
        text = " ".join(render_value(frame[c].iloc[i]) for c in KINDS)
        want.append(builder.encode([*head, {"role": "user", "content": text}]))
    assert plan.codes.tolist() == [0, 1, 0]
    assert list(plan.keys) == [want[0][0], want[1][0]]
    assert [(k, b) for _, k, b in plan.jobs()] == [want[0], want[1]]
