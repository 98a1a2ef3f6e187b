"""One cache across hosts: what a Dask compute ships to the driver's sidecar, and what reruns pay.

A LocalCluster of N worker processes, each made a host of its own (the private test hook
``_PANDAS_LLM_TEST_HOST``: its disk is a folder of its own, so the driver's cache path is
another file there), maps a frame against the loopback server. Prints the records sent to
the driver and their bytes (as counted by the partitions: texts + key + ~64 for the
numbers), the records the driver sent back to partitions that asked, and the requests
paid by a pandas rerun on the driver, a Dask rerun with other partitions (they land on
other hosts), and a compute during which a worker is killed.

    python benchmarks/dask_hosts.py                       # 3 workers, 2,000 rows
    python benchmarks/dask_hosts.py --workers 4 --rows 5000 --words 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--words", type=int, default=8, help="words per row (the echo answer repeats them)")
    args = parser.parse_args()

    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster

    import pandas_llm  # noqa: F401
    from pandas_llm._dask import records
    from pandas_llm.testing import LLMServer

    with tempfile.TemporaryDirectory() as tmp, LLMServer(latency=0.02) as srv:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                               worker_dashboard_address=None, env={records.HOST_ENV: os.path.join(tmp, "hosts")})  # fmt: skip
        client = Client(cluster)
        opts = {"base_url": srv.base_url, "api_key": "x", "progress": False, "cache": os.path.join(tmp, "d.sqlite")}
        filler = " ".join(["word"] * args.words)
        df = pd.DataFrame({"text": [f"row {i} {filler}" for i in range(args.rows)]})
        parts = 4 * args.workers
        t = time.perf_counter()
        out = client.compute(dd.from_pandas(df, npartitions=parts).llm.map("Say: {text}", **opts)).result()
        took = time.perf_counter() - t
        got = records.receiver(opts["cache"])
        assert got is not None
        print(f"{args.workers} hosts, {args.rows} rows, {parts} partitions: {srv.requests} requests in {took:.1f} s; "
              f"{got.received} records shipped, {got.bytes / max(got.received, 1):.0f} bytes/record, "
              f"{got.messages} messages")  # fmt: skip
        srv.reset_counters()
        again = df.llm.map("Say: {text}", **opts)
        assert again.equals(out)
        print(f"pandas rerun on the driver: {srv.requests} requests")
        srv.reset_counters()
        before = got.replied
        again = client.compute(dd.from_pandas(df, npartitions=parts + 1).llm.map("Say: {text}", **opts)).result()
        assert again.tolist() == out.tolist()
        print(
            f"Dask rerun, {parts + 1} partitions: {srv.requests} requests; {got.replied - before} records "
            "sent back by the driver"
        )
        srv.reset_counters()
        srv.latency = 0.05
        df2 = df.assign(text="again " + df["text"])
        future = client.compute(dd.from_pandas(df2, npartitions=parts).llm.map("Say: {text}", concurrency=4, **opts))
        while srv.requests < args.rows // 5:
            time.sleep(0.01)
        victim = sorted(client.scheduler_info()["workers"])[0]
        with contextlib.suppress(Exception):
            client.run(os._exit, 1, workers=[victim])
        future.result()
        twice = sum(n - 1 for n in srv.prompt_counts.values())
        srv.reset_counters()
        df2.llm.map("Say: {text}", **opts)
        print(
            f"a worker killed mid-compute: {twice} requests paid twice; pandas rerun on the driver: "
            f"{srv.requests} requests"
        )
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
