"""Inputs are checked before anything is spent; what the library raises on purpose is a PandasLLMError."""

from __future__ import annotations

import ast
import asyncio
import io
import logging
import pathlib

import numpy as np
import pandas as pd
import pytest

import pandas_llm
from pandas_llm._config import Settings
from pandas_llm._display.progress import Snapshot, TqdmObserver
from pandas_llm._errors import ConfigError, PandasLLMError, TemplateError


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"temperature": "hot"}, "temperature='hot': the API takes a number from 0 to 2"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": "100"}, "max_completion_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"seed": "42"}, "seed"),
        ({"seed": 4.2}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"logprobs": 1}, "logprobs"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"50256": 200}}, "logit_bias"),
        ({"response_format": "json"}, "response_format"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_generation_parameters_are_checked_before_any_request(server, opts, kw, words):
    df = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        df.llm.map("{text}", **opts, **kw)
    with pytest.raises(ConfigError):
        pandas_llm.settings(**kw).__enter__()
    assert server.requests == 0


def test_good_generation_parameters_pass(server, opts):
    df = pd.DataFrame({"text": ["a"]})
    out = df.llm.map("{text}", **opts, temperature=0, top_p=1, max_tokens=50, seed=np.int64(3), stop=["\n", "END"],
                     presence_penalty=-2, frequency_penalty=1.5, logprobs=False, logit_bias={"50256": -100})  # fmt: skip
    assert out.notna().all()


@pytest.mark.parametrize(
    "kw",
    [
        {"concurrency": True},
        {"concurrency": 0},
        {"max_attempts": True},
        {"timeout": True},
        {"rpm": True},
        {"max_cost": False},
        {"deadline": True},
        {"poll_interval": True},
        {"cache": 123},
        {"api_key": 123},
    ],
)
def test_booleans_and_wrong_types_are_refused_where_a_value_is_expected(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        Settings().merged(**kw)


def test_workers_are_capped_at_the_requests_to_send(opts):
    seen = []

    async def client(messages, **params):
        seen.append(len(asyncio.all_tasks()))
        return "ok"

    df = pd.DataFrame({"text": [f"row {i}" for i in range(20)]})
    out = df.llm.map("{text}", client=client, concurrency=10**6, cache=False, progress=False)
    assert out.tolist() == ["ok"] * 20
    assert max(seen) <= 20 + 5  # 20 workers at most, plus the run's own few tasks


def test_packed_runs_cap_their_workers_too(server, opts):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    df = pd.DataFrame({"text": [f"row {i}" for i in range(6)]})
    out = df.llm.extract("{text}", schema, **opts, rows_per_request=3, concurrency=10**6)
    assert len(out) == 6 and out["n"].notna().all()


def test_classify_with_one_label_is_refused_like_no_labels(server, opts):
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(ConfigError, match="one label"):
        df.llm.classify("{text}", labels=["only"], **opts)
    with pytest.raises(ConfigError, match="empty"):
        df.llm.classify("{text}", labels=[], **opts)
    assert server.requests == 0
    out = df.llm.classify("{text}", labels=["only"], multi=True, **opts)  # which rows it applies to: a real question
    assert len(out) == 1


def test_duplicate_columns_the_template_does_not_read_do_not_block(server, opts):
    df = pd.DataFrame([["a", 1, 2]], columns=["text", "x", "x"])
    assert df.llm.map("{text}", **opts).tolist() == ["echo: a"]
    with pytest.raises(TemplateError, match="several columns"):
        df.llm.map("{x}", **opts)
    assert df.llm.map(lambda row: f"say {row['text']}", **opts).tolist() == ["echo: say a"]
    with pytest.raises(TemplateError, match="several columns"):
        df.llm.map(lambda row: f"say {row['x']}", **opts)


@pytest.mark.parametrize("name", ["Ratio a:b", "wow!", "a{b}"])
def test_a_column_a_placeholder_cannot_spell_gets_advice_to_use_a_function(opts, name):
    df = pd.DataFrame({name: ["1:2"], "other": ["x"]})
    template = "Explain {" + name + "}"
    with pytest.raises(TemplateError) as info:
        df.llm.map(template, **opts)
    message = str(info.value)
    assert "function template" in message and f"row[{name!r}]" in message
    assert "Did you mean" not in message


def test_function_templates_skip_rows_whose_cells_they_read_are_na(server, opts):
    df = pd.DataFrame({"text": ["good", None, "fine"], "unused": [None, "x", None]})
    out = df.llm.map(lambda row: f"Summarise: {row.text}", **opts, details=True)
    assert out["status"].tolist() == ["ok", "skipped", "ok"]
    assert out["output"].tolist()[0] == "echo: Summarise: good" and pd.isna(out["output"].iloc[1])
    assert server.requests == 2  # "Summarise: None" is never sent
    empty = df.llm.map(lambda row: "Summarise: " + row.get("text"), **opts, na="empty")
    assert empty.tolist() == ["echo: Summarise: good", "echo: Summarise: ", "echo: Summarise: fine"]
    both = df.llm.map(lambda row: f"{row['text']} / {row['unused']}", **opts, details=True)
    assert both["status"].tolist() == ["skipped", "skipped", "skipped"]


def test_a_function_template_row_reads_every_cell_through_na_however_it_is_read(server, opts):
    df = pd.DataFrame({"title": ["Dune", "Emma"], "author": ["Herbert", None]})
    for read in (lambda row: f"Describe {row}", lambda row: str(dict(row)), lambda row: repr(row.values())):
        out = df.llm.map(read, **opts, details=True)
        assert out["status"].tolist() == ["ok", "skipped"]  # the NA author is never sent as 'nan'
    empty = df.llm.map(lambda row: f"{row}", **opts, na="empty")
    assert empty.iloc[1] == "echo: {'title': 'Emma', 'author': ''}"


def test_iterating_a_function_template_row_is_an_error_before_anything_is_sent(server, opts):
    # a dict gives its column names, a pandas row its values: " by ".join(row) would make every
    # prompt "title by author", one request whose answer lands on every row
    df = pd.DataFrame({"title": ["Dune", "Emma"], "author": ["Herbert", "Austen"]})
    with pytest.raises(TemplateError, match=r"row.keys\(\) for the names or row.values\(\)"):
        df.llm.map(lambda row: " by ".join(map(str, row)), **opts)
    assert server.requests == 0
    out = df.llm.map(lambda row: " by ".join(map(str, row.values())), **opts)
    assert out.tolist() == ["echo: Dune by Herbert", "echo: Emma by Austen"]


def test_a_column_named_like_a_dict_method_is_the_column_as_an_attribute(server, opts):
    df = pd.DataFrame({"items": ["pen", "ink"], "values": [1, 2], "count": [3, 4]})
    out = df.llm.map(lambda row: f"{row.items} {row.values} {row.count}", **opts)
    assert out.tolist() == ["echo: pen 1 3", "echo: ink 2 4"]  # not "<bound method ...>"


def test_rows_skipped_for_na_are_in_the_run_summary(server, opts, caplog):
    df = pd.DataFrame({"text": ["a", None, None, "b"]})
    with caplog.at_level(logging.INFO, logger="pandas_llm"):
        df.llm.map("{text}", **opts)
    assert "2 rows skipped (NA cells, not sent)" in caplog.text
    stats = pandas_llm.last_run().stats
    snap = Snapshot.of(stats, stats.finished)
    assert "2 rows skipped (NA)" in snap.counts()
    out = io.StringIO()
    bar = TqdmObserver(disable=False, file=out)
    bar.start(stats)
    bar.close(stats)
    assert "skipped_na=2" in out.getvalue()


# Raising a builtin exception on purpose is a bug: users catch PandasLLMError. Protocol
# exceptions (AttributeError from __getattr__, IndexError from __getitem__, an abstract
# method) and parse errors caught inside the same module are the only exceptions.
_ALLOWED = {
    ("prompts.py", "AttributeError"),
    ("planner.py", "AttributeError"),
    ("_errors.py", "AttributeError"),  # the module __getattr__ of a deprecated name
    ("dedup.py", "IndexError"),
    ("progress.py", "NotImplementedError"),
    ("wire.py", "ValueError"),  # a malformed response, caught and mapped in wire.py
    ("files.py", "ValueError"),  # a malformed upload to the loopback server, answered with a 400
    ("_pricing.py", "ValueError"),  # a damaged entry of prices.json, caught in price_for (the table says)
}
_BUILTIN = {n for n in dir(__builtins__) if isinstance(getattr(__builtins__, n, None), type)} if not isinstance(
    __builtins__, dict) else {n for n, v in __builtins__.items() if isinstance(v, type)}  # fmt: skip


def test_the_package_raises_no_builtin_exception_on_purpose():
    root = pathlib.Path(pandas_llm.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in _BUILTIN and issubclass(_builtin(name), BaseException) and (path.name, name) not in _ALLOWED:
                    found.append(f"{path.relative_to(root)}:{node.lineno} raise {name}")
    assert not found, found


def _builtin(name):
    import builtins

    return getattr(builtins, name)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pandas_llm.Price.per_million(input=-1, output=1),
        lambda: pandas_llm.Price.per_million(input="1", output=1),
        lambda: pd.DataFrame({"text": ["a"]}).llm.map("{text!x}", cache=False, progress=False),
        lambda: Settings(cache=123),
    ],
)
def test_the_issue_examples_raise_pandas_llm_errors(call):
    with pytest.raises(PandasLLMError):
        call()


def test_a_batch_job_counts_rows_skipped_for_na(server, opts):
    df = pd.DataFrame({"text": ["a", None, "b"]})
    job = df.llm.submit("{text}", **opts)
    job.result()
    status = job.status()
    assert status.counts()["skipped"] == 1 and "(1 skipped: NA cells)" in repr(status)
