"""Batch API round trip against the loopback server: submit, poll, download, parse, cache.

    python benchmarks/batch_roundtrip.py [ROWS] [REQUESTS_PER_BATCH]

Prints wall time for a cold run (the first in the process: includes importing the openai
SDK, ~0.5 s) and a warm one (new prompts, same process), and the time of a rerun served
from the cache. The server answers in the same process, so its time (validation and
answering every line, ~10 µs a line) is included.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import pandas as pd

import pandas_llm  # noqa: F401  (registers .llm)
from pandas_llm.testing import LLMServer


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    per_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 3_000
    with LLMServer() as srv, tempfile.TemporaryDirectory() as tmp:
        opts = dict(base_url=srv.base_url, api_key="x", cache=os.path.join(tmp, "cache.sqlite"), progress=False,
                    poll_interval=0.01, batch_limits={"requests": per_batch})  # fmt: skip
        for label, prefix in (("cold", "a"), ("warm", "b")):
            df = pd.DataFrame({"text": [f"{prefix} row {i}" for i in range(rows)]})
            t0 = time.perf_counter()
            out = df.llm.map("Say: {text}", mode="batch", **opts)
            dt = time.perf_counter() - t0
            assert out.notna().all()
            print(f"{label}: {rows:,} rows in {srv.batches.batches_created} batches so far: {dt:.2f} s "
                  f"({rows / dt:,.0f} rows/s)")  # fmt: skip
        t0 = time.perf_counter()
        df.llm.map("Say: {text}", mode="batch", **opts)
        print(f"rerun from the cache: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
