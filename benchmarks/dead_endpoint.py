"""How long a run takes to give up on an endpoint that is not there, and that a blip is survived.

    python benchmarks/dead_endpoint.py [rows]

Real backoff (no patched waits), default settings (concurrency 16, max_attempts 6),
progress off. Prints, for ``rows`` (default 10,000) distinct prompts:
(1) a closed port on 127.0.0.1: seconds until FatalAPIError, retries made, rows ok;
(2) the loopback server resetting its first 3 connections, then answering: seconds,
retries, rows ok (the run must complete). No assertions: figures for the report.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time

import pandas as pd

import pandas_llm
from pandas_llm.testing import LLMServer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(rows: int) -> None:
    df = pd.DataFrame({"text": [f"row {i}" for i in range(rows)]})
    cache = tempfile.mkdtemp(prefix="pandas-llm-bench-") + "/cache.sqlite"

    url = f"http://127.0.0.1:{closed_port()}/v1"
    t0 = time.perf_counter()
    try:
        df.llm.map("{text}", base_url=url, api_key="k", progress=False, cache=cache)
        outcome = "completed (unexpected)"
    except pandas_llm.FatalAPIError as exc:
        outcome = f"FatalAPIError: {str(exc)[:90]}..."
    s = pandas_llm.last_run().stats
    print(f"closed port, {rows:,} rows: {time.perf_counter() - t0:.1f} s, {s.retries} retries, {s.ok} ok; {outcome}")

    with LLMServer() as srv:
        srv.inject(reset=True, times=3)
        t0 = time.perf_counter()
        out = df.llm.map("{text}", base_url=srv.base_url, api_key="k", progress=False, cache=cache)
        s = pandas_llm.last_run().stats
        print(
            f"3 connection resets then answers, {rows:,} rows: {time.perf_counter() - t0:.1f} s, "
            f"{s.retries} retries, {int(out.notna().sum()):,} ok"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
