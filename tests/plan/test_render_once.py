"""A function template is called once per row per verb call, and the body sent is the body keyed.

A function may not be pure (random few-shot examples, a timestamp, a counter, a paid
look-up): the cache key and the request sent must come from the same call, and its side
effects must happen once a row. A rerun calls it again for every row (the key of a row is
only known by rendering it), so a function whose prompt changes gets new keys and is sent
again, never answered with the answer to another prompt.
"""

from __future__ import annotations

import gc
import itertools
import sqlite3
import tracemalloc
from collections import Counter

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import ConfigError
from pandas_llm._config import Settings
from pandas_llm._plan.planner import make_plan
from pandas_llm._plan.requests import RequestBuilder
from pandas_llm._store.store import Store
from pandas_llm._structured.packing import packed_key


class Counting:
    """A function template that counts its calls per row; ``fresh=True`` makes each call's
    prompt new (a counter in the text), as a template with random examples would;
    ``alone``: the text of rows that bring their own system message (never packed)."""

    def __init__(self, fresh: bool = False, alone: str | None = None):
        self.calls: Counter[str] = Counter()
        self.given: dict[str, list[str]] = {}  # per row text: the prompts returned, in order
        self.fresh, self.alone = fresh, alone
        self._n = itertools.count()

    def __call__(self, row) -> str | list[dict[str, str]]:
        self.calls[row.text] += 1
        prompt = f"Say {row.text}" + (f" #{next(self._n)}" if self.fresh else "")
        self.given.setdefault(row.text, []).append(prompt)
        if row.text == self.alone:
            return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
        return prompt

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def stored_prompts(path, base_url: str) -> dict[str, str]:
    """``{prompt: answer}`` of every chat answer in the sidecar, each checked to be stored under
    the key of the prompt it answers (the loopback server echoes the prompt it received)."""
    builder = RequestBuilder(Settings(base_url=base_url))
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, output FROM results WHERE status = 'ok'").fetchall()
    out = {}
    for key, output in rows:
        assert output.startswith("echo: "), output
        prompt = output.removeprefix("echo: ")
        assert bytes(key) == builder.encode([{"role": "user", "content": prompt}])[0], (
            f"the answer to {prompt!r} is stored under the key of another prompt"
        )
        out[prompt] = output
    return out


def frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"t{i % (n - 1)}" for i in range(n)]})  # one duplicate row


@pytest.mark.parametrize("mode, threshold", [("realtime", 1), ("batch", 1), ("auto", 1), ("auto", 10**6)])
def test_the_function_is_called_once_per_row_per_call(server, batch_opts, mode, threshold):
    df, fn = frame(), Counting()
    out = df.llm.map(fn, mode=mode, batch_threshold=threshold, **batch_opts)
    assert server.batches.batches_created == (threshold == 1 and mode != "realtime")
    assert out.tolist() == [f"echo: Say {t}" for t in df["text"]]
    assert fn.calls == Counter(df["text"])  # the duplicate row's text: twice, as it has two rows
    assert server.completed == 5  # the two equal prompts are one request
    again = df.llm.map(fn, mode=mode, batch_threshold=threshold, **batch_opts)
    assert again.tolist() == out.tolist() and server.completed == 5
    assert fn.total == 2 * len(df)  # a rerun renders each row once to find its key, and sends nothing


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_function_giving_a_new_prompt_each_call_sends_the_prompt_it_keyed(server, batch_opts, mode):
    df, fn = frame(), Counting(fresh=True)
    out = df.llm.map(fn, mode=mode, **batch_opts)
    sent = set(server.prompt_counts)
    assert len(sent) == len(df) == server.completed  # every call a new prompt: no dedup
    assert {o.removeprefix("echo: ") for o in out} == sent  # each row gets the answer to its own prompt
    assert set(stored_prompts(batch_opts["cache"], server.base_url)) == sent
    assert fn.total == len(df)
    # a rerun renders again: new prompts, new keys, sent again; no answer of an old prompt comes back
    again = df.llm.map(fn, mode=mode, **batch_opts)
    new = set(server.prompt_counts) - sent
    assert len(new) == len(df) == server.completed - len(df)
    assert {o.removeprefix("echo: ") for o in again} == new
    assert set(stored_prompts(batch_opts["cache"], server.base_url)) == sent | new
    assert fn.total == 2 * len(df)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_packed_rows_of_a_function_template_are_rendered_once(server, batch_opts, mode):
    df, fn = frame(7), Counting(fresh=True, alone="t3")
    out = df.llm.map(fn, mode=mode, rows_per_request=2, **batch_opts)
    seen: Counter[str] = Counter()
    prompts = []  # per row: what the function returned for it (rows are rendered in order)
    for t in df["text"]:
        prompts.append(fn.given[t][seen[t]])
        seen[t] += 1
    assert out.tolist() == [f"echo: {p}" for p in prompts]
    packed = pandas_llm.last_run().packing
    assert packed.rows_packed == len(df) - 1 and packed.fallback_rows == 1  # t3 is sent alone
    builder = RequestBuilder(Settings(base_url=server.base_url))
    with sqlite3.connect(batch_opts["cache"]) as db:
        stored = dict(db.execute("SELECT key, output FROM results WHERE status = 'ok'").fetchall())
    for t, prompt in zip(df["text"], prompts):
        messages = [{"role": "user", "content": prompt}]
        if t == "t3":  # sent alone, as keyed: under its own key
            key = builder.encode([{"role": "system", "content": "Be brief."}, *messages])[0]
        else:  # answered in a pack: under the packed key of the prompt it answers
            key = packed_key(builder.encode(messages)[0])
        assert stored[key] == f"echo: {prompt}"
    assert fn.total == len(df)


def test_estimate_calls_the_function_once_per_row(server, opts):
    df, fn = frame(), Counting()
    est = df.llm.estimate(fn, **opts)
    assert est.to_send == 5 and fn.total == len(df)
    fn = Counting()
    df.llm.estimate(fn, rows_per_request=2, **opts)
    assert fn.total == len(df)
    assert server.requests == 0


def test_estimate_with_a_sample_or_several_models_calls_the_function_once_per_row(server, opts):
    df, fn = frame(), Counting(fresh=True)
    est = df.llm.estimate(fn, sample=2, **opts)
    assert fn.total == len(df) and server.completed == 2
    assert est.to_send == len(df) - 2  # the prompts sampled are the ones priced: now cached
    fn = Counting()
    table = df.llm.estimate(fn, models=["gpt-4o-mini", "gpt-4.1-nano"], **opts)
    assert fn.total == len(df) and len(table) == 2
    fn = Counting()
    table = df.llm.estimate(fn, models=["gpt-4o-mini", "gpt-4.1-nano"], labels=["a", "b"], sample=1, **opts)
    assert fn.total == len(df)
    for bad in ({"models": "gpt-4o-mini"}, {"sample": 0}, {"labels": ["only"], "sample": 1}):
        with pytest.raises(ConfigError):
            df.llm.estimate(fn, **bad, **opts)
    assert fn.total == len(df)  # a bad argument is refused before the function is called


def test_the_plan_sends_the_bodies_it_keyed(server, tmp_path):
    settings = Settings(base_url=server.base_url, cache=str(tmp_path / "c.sqlite"))
    fn = Counting(fresh=True)
    with Store(settings.cache_path) as store:
        plan = make_plan(frame(), fn, settings, store)
    jobs = list(plan.jobs())
    assert len(jobs) == 6 and fn.total == 6  # nothing rendered again to send
    builder = RequestBuilder(settings)
    for u, key, body in jobs:
        assert builder.key_of(body) == key == plan.keys[u] and plan.body_of(u) == body
        assert builder.encode(plan.messages_of(u)) == (key, body)
    assert fn.total == 6


def test_rows_a_function_skips_for_na_stay_skipped_when_its_results_are_replayed(server, opts):
    df = pd.DataFrame({"text": ["a", None, "b"]})
    calls = []

    def fn(row):
        calls.append(1)
        return f"Say {row.text}"

    est = df.llm.estimate(fn, sample=1, models=["gpt-4o-mini", "gpt-4.1-nano"], **opts)
    assert len(calls) == 3 and (est["input_tokens"] > 0).all()
    one = df.llm.estimate(fn, sample=1, **opts)
    assert (one.rows, one.skipped, one.unique) == (3, 1, 2) and len(calls) == 6
    assert "Say None" not in server.prompt_counts


def test_bodies_of_rows_answered_from_the_cache_are_dropped(server, opts, tmp_path):
    settings = Settings(base_url=server.base_url, cache=str(tmp_path / "c.sqlite"))
    df = frame()
    pd.DataFrame({"text": ["t0", "t1"]}).llm.map(Counting(), cache=settings.cache_path, **opts)
    with Store(settings.cache_path) as store:
        plan = make_plan(df, Counting(), settings, store)
    assert plan.outcomes.from_cache.sum() == 2 and len(plan.todo) == 3
    assert sum(body is not None for body in plan._bodies) == 3  # the two answered are dropped


def test_the_bodies_kept_are_their_own_size_not_a_serialiser_buffer(tmp_path):
    """orjson's bytes keep its 4 KiB write buffer: 100k kept bodies would be 400 MB, not 17 MB."""
    n = 2000
    df = pd.DataFrame({"text": [f"review {i}: it was fine" for i in range(n)]})
    tracemalloc.start()
    try:
        with Store(None) as store:
            plan = make_plan(
                df, lambda row: f"Summarise: {row.text}", Settings(base_url="http://127.0.0.1:9/v1"), store
            )
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        size = sum(len(body) for body in plan._bodies)
        plan._bodies = None
        gc.collect()
        freed = held - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert freed < size + 64 * n  # the bytes and their headers and list slots, no more
