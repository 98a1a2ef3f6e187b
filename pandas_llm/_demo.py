"""``python -m pandas_llm demo``: enrich a bundled CSV of product reviews, then show the cache.

It starts an OpenAI-compatible endpoint on 127.0.0.1 (no API key, no network): a real
LLM, SmolLM2-135M on llama.cpp's server, when ``pandas-llm[local]`` is installed (see
``pandas_llm.local``), else the built-in loopback server, which answers deterministically;
it says which. It runs one ``map`` over the reviews with a progress bar, prints the head
and a summary, then runs the same line again to show every answer coming back from the
sidecar cache for free. ``--endpoint local|loopback`` chooses instead of ``auto``.

Each pass ends with one summary line (``First run :`` / ``Second run:``) counting rows,
rows from cache, requests the server received (counted by the server itself), answered
and failed rows. The demo exits with status 1 and one line saying why when no row was
answered, when the endpoint stopped the run, or when the local server died or could not
start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any, NamedTuple

import pandas as pd

import pandas_llm

from ._errors import FatalAPIError, LocalServerError, PandasLLMError
from ._pricing import money
from .testing import LLMServer

TEMPLATE = "Summarise this review of a {product} in five words: {review}"
#: For the real model: greedy (so a rerun asks the same), one line, room for a short answer.
LOCAL_PARAMS = dict(temperature=0, max_tokens=48, stop=["\n"])
#: Rows the real model answers by default: it serves one request at a time on the CPU.
LOCAL_ROWS = 20


def load_reviews() -> pd.DataFrame:
    """The bundled sample: 300 short product reviews (review_id, product, stars, review)."""
    with resources.files("pandas_llm._data").joinpath("reviews.csv").open("rb") as f:
        return pd.read_csv(f)


class DemoError(PandasLLMError):
    """The demo could not show what it is for (no row was answered)."""


def _last_run() -> pandas_llm.RunReport:
    """The report of the map the demo just ran (every map records one)."""
    report = pandas_llm.last_run()
    if report is None:
        raise DemoError("the demo's run left no report")
    return report


def _answered() -> tuple[int, int]:
    """Rows of the last run with an answer, and rows without one."""
    status = _last_run().details["status"]
    ok = int((status == "ok").sum())
    return ok, len(status) - ok


def _summary(label: str, seconds: float, server_requests: int) -> str:
    s = _last_run().stats
    ok, failed = _answered()
    cost = money(s.cost if s.cost_known else None)
    return (
        f"{label}: {s.total} rows, {s.unique} distinct prompts, {s.cached} rows from cache, "
        f"{server_requests} requests sent, {ok} answered, {failed} failed, {s.prompt_tokens} prompt + "
        f"{s.completion_tokens} completion tokens, {cost}, {seconds:.2f}s"
    )


def _nothing_answered() -> str:
    """Why no row got an answer, in one line: the failures by kind and the first error."""
    d = _last_run().details
    kinds = ", ".join(f"{n} {status}" for status, n in d["status"].value_counts().items())
    errors = d["error"].dropna()
    first = str(errors.iloc[0]).splitlines()[0][:300] if len(errors) else "no error recorded"
    return f"no row was answered ({kinds}); the first error: {first}"


class Endpoint(NamedTuple):
    description: str
    options: dict  # keywords for ``map``
    server: Any  # has ``.requests``: what it received
    rows: int | None  # how many reviews to use unless --rows says


@contextlib.contextmanager
def open_endpoint(kind: str = "auto") -> Iterator[Endpoint]:
    """Start the demo's endpoint: the real local model (``kind="local"``), the loopback server
    (``"loopback"``), or the first that is installed (``"auto"``)."""
    note = ""
    if kind in ("auto", "local"):
        from . import local

        reason = local.unavailable_reason()
        if reason is None:
            with local.LocalServer() as srv:
                yield Endpoint(
                    f"a real LLM, SmolLM2-135M-Instruct on llama.cpp's server at {srv.base_url} "
                    f"(CPU, offline, no key; served as model {srv.model!r}: the dollars are what "
                    f"{srv.model} would charge, the local run is free)",
                    dict(base_url=srv.base_url, model=srv.model, concurrency=2, **LOCAL_PARAMS),
                    srv,
                    LOCAL_ROWS,
                )
            return
        if kind == "local":
            raise local.LocalServerError(reason)
        note = f"\n          For real answers from a small LLM on this CPU: {local.INSTALL}"
    with LLMServer(latency=0.02) as srv:
        yield Endpoint(
            f"the built-in loopback server at {srv.base_url} (deterministic echo answers, no key needed){note}",
            dict(base_url=srv.base_url, api_key="demo", concurrency=16),
            srv,
            None,
        )


def run(rows: int | None = None, progress: bool = True, endpoint: str = "auto") -> pd.DataFrame:
    workdir = tempfile.mkdtemp(prefix="pandas-llm-demo-")
    cache = os.path.join(workdir, "cache.sqlite")
    with open_endpoint(endpoint) as (description, endpoint_options, srv, default_rows):
        df = load_reviews()
        rows = default_rows if rows is None else rows
        if rows is not None:
            df = df.head(rows)
        print(f"Endpoint: {description}")
        print(f"Cache:    {cache}\n")
        options = dict(cache=cache, progress=progress, **endpoint_options)
        t0 = time.perf_counter()
        df["summary"] = df.llm.map(TEMPLATE, **options)
        first = _summary("First run ", time.perf_counter() - t0, srv.requests)
        if _answered()[0] == 0:
            print(first)
            raise DemoError(_nothing_answered())
        head = df[["product", "stars", "summary"]].head(8).copy()
        head["summary"] = head["summary"].str.slice(0, 70)
        print(head.to_string())
        print()
        before = srv.requests
        t0 = time.perf_counter()
        again = df.llm.map(TEMPLATE, **options)
        second = _summary("Second run", time.perf_counter() - t0, srv.requests - before)
        answered = df["summary"].notna()  # the second run resends only the failed rows
        if not again[answered].equals(df.loc[answered, "summary"]):
            raise DemoError("the second run did not give back the first run's answers from the cache")
    print(first)
    print(second)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pandas_llm demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"use only the first N reviews (default: all; {LOCAL_ROWS} for the real model)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--endpoint",
        choices=("auto", "local", "loopback"),
        default="auto",
        help="local: the real model of pandas-llm[local]; loopback: the built-in echo server; auto (default): local if installed",
    )
    args = parser.parse_args(argv)
    try:
        run(args.rows, progress=not args.no_progress, endpoint=args.endpoint)
    except (DemoError, FatalAPIError, LocalServerError) as exc:
        parser.exit(1, f"error: {exc}\n")
