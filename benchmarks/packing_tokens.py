"""Prompt tokens saved by packing (rows_per_request=k), on the bundled 300 reviews.

    PYTHONPATH=. python benchmarks/packing_tokens.py

For each task and k it prints the requests sent and two prompt-token figures for the
whole frame: "estimate" is pandas-llm's own offline count (tiktoken o200k_base,
messages + response_format; what ``last_run().packing`` reports), "server" is the
usage the loopback server bills (a chars/4 estimate that, like real providers, counts
the schema). k=1 is the plain single-row run. Nothing here is timed.
"""

from __future__ import annotations

import importlib.resources
import warnings
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

import pandas_llm
from pandas_llm.testing import LLMServer


class Review(BaseModel):
    """What a product review says."""

    sentiment: Literal["positive", "negative", "mixed"] = Field(description="overall tone")
    stars: int = Field(ge=1, le=5, description="the stars the text implies")
    gift: bool = Field(description="bought as a gift")
    issues: list[str] = Field(description="problems mentioned, short phrases")
    summary: str = Field(description="at most 8 words")


LABELS = {
    "quality": "build quality, durability, defects",
    "delivery": "shipping, packaging, arrival time",
    "value": "price, value for money",
    "usability": "ease of use, setup, instructions",
    "other": "anything else",
}

TASKS = {
    "extract (json_schema)": ("extract", {"schema": Review}, "Read this review of a {product}: {review}"),
    "extract (json_object)": ("extract", {"schema": Review, "structured": "json_object"},
                              "Read this review of a {product}: {review}"),
    "classify, 5 described labels": ("classify", {"labels": LABELS}, "{review}"),
    "map, free text": ("map", {}, "Summarise in 5 words: {review}"),
}  # fmt: skip


def main() -> None:
    with importlib.resources.files("pandas_llm._data").joinpath("reviews.csv").open() as f:
        df = pd.read_csv(f)
    print(f"{len(df)} rows (bundled reviews.csv), model gpt-4o-mini, loopback server\n")
    print(f"{'task':32} {'k':>3} {'requests':>8} {'estimate':>9} {'server':>8} {'saved (est / server)':>22}")
    with LLMServer() as srv:
        opts = {"base_url": srv.base_url, "api_key": "x", "progress": False, "cache": False}
        for name, (verb, kw, template) in TASKS.items():
            base = None
            for k in (1, 5, 10, 20, 50):
                srv.reset_counters()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", pandas_llm.RunWarning)
                    getattr(df.llm, verb)(template, rows_per_request=k, **kw, **opts)
                run = pandas_llm.last_run()
                server_tokens = run.stats.prompt_tokens
                if run.packing is None:
                    est = _single_estimate(df, verb, kw, template)
                    base = (est, server_tokens)
                else:
                    est = run.packing.prompt_tokens_sent
                saved = f"{1 - est / base[0]:6.0%} / {1 - server_tokens / base[1]:6.0%}" if k > 1 else ""
                print(f"{name:32} {k:>3} {srv.requests:>8} {est:>9} {server_tokens:>8} {saved:>22}")
            print()


def _single_estimate(df: pd.DataFrame, verb: str, kw: dict, template: str) -> int:
    """The offline estimate of the single-row run, from a k=2 run's report (same method)."""
    getattr(df.llm, verb)(template, rows_per_request=2, cache=False, progress=False, client=_echo_items, **kw)
    return pandas_llm.last_run().packing.prompt_tokens_single


def _echo_items(messages, **params):  # a stand-in endpoint: only the packing report is used
    import re

    import orjson

    from pandas_llm.testing.structured import value_for

    rf = params["response_format"]
    schema = rf.get("json_schema", {}).get("schema") or rf["schema"]
    item = schema["properties"]["items"]["items"]
    ids = re.findall(r'<item id="(\d+)">\n(.*?)\n</item>', messages[-1]["content"], re.S)
    return orjson.dumps({"items": [{**value_for(item, t, schema), "id": int(i)} for i, t in ids]}).decode()


if __name__ == "__main__":
    main()
