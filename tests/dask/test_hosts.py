"""One cache for a cluster of several hosts (``_dask/records.py``).

Each worker process is made a host of its own (the private ``_PANDAS_LLM_TEST_HOST`` hook:
its disk is a folder of its own), so the driver's sidecar path is another file there.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

import dask.dataframe as dd
import pandas as pd
import pytest

from helpers import kill_a_worker_when, local_cluster
from pandas_llm._dask import records
from pandas_llm._store.store import Store


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    disks = tmp_path_factory.mktemp("hosts")
    with local_cluster(3, env={records.HOST_ENV: str(disks)}) as c:
        yield c, disks


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review {i}" for i in range(n)]}, index=range(1000, 1000 + n))


def ok_keys(path: str) -> set[bytes]:
    with sqlite3.connect(path) as conn:
        return {k for (k,) in conn.execute("SELECT key FROM results WHERE status = 'ok'")}


def local_sidecars(disks, path: str) -> list[str]:
    found = []
    for host in os.listdir(disks):
        local = os.path.join(disks, host, path.lstrip(os.sep))
        if os.path.exists(local):
            found.append(local)
    return found


def test_answers_paid_on_other_hosts_are_in_the_drivers_sidecar_when_compute_returns(hosts, server, opts, tmp_path):
    client, disks = hosts
    path = str(tmp_path / "driver.sqlite")
    df = frame(300)
    out = client.compute(dd.from_pandas(df, npartitions=6).llm.map("Say: {text}", cache=path, **opts)).result()
    assert out.tolist() == [f"echo: Say: {t}" for t in df["text"]]
    assert server.requests == 300
    assert len(ok_keys(path)) == 300  # every answer, on the driver, before compute returned
    local = local_sidecars(disks, path)
    assert len(local) >= 2 and sum(len(ok_keys(p)) for p in local) == 300  # each paid on its own host
    got = records.receiver(path)
    assert got is not None and got.received >= 300
    server.reset_counters()
    assert df.llm.map("Say: {text}", cache=path, **opts).equals(out)  # a pandas rerun on the driver
    assert server.requests == 0
    # a Dask rerun: each partition asks the driver for what its host lacks, wherever it lands
    again = client.compute(dd.from_pandas(df, npartitions=5).llm.map("Say: {text}", cache=path, **opts)).result()
    assert again.equals(out) and server.requests == 0


def test_a_driver_with_a_new_sidecar_receives_the_answers_the_workers_hold(hosts, server, opts, tmp_path):
    client, _ = hosts
    path = str(tmp_path / "driver.sqlite")
    ddf = dd.from_pandas(frame(60), npartitions=3)
    client.compute(ddf.llm.map("Say: {text}", cache=path, **opts)).result()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
    server.reset_counters()
    client.compute(ddf.llm.map("Say: {text}", cache=path, **opts)).result()
    assert len(ok_keys(path)) == 60  # found in the workers' sidecars (or paid again), and sent
    assert server.requests <= 60
    with Store(path) as store:
        assert store.count() == 60


def test_a_worker_killed_on_another_host_costs_at_most_its_requests_in_flight(hosts, server, opts, tmp_path):
    client, _ = hosts
    path = str(tmp_path / "driver.sqlite")
    server.latency = 0.05
    df = frame(400)
    lazy = dd.from_pandas(df, npartitions=8).llm.map("Say: {text}", concurrency=4, cache=path, **opts)
    future = client.compute(lazy)
    kill_a_worker_when(client, future, lambda: server.requests)
    out = future.result(timeout=120)
    assert out.tolist() == [f"echo: Say: {t}" for t in df["text"]]
    assert len(ok_keys(path)) == 400
    paid_twice = sum(n - 1 for n in server.prompt_counts.values())
    # what the killed worker had in flight (4), and at worst its last commit's message not yet sent
    assert paid_twice <= 8, paid_twice
    server.reset_counters()
    assert df.llm.map("Say: {text}", cache=path, **opts).equals(out) and server.requests == 0
