"""embed figures: rows/s and client CPU per row, peak memory at 1M rows, the rerun from cache.

The loopback server (``python -m pandas_llm.testing``) runs in its own process (CPU 0 when
the machine has two); each client run is a fresh process (CPU 1) that prints one JSON
line. Figures: ``rows_per_s`` and ``cpu_ms_per_row`` over the ``embed`` call (the frame
already built, the package imported); ``peak_rss_mb`` is the process's peak resident set;
``overhead_mb`` = peak - RSS before the call - the result array (the target: <= 300 MB).

    python benchmarks/embed.py            # 100,000 texts; 1M rows x 256 dimensions (~3 min)
    python benchmarks/embed.py --quick    # 20,000 and 100,000 rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

DIMS = 256


def client(rows: int, dims: int, cache: str, base_url: str, concurrency: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pandas as pd
    from _clients import _rss_mb

    import pandas_llm

    s = pd.Series([f"review {i}: the parcel came on time and it works" for i in range(rows)])
    import resource
    import time

    before = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    v = s.llm.embed(dimensions=dims, base_url=base_url, api_key="x", cache=cache, progress=False,
                    concurrency=concurrency)  # fmt: skip
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = pandas_llm.last_run().stats
    print(json.dumps({
        "rows": rows, "dims": dims, "shape": list(v.shape), "nan_rows": int(pd.isna(v[:, 0]).sum()),
        "cached": stats.cached, "requests": pandas_llm.last_run().packing.requests,
        "elapsed_s": round(elapsed, 2), "rows_per_s": round(rows / elapsed), "cpu_us_per_row": round(cpu / rows * 1e6, 1),
        "peak_rss_mb": round(peak), "rss_before_mb": round(before), "result_mb": round(v.nbytes / 2**20),
        "overhead_mb": round(peak - before - v.nbytes / 2**20),
    }))  # fmt: skip


def _pin(cpu: int):
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
            os.sched_setaffinity(0, {cpu})

    return pin


def run(rows: int, dims: int, cache: str, base_url: str, concurrency: int) -> dict:
    cmd = [sys.executable, __file__, "--client", str(rows), str(dims), cache, base_url, str(concurrency)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=_pin(1))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        rows, dims, cache, base_url, conc = args.client
        client(int(rows), int(dims), cache, base_url, int(conc))
        return
    server = subprocess.Popen([sys.executable, "-m", "pandas_llm.testing"], stdout=subprocess.PIPE, text=True,
                              preexec_fn=_pin(0))  # fmt: skip
    try:
        base_url = server.stdout.readline().strip()  # type: ignore[union-attr]
        speed_rows, memory_rows = (20_000, 100_000) if args.quick else (100_000, 1_000_000)
        with tempfile.TemporaryDirectory() as tmp:
            for label, rows in (("speed", speed_rows), ("memory", memory_rows)):
                cache = os.path.join(tmp, f"{label}.sqlite")
                first = run(rows, DIMS, cache, base_url, args.concurrency)
                print(f"{label} first run  {json.dumps(first)}", flush=True)
                again = run(rows, DIMS, cache, base_url, args.concurrency)
                print(f"{label} from cache {json.dumps(again)}", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
