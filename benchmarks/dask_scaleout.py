"""Scale-out on Dask: one account limit shared by every worker process, against the naive way.

A LocalCluster of N worker processes (1 thread each) maps the same frame against the
loopback server with one account limit (default 6,000 RPM in 1 s windows, 50 ms latency),
either with ``ddf.llm.map`` (the coordinator hands out grants in blocks) or naively with
``ddf.map_partitions(lambda p: p.llm.map(...))`` (every worker learns the whole limit from
the headers on its own). Prints rows/s, the share of the limit used, 429s and wrong rows,
for a fresh cluster's first compute ("cold": every worker process also imports Dask's
DataFrame and pandas_llm and loads the tokenizer, ~0.5 s of CPU each, which 8 workers on
2 cores pay as ~2 s of wall time) and for a second frame on the same cluster ("warm").

    python benchmarks/dask_scaleout.py                 # 4 and 8 workers, both ways (~4 min)
    python benchmarks/dask_scaleout.py --workers 4 --rows 1000 --ways shared
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")


def naive_part(part, template, opts):
    import pandas_llm  # noqa: F401  (registers the accessor on the worker)

    return part.llm.map(template, **opts)


def run(workers: int, rows: int, way: str, rpm: int, latency: float) -> None:
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster

    import pandas_llm  # noqa: F401
    from pandas_llm.testing import LLMServer

    with LLMServer(rpm=rpm, window=1.0, latency=latency) as srv, tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0", worker_dashboard_address=None)  # fmt: skip
        client = Client(cluster)
        opts = {"base_url": srv.base_url, "api_key": "x", "progress": False, "cache": os.path.join(tmp, "c.sqlite")}
        try:
            client.run(lambda: None)  # workers up before the clock starts
            for compute in ("cold", "warm"):  # a fresh cluster's first compute, then another frame on it
                df = pd.DataFrame({"text": [f"{way} {workers} {compute} review {i}" for i in range(rows)]})
                ddf = dd.from_pandas(df, npartitions=workers * 2)
                if way == "shared":
                    lazy = ddf.llm.map("Say: {text}", **opts)
                else:
                    lazy = ddf.map_partitions(naive_part, "Say: {text}", opts, meta=("text", "string"))
                srv.reset_counters()
                t = time.perf_counter()
                out = client.compute(lazy).result()
                elapsed = time.perf_counter() - t
                want = [f"echo: Say: {text}" for text in df["text"]]
                wrong = sum(a != b for a, b in zip(out.tolist(), want))
                rate = rows / elapsed
                print(
                    f"{way:<7} {workers} workers  {compute}  {rows} rows  {rate:7.1f} rows/s  "
                    f"{rate / (rpm / 60):6.1%} of the limit  429s {srv.rate_limited} "
                    f"({srv.rate_limited / max(srv.requests, 1):.2%} of requests)  wrong rows {wrong}",
                    flush=True,
                )
        finally:
            client.close()
            cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="4,8")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--ways", default="shared,naive")
    ap.add_argument("--rpm", type=int, default=6000)
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.rpm} RPM in 1 s windows, "
          f"{args.latency * 1000:.0f} ms latency")  # fmt: skip
    for workers in (int(w) for w in args.workers.split(",")):
        for way in args.ways.split(","):
            run(workers, args.rows, way, args.rpm, args.latency)


if __name__ == "__main__":
    main()
