"""Messages from the partitions to the driver (``_dask/events.py``)."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

from helpers import local_cluster
from pandas_llm._dask.events import Channel, send


def _tell(part: pd.DataFrame, topic: str) -> pd.DataFrame:
    for i in part["i"]:
        send(topic, {"i": int(i)})
    return part


def _received_all(n: int) -> tuple[Channel, list[int]]:
    got: list[int] = []
    return Channel(lambda msg: got.append(msg["i"])), got


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_partitions_in_this_process_reach_the_handler(scheduler):
    ddf = dd.from_pandas(pd.DataFrame({"i": range(40)}), npartitions=4)
    channel, got = _received_all(40)
    with dask.config.set(scheduler=scheduler):
        ddf.map_partitions(_tell, channel.topic, meta=ddf._meta).compute()
    channel.close()
    assert sorted(got) == list(range(40))
    send(channel.topic, {"i": -1})  # closed: dropped
    assert -1 not in got


def test_worker_processes_reach_the_handler_before_compute_returns():
    with local_cluster(2):
        ddf = dd.from_pandas(pd.DataFrame({"i": range(200)}), npartitions=8)
        for _ in range(3):
            channel, got = _received_all(200)
            ddf.map_partitions(_tell, channel.topic, meta=ddf._meta).compute()
            assert sorted(got) == list(range(200))  # every message, before the result
            channel.close()


def test_no_topic_sends_nothing():
    send(None, {"i": 1})  # no error, nowhere to go
