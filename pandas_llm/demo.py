"""``python -m pandas_llm demo``: enrich a bundled CSV of product reviews, then show the cache.

It starts the built-in loopback server (an OpenAI-compatible endpoint on 127.0.0.1 that
answers deterministically, so no API key and no network are needed), runs one ``map``
over a few hundred reviews with a progress bar, prints the head and a summary, then runs
the same line again to show every answer coming back from the sidecar cache for free.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from importlib import resources

import pandas as pd

import pandas_llm
from pandas_llm.testing import LLMServer

TEMPLATE = "Summarise this review of a {product} in five words: {review}"


def load_reviews() -> pd.DataFrame:
    """The bundled sample: 300 short product reviews (review_id, product, stars, review)."""
    with resources.files("pandas_llm.data").joinpath("reviews.csv").open("rb") as f:
        return pd.read_csv(f)


def _summary(label: str, seconds: float, server_requests: int) -> str:
    s = pandas_llm.last_run().stats
    cost = f"${s.cost:.4f}" if s.cost_known else "price unknown"
    return (
        f"{label}: {s.total} rows, {s.unique} distinct prompts, {s.cached} rows from cache, "
        f"{server_requests} requests sent, {s.prompt_tokens} prompt + {s.completion_tokens} "
        f"completion tokens, {cost}, {seconds:.2f}s"
    )


def run(rows: int | None = None, progress: bool = True) -> pd.DataFrame:
    df = load_reviews()
    if rows is not None:
        df = df.head(rows)
    workdir = tempfile.mkdtemp(prefix="pandas-llm-demo-")
    cache = os.path.join(workdir, "cache.sqlite")
    with LLMServer(latency=0.02) as srv:
        print(f"Endpoint: the built-in loopback server at {srv.base_url} (deterministic echo answers, no key needed)")
        print(f"Cache:    {cache}\n")
        options = dict(base_url=srv.base_url, api_key="demo", cache=cache, progress=progress, concurrency=16)
        t0 = time.perf_counter()
        df["summary"] = df.llm.map(TEMPLATE, **options)
        first = _summary("First run ", time.perf_counter() - t0, srv.requests)
        head = df[["product", "stars", "summary"]].head(8).copy()
        head["summary"] = head["summary"].str.slice(0, 70)
        print(head.to_string())
        print()
        before = srv.requests
        t0 = time.perf_counter()
        again = df.llm.map(TEMPLATE, **options)
        second = _summary("Second run", time.perf_counter() - t0, srv.requests - before)
        assert again.equals(df["summary"])
    print(first)
    print(second)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pandas_llm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="use only the first N reviews")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run(args.rows, progress=not args.no_progress)
