"""``mode="batch"`` / ``"auto"`` on Dask: one Batch API job on the driver, partitions that only copy.

Threaded scheduler unless said: the loopback server counts realtime requests (``server.requests``)
and Batch API traffic (``server.batches``) alike, in this process.
"""

from __future__ import annotations

import textwrap

import dask.dataframe as dd
import pandas as pd
import pytest

import pandas_llm
from helpers import kill_when, local_cluster

REVIEW = {
    "type": "object",
    "required": ["sentiment", "stars"],
    "properties": {"sentiment": {"enum": ["positive", "negative"]}, "stars": {"type": "integer"}},
}


def frame(n: int, distinct: int | None = None) -> pd.DataFrame:
    texts = [f"review {i % (distinct or n)}" for i in range(n)]
    return pd.DataFrame({"text": texts, "other": range(n)}, index=range(1000, 1000 + n))


def echoes(df: pd.DataFrame) -> list[str]:
    return [f"echo: Say: {t}" for t in df["text"]]


def computed(lazy):
    return lazy.compute(scheduler="threads")


def test_one_job_for_all_partitions_dedup_across_them_and_no_request_at_compute(server, batch_opts):
    df = frame(40, distinct=10)  # every partition holds the same 10 texts
    ddf = dd.from_pandas(df, npartitions=4)
    lazy = ddf.llm.map("Say: {text}", mode="batch", **batch_opts)  # submits and waits here
    assert (server.batches.batches_created, server.batches.lines_answered) == (1, 10)
    out = computed(lazy)
    assert out.tolist() == echoes(df) and out.index.equals(df.index) and out.dtype == "string"
    assert lazy.divisions == ddf.divisions and str(lazy._meta.dtype) == "string"
    assert server.requests == 0  # no partition sent anything in realtime
    assert pandas_llm.last_run().stats.total == 40  # the driver's job, over the whole collection
    # a rerun submits nothing: every answer is in the driver's sidecar
    again = computed(ddf.llm.map("Say: {text}", mode="batch", **batch_opts))
    assert again.equals(out)
    assert (server.batches.batches_created, server.batches.lines_answered, server.requests) == (1, 10, 0)
    # and the pandas accessor, realtime, finds them too
    assert df.llm.map("Say: {text}", **batch_opts).equals(out) and server.requests == 0


def test_extract_classify_details_and_series_are_the_pandas_batch_values(server, batch_opts):
    df = frame(12)
    ddf = dd.from_pandas(df, npartitions=3)
    calls = {
        "extract": lambda o, **kw: o.llm.extract("Review: {text}", schema=REVIEW, **kw),
        "classify": lambda o, **kw: o.llm.classify("{text}", labels=["billing", "bug"], **kw),
        "details": lambda o, **kw: o.llm.map("Say: {text}", details=True, **kw),
        "series": lambda o, **kw: o["text"].llm.map("Say: {}", **kw),
    }
    for name, call in calls.items():
        lazy = call(ddf, mode="batch", max_cost=1.0, **batch_opts)  # one cap: the driver's job
        out = computed(lazy)
        meta = pd.DataFrame(lazy._meta) if isinstance(lazy._meta, pd.Series) else lazy._meta
        assert meta.dtypes.astype(str).tolist() == pd.DataFrame(out).dtypes.astype(str).tolist(), name
        want = call(df, mode="batch", **batch_opts)  # the same requests: from the cache
        if name == "details":  # the Dask job paid; the pandas call read the cache: its rows show 0, and what it saved
            assert not out["from_cache"].any() and want["from_cache"].all()
            assert (want[["prompt_tokens", "completion_tokens", "cost"]] == 0).all().all()
            assert (out["saved_cost"] == 0).all() and out["cost"].sum() > 0
            pd.testing.assert_series_equal(want["saved_cost"], out["cost"], check_names=False)
            paid = ["from_cache", "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "saved_cost"]
            out, want = out.drop(columns=paid), want.drop(columns=paid)
        pd.testing.assert_frame_equal(pd.DataFrame(out), pd.DataFrame(want), obj=name)
    # 3 jobs: the Series' "Say: {}" renders the very prompts of "Say: {text}", answered by the details job
    assert server.batches.batches_created == 3 and server.requests == 0


def test_bad_input_fails_before_the_collection_is_computed_or_anything_sent(server, batch_opts):
    loads = []

    def load(i):
        loads.append(i)
        return pd.DataFrame({"text": [f"r{i}"]}, index=[i])

    ddf = dd.from_map(load, [0, 1], meta=pd.DataFrame({"text": pd.Series([], dtype=object)}, index=[]))
    with pytest.raises(pandas_llm.TemplateError, match="nope"):
        ddf.llm.map("Say: {nope}", mode="batch", **batch_opts)
    with pytest.raises(pandas_llm.ConfigError):
        ddf.llm.map("Say: {text}", mode="batch", **{**batch_opts, "client": lambda prompt: "x"})
    assert loads == [] and server.batches.files_uploaded == 0 and server.requests == 0


def test_auto_takes_one_decision_for_the_whole_collection(server, batch_opts):
    small = dd.from_pandas(frame(6), npartitions=3)  # 6 < 10: realtime, lazy, sent by the partitions
    lazy = small.llm.map("Say: {text}", mode="auto", batch_threshold=10, **batch_opts)
    assert server.requests == 0 and server.batches.batches_created == 0
    assert computed(lazy).tolist() == echoes(frame(6)) and server.requests == 6
    # 24 rows over 4 partitions of 6, each under the threshold: one job, since the decision is the driver's
    df = frame(30)
    big = dd.from_pandas(df, npartitions=5)
    lazy = big.llm.map("Say: {text}", mode="auto", batch_threshold=10, **batch_opts)
    assert (server.batches.batches_created, server.batches.lines_answered) == (1, 24)
    assert computed(lazy).tolist() == echoes(df) and server.requests == 6


def test_unknown_divisions_assign_and_one_partition(server, batch_opts):
    df = frame(20)
    ddf = dd.from_pandas(df, npartitions=4).clear_divisions()
    lazy = ddf.llm.map("Say: {text}", mode="batch", **batch_opts)
    both = computed(ddf.assign(fr=lazy))  # the same partitions: no alignment, no shuffle
    assert both.index.equals(df.index) and both["fr"].tolist() == echoes(df)
    assert computed(lazy.partitions[2]).tolist() == echoes(df.iloc[10:15])
    assert server.requests == 0


def test_a_row_the_job_did_not_answer_is_an_error_not_a_request(server, batch_opts):
    state = {"suffix": "a"}

    def load(i):  # an input that computes differently between the call and the compute
        return pd.DataFrame({"text": [f"r{i}{state['suffix']}", f"s{i}"]}, index=[2 * i, 2 * i + 1])

    ddf = dd.from_map(load, [0, 1, 2], meta=pd.DataFrame({"text": pd.Series([], dtype=object)}, index=[]))
    lazy = ddf.llm.map("Say: {text}", mode="batch", **batch_opts)
    state["suffix"] = "b"
    with pytest.raises(
        pandas_llm.ConfigError, match=r"1 of 2 rows of this partition \(index [024]\) were not in the Batch API job"
    ):
        computed(lazy)
    assert server.requests == 0 and server.batches.lines_answered == 6


def test_a_driver_killed_mid_batch_reruns_without_submitting_again(server, batch_opts):
    server.batches.hold()
    script = textwrap.dedent(
        f"""
        import pandas as pd, pandas_llm, dask.dataframe as dd
        df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(300)]}})
        dd.from_pandas(df, npartitions=3).llm.map(
            "Say: {{text}}", mode="batch", base_url={server.base_url!r}, api_key="x",
            cache={batch_opts["cache"]!r}, progress=False, poll_interval=0.01, batch_limits={{"requests": 100}})
        """
    )
    kill_when(script, lambda: server.batches.batches_retrieved > 0)  # every batch submitted and recorded
    assert (server.batches.files_uploaded, server.batches.batches_created) == (3, 3)
    server.batches.release()
    df = pd.DataFrame({"text": [f"row {i}" for i in range(300)]})
    lazy = dd.from_pandas(df, npartitions=3).llm.map("Say: {text}", mode="batch", batch_limits={"requests": 100},
                                                     **batch_opts)  # fmt: skip
    assert computed(lazy).tolist() == [f"echo: Say: {t}" for t in df["text"]]
    assert (server.batches.files_uploaded, server.batches.batches_created) == (3, 3)
    assert server.batches.lines_answered == 300 and server.requests == 0


def test_worker_processes_read_the_answers_from_the_graph(server, batch_opts):

    df = frame(60, distinct=20)
    with local_cluster(2) as client:
        lazy = dd.from_pandas(df, npartitions=6).llm.map("Say: {text}", mode="batch", **batch_opts)
        held = client.has_what()  # scattered to both workers (the row hashes, the answers), not in the graph
        assert len(held) == 2 and all(len(keys) == 2 for keys in held.values())
        out = client.compute(lazy).result()
    assert out.tolist() == echoes(df) and out.index.equals(df.index)
    assert (server.batches.batches_created, server.batches.lines_answered, server.requests) == (1, 20, 0)
