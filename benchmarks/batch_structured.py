"""Structured verbs through the Batch API on the loopback server: what validation and typed
assembly add to a batch round trip.

    python benchmarks/batch_structured.py [ROWS]

Prints wall time for ``map`` (plain text), ``classify`` and ``extract`` (a three-field
pydantic model) with ``mode="batch"`` on new prompts each (after one warm-up run, so the
openai SDK import is not counted). The server answers in the same process, so its time
(generating JSON for the schema, ~10-20 µs a line) is included in every figure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Literal

import pandas as pd
from pydantic import BaseModel

import pandas_llm  # noqa: F401  (registers .llm)
from pandas_llm.testing import LLMServer


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "mixed"]
    stars: int
    summary: str


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with LLMServer() as srv, tempfile.TemporaryDirectory() as tmp:
        opts = dict(base_url=srv.base_url, api_key="x", cache=os.path.join(tmp, "cache.sqlite"), progress=False,
                    poll_interval=0.01)  # fmt: skip
        pd.DataFrame({"text": ["warm-up"]}).llm.map("{text}", mode="batch", **opts)
        runs = {
            "map": lambda df: df.llm.map("Say: {text}", mode="batch", **opts),
            "classify": lambda df: df.llm.classify("{text}", labels=["billing", "bug", "other"], mode="batch", **opts),
            "extract": lambda df: df.llm.extract("Review: {text}", schema=Review, mode="batch", **opts),
        }
        for name, run in runs.items():
            df = pd.DataFrame({"text": [f"{name} row {i}" for i in range(rows)]})
            t0 = time.perf_counter()
            out = run(df)
            dt = time.perf_counter() - t0
            assert len(out) == rows and out.notna().all(axis=None)
            print(f"{name:>8} mode='batch': {rows:,} rows {dt:.2f} s ({rows / dt:,.0f} rows/s)")


if __name__ == "__main__":
    main()
