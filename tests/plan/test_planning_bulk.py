"""The fast planning paths give exactly what the plain ones give: keys, dedup, cache look-ups."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import pandas_llm  # noqa: F401
from pandas_llm._config import Settings
from pandas_llm._plan import lookup as resume
from pandas_llm._plan.dedup import Keys, dedup
from pandas_llm._plan.outcomes import Outcomes
from pandas_llm._plan.planner import _renderer, make_plan
from pandas_llm._plan.prompts import compile_template
from pandas_llm._plan.requests import RequestBuilder
from pandas_llm._store.store import Record, Store
from pandas_llm.testing import LLMServer

TEXTS = [
    "plain",
    'a "quote" and \\ backslash',
    "ünïcödé ✓ 🎉",
    "line\nbreak\ttab",
    "\u2028\u2029\x00\x1f",
    "{braces}",
    "",
]


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("params", [{}, {"temperature": 0, "max_tokens": 5, "stop": ["\n"]}])
def test_text_codec_matches_the_canonical_encoding(system, params):
    s = Settings(model="m", base_url="http://h/v1", system=system, params=params, extra_body={"zz": 1, "a": [1]})
    builder = RequestBuilder(s, extra={"response_format": {"type": "text"}})
    head = [{"role": "system", "content": system}] if system else []
    codec = builder.text_codec(head)
    assert codec is not None
    for text in TEXTS:
        want = builder.encode([*head, {"role": "user", "content": text}])
        assert codec.encode(text) == want
        assert codec.key(text) == want[0]


def reference(frame: pd.DataFrame, template, settings: Settings):
    """Keys and dedup codes the plain way: render, encode, a dict."""
    tmpl = compile_template(template, list(frame.columns))
    render = _renderer(frame, tmpl, settings)
    builder = RequestBuilder(settings)
    index_of: dict[bytes, int] = {}
    codes, keys = [], []
    for i in range(len(frame)):
        if settings.na == "skip" and tmpl.columns and frame[list(tmpl.columns)].iloc[i].isna().any():
            codes.append(-1)
            continue
        key = builder.encode(render(i))[0]
        if key not in index_of:
            index_of[key] = len(keys)
            keys.append(key)
        codes.append(index_of[key])
    return codes, keys


@pytest.mark.parametrize("na", ["skip", "empty"])
@pytest.mark.parametrize("system", [None, "sys"])
@pytest.mark.parametrize("template", ["{a} / {b}", "Q: {a}", "no placeholder", "{b:>5}|{a!r}"])
def test_plan_keys_and_codes_match_the_plain_way(na, system, template):
    frame = pd.DataFrame(
        {
            "a": ["x", "y", None, "x", "ü {z}", "y", "x"],
            "b": [1, 2, 3, 1, 5, np.nan, 1],
        }
    )
    settings = Settings(model="m", base_url="http://h/v1", system=system, na=na, cache=False)
    with Store(None) as store:
        plan = make_plan(frame, template, settings, store)
    codes, keys = reference(frame, template, settings)
    assert plan.codes.tolist() == codes
    assert list(plan.keys) == keys
    assert [k for _, k, _ in plan.jobs()] == keys
    assert [plan.first_row[u] for u in range(len(keys))] == [codes.index(u) for u in range(len(keys))]


def test_callable_templates_take_the_plain_way():
    frame = pd.DataFrame({"a": ["x", "y", "x"]})
    settings = Settings(model="m", base_url="http://h/v1", cache=False)
    with Store(None) as store:
        plan = make_plan(frame, lambda row: f"say {row.a}", settings, store)
    builder = RequestBuilder(settings)
    assert plan.codes.tolist() == [0, 1, 0]
    assert plan.keys[1] == builder.encode([{"role": "user", "content": "say y"}])[0]


def keybuf(rows: list[bytes]) -> bytearray:
    return bytearray(b"".join(rows))


def test_dedup_groups_equal_keys_and_skips():
    k = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    rows = [k[0], k[1], k[0], b"\0" * 32, k[2], k[1]]
    skip = np.array([False, False, False, True, False, False])
    codes, first, blob = dedup(keybuf(rows), skip)
    assert codes.tolist() == [0, 1, 0, -1, 2, 1]
    assert first.tolist() == [0, 1, 4]
    assert list(Keys(blob)) == [k[0], k[1], k[2]]


def test_dedup_is_exact_when_keys_share_their_first_bytes():
    same_head = b"12345678"
    rows = [same_head + b"a" * 24, same_head + b"b" * 24, same_head + b"a" * 24]
    codes, first, blob = dedup(keybuf(rows), None)
    assert codes.tolist() == [0, 1, 0] and first.tolist() == [0, 1]
    assert Keys(blob)[1] == rows[1]


def test_dedup_of_nothing():
    codes, first, blob = dedup(bytearray(), None)
    assert len(codes) == 0 and len(first) == 0 and blob == b""


def test_keys_sequence_and_release():
    k = [bytes([i]) * 32 for i in range(4)]
    keys = Keys(b"".join(k), recompute=lambda u: k[u])
    assert len(keys) == 4 and keys[-1] == k[3] and keys[1:3] == k[1:3]
    keys.release()
    assert keys.blob is None and list(keys) == k and keys[2] == k[2]
    with pytest.raises(IndexError):
        keys[4]


def records(n: int) -> list[Record]:
    out = []
    for i in range(n):
        key = hashlib.sha256(str(i).encode()).digest()
        if i % 5 == 4:
            out.append(Record(key, "failed", error="boom", attempts=2))
        else:
            cost = None if i % 3 == 0 else i / 1000
            out.append(
                Record(
                    key, "ok", f"out {i}", "stop" if i % 7 else "length", i, 2 * i, i % 3, cost, None, 1 + i % 2, "m"
                )
            )
    return out


@pytest.mark.parametrize("how", ["probe", "scan"])
def test_bulk_cache_lookup_equals_filling_record_by_record(monkeypatch, how):
    monkeypatch.setattr(resume, "_SCAN_MIN_KEYS", 0 if how == "scan" else 10**9)
    recs = records(300)
    extra = [hashlib.sha256(b"not asked").digest()]
    with Store(None) as store:
        store.write(recs[:250])  # some keys are not in the cache at all
        store.write([Record(extra[0], "ok", "other")])
        asked = [r.key for r in recs][::-1]  # any order
        bulk = Outcomes(len(asked))
        found = resume.load_cached(store, Keys(b"".join(asked)), bulk)
        one_by_one = Outcomes(len(asked))
        where = {k: u for u, k in enumerate(asked)}
        for r in store.lookup(asked):
            if r.status == "ok":
                one_by_one.fill(where[r.key], r, from_cache=True)
    assert found == sum(r.status == "ok" for r in recs[:250])
    for name, want in vars(one_by_one).items():
        got = getattr(bulk, name)
        assert got.dtype == want.dtype, name
        assert pd.Series(got).equals(pd.Series(want)), name


def test_a_second_run_comes_from_the_cache(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i % 50}" for i in range(200)]})
    with LLMServer() as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=tmp_path / "c.sqlite", progress=False)
        first = frame.llm.map("Say {text}", **kw)
        assert srv.completed == 50
        again = frame.llm.map("Say {text}", **kw)
        assert srv.completed == 50
    assert first.equals(again) and first.iloc[51] == "echo: Say t1"
