"""The real local model (pandas-llm[local]): start-up time and throughput on this CPU.

    python benchmarks/local_model.py [ROWS]

For each llama.cpp thread count (1, 2) and client concurrency (1, 2, 8) it starts a
``LocalServer``, prints how long it took to answer, then maps ROWS (default 24) distinct
short prompts (translate a phrase, greedy, one line, cache off) and prints the wall time,
answers per second and completion tokens per second. The server runs one request at a
time, so concurrency only overlaps the client's and HTTP's work with the model's.
"""

from __future__ import annotations

import sys
import time
import warnings

import pandas as pd

import pandas_llm
from pandas_llm.local import LocalServer, unavailable_reason

SYSTEM = "Translate the user's text into French. Reply with the French translation only."


def main() -> None:
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    df = pd.DataFrame({"text": [f"item number {i}" for i in range(rows)]})
    print(f"{rows} distinct prompts per run")
    for threads in (1, 2):
        t0 = time.perf_counter()
        with LocalServer(n_threads=threads) as srv:
            print(f"n_threads={threads}: ready in {time.perf_counter() - t0:.2f}s")
            for concurrency in (1, 2, 8):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", pandas_llm.RunWarning)
                    df.llm.map("{text}", system=SYSTEM, base_url=srv.base_url, temperature=0, max_tokens=48,
                               stop=["\n"], cache=False, progress=False, concurrency=concurrency)  # fmt: skip
                seconds = time.perf_counter() - t0
                s = pandas_llm.last_run().stats
                print(
                    f"  concurrency={concurrency}: {seconds:.2f}s, {s.ok / seconds:.1f} answers/s, "
                    f"{s.completion_tokens / seconds:.0f} completion tokens/s ({s.ok}/{rows} ok)"
                )


if __name__ == "__main__":
    main()
