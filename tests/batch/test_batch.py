"""The Batch API end to end against the loopback server: submit / poll / collect, resume, failures."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import pandas_llm
from helpers import check_counts, echoes, frame, kill_when
from pandas_llm import ConfigError, RunWarning
from pandas_llm._batch.client import BatchAPI
from pandas_llm._errors import RetryableError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_round_trip_10k_rows_in_several_batches(server, batch_opts):
    df = frame(10_000)
    df.index = np.random.default_rng(0).permutation(10_000) * 3  # any index
    server.batches.max_requests = 3000  # the server refuses a batch over the limit
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"requests": 3000}, **batch_opts)
    assert out.tolist() == echoes(df)
    assert out.index.equals(df.index) and out.dtype == "string"
    assert (server.batches.files_uploaded, server.batches.batches_created) == (4, 4)
    assert server.batches.lines_answered == 10_000 and server.completed == 10_000
    assert set(server.prompt_counts.values()) == {1}
    report = pandas_llm.last_run()
    assert report.stats.ok == 10_000 and report.stats.cost > 0
    assert (report.details["status"] == "ok").all()


def test_identical_prompts_are_sent_once_and_reruns_come_from_cache(server, batch_opts):
    df = pd.DataFrame({"text": [f"t{i % 10}" for i in range(1000)]})
    out = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.batches.lines_answered == 10
    again = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    assert again.tolist() == echoes(df)
    assert (server.batches.batches_created, server.batches.lines_answered) == (1, 10)
    # realtime and batch share the cache: the same requests are not paid again
    assert df.llm.map("Say: {text}", **batch_opts).tolist() == echoes(df)
    assert server.requests == 0


def test_split_by_file_size_and_each_file_within_the_limit(server, batch_opts):
    df = frame(200)
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"file_bytes": 5_000}, **batch_opts)
    assert out.tolist() == echoes(df)
    inputs = [f for f in server.batches.uploads]
    assert len(inputs) == server.batches.batches_created > 1
    assert all(len(f.data) <= 5_000 for f in inputs)
    assert sum(len(f.data.splitlines()) for f in inputs) == 200


def test_enqueued_token_budget_keeps_one_batch_in_flight_at_a_time(server, batch_opts):
    df = frame(60)
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"enqueued_tokens": 300}, **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.batches.batches_created >= 3
    assert server.batches.peak_active == 1


def test_submit_returns_at_once_and_ids_are_in_the_sidecar(server, batch_opts):
    server.batches.hold()
    df = frame(30)
    job = df.llm.submit("Say: {text}", batch_limits={"requests": 10}, **batch_opts)
    assert server.batches.batches_created == 3 and server.batches.lines_answered == 0
    with sqlite3.connect(batch_opts["cache"]) as conn:
        rows = conn.execute("SELECT batch_id, input_file_id, state, requests, open FROM batch_parts").fetchall()
        n_keys = conn.execute("SELECT count(*) FROM batch_keys").fetchone()[0]
    assert sorted(r[0] for r in rows) == sorted(server.batches.batches)
    assert all(r[1] and r[2] == "validating" and r[3] == 10 and r[4] == 1 for r in rows)
    assert n_keys == 30
    status = job.status()
    assert status.state == "in_progress" and not status.done
    assert {p.state for p in status.parts} == {"in_progress"}
    assert "in_progress" in repr(status) and "<table>" in status._repr_html_()
    server.batches.release()
    assert job.result().tolist() == echoes(df)
    status = job.status()
    assert status.state == "done" and {p.state for p in status.parts} == {"completed"}
    assert status.counts()["ok"] == 30
    with sqlite3.connect(batch_opts["cache"]) as conn:
        assert conn.execute("SELECT count(*) FROM batch_keys").fetchone()[0] == 0  # closed parts drop keys
        assert conn.execute("SELECT count(*) FROM batch_parts WHERE open = 1").fetchone()[0] == 0


def test_a_job_finished_by_status_reports_done_not_running(server, batch_opts):
    df = frame(10)
    job = df.llm.submit("Say: {text}", **batch_opts)
    assert job.status().state == "done"  # collected here: result() has nothing left to wait for
    assert job.result().tolist() == echoes(df)
    stats = pandas_llm.last_run().stats
    assert stats.outcome == "done" and stats.finished is not None


def test_rerun_reattaches_to_batches_in_flight(server, batch_opts):
    server.batches.hold()
    df = frame(40)
    first = df.llm.submit("Say: {text}", batch_limits={"requests": 15}, **batch_opts)
    assert server.batches.batches_created == 3
    del first  # as after a kernel restart: only the sidecar remembers
    server.batches.release()
    again = df.llm.submit("Say: {text}", batch_limits={"requests": 15}, **batch_opts)
    assert again.stats.attached == 40 and again.stats.submitted == 0
    assert again.result().tolist() == echoes(df)
    assert (server.batches.files_uploaded, server.batches.batches_created, server.batches.lines_answered) == (3, 3, 40)


def test_a_cached_row_is_never_in_a_batch(server, batch_opts):
    df = frame(100)
    df.iloc[:40].llm.map("Say: {text}", **batch_opts)  # realtime, cached
    assert server.completed == 40
    out = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(df)
    sent = b"".join(f.data for f in server.batches.uploads)
    assert len(sent.splitlines()) == 60
    assert all(f'row {i}"'.encode() not in sent for i in range(40))
    assert set(server.prompt_counts.values()) == {1}


def test_killed_after_submission_the_rerun_reattaches_and_submits_nothing(server, batch_opts):
    server.batches.hold()
    script = textwrap.dedent(
        f"""
        import pandas as pd, pandas_llm
        df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(500)]}})
        df.llm.map("Say: {{text}}", mode="batch", base_url={server.base_url!r}, api_key="x",
                   cache={batch_opts["cache"]!r}, progress=False, poll_interval=0.01, batch_limits={{"requests": 100}})
        """
    )
    # killed once polling starts: every batch was submitted and recorded
    kill_when(script, lambda: server.batches.batches_retrieved > 0)
    assert (server.batches.files_uploaded, server.batches.batches_created) == (5, 5)
    server.batches.release()
    df = frame(500)
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"requests": 100}, **batch_opts)
    assert out.tolist() == echoes(df)
    assert (server.batches.files_uploaded, server.batches.batches_created, server.batches.lines_answered) == (5, 5, 500)


def test_killed_during_submission_no_request_is_sent_twice(server, batch_opts):
    server.batches.hold()
    server.batches.stall_creates_after(10)  # the 11th batch is created, its id never reaches the client
    script = textwrap.dedent(
        f"""
        import pandas as pd, pandas_llm
        df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(2000)]}})
        df.llm.submit("Say: {{text}}", base_url={server.base_url!r}, api_key="x",
                      cache={batch_opts["cache"]!r}, progress=False, batch_limits={{"requests": 50}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + 60
        while server.batches.batches_created < 11:
            assert proc.poll() is None, "the child finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert (server.batches.files_uploaded, server.batches.batches_created) == (11, 11)
    with sqlite3.connect(batch_opts["cache"]) as conn:
        states = Counter(s for (s,) in conn.execute("SELECT state FROM batch_parts"))
    assert states == {"validating": 10, "uploaded": 1}  # the last id was lost with the process
    server.batches.clear_faults()
    server.batches.release()
    df = frame(2000)
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"requests": 50}, **batch_opts)
    assert out.tolist() == echoes(df)
    # the lost batch was found by its metadata, not created again; nothing was sent twice
    assert (server.batches.files_uploaded, server.batches.batches_created) == (40, 40)
    assert server.batches.lines_answered == 2000 and set(server.prompt_counts.values()) == {1}


def test_per_line_failures_leave_exactly_those_rows_to_retry(server, batch_opts):
    df = frame(50)
    server.batches.fail_lines("row 1", status=500)  # row 1, row 10..19
    with pytest.warns(RunWarning, match="11 of 50 rows have no answer: 11 failed"):
        out = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    failed = {"row 1"} | {f"row {i}" for i in range(10, 20)}
    assert set(df["text"][out.isna()]) == failed
    details = pandas_llm.last_run().failures
    assert set(details["status"]) == {"failed"} and details["error"].str.contains("HTTP 500").all()
    server.batches.clear_faults()
    before = server.batches.lines_answered
    out = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.batches.lines_answered - before == 11 and server.batches.batches_created == 2
    assert set(server.prompt_counts.values()) == {1}


def test_a_400_line_is_that_rows_error_and_a_cut_answer_is_length(server, batch_opts):
    df = pd.DataFrame({"text": ["short", "a much longer prompt that gets cut"]})
    with pytest.warns(RunWarning):
        d = df.llm.map("{text}", mode="batch", max_tokens=3, details=True, **batch_opts)
    assert d["status"].tolist() == ["ok", "length"]
    server.batches.fail_lines("short", status=400)
    with pytest.warns(RunWarning):
        d = pd.DataFrame({"text": ["short!"]}).llm.map("{text}", mode="batch", details=True, **batch_opts)
    assert d["status"].tolist() == ["error"] and "HTTP 400" in d["error"].iloc[0]


def test_expired_batch_keeps_its_answers_and_leaves_the_rest(server, batch_opts):
    df = frame(40)
    server.batches.expire_next(fraction=0.25)
    with pytest.warns(RunWarning, match="30 expired"):
        d = df.llm.map("Say: {text}", mode="batch", details=True, **batch_opts)
    assert (d["status"] == "ok").sum() == 10 and (d["status"] == "expired").sum() == 30
    report = pandas_llm.last_run()  # submitted, never run: sent, not "not sent"
    assert check_counts(report).cut_short == {"expired": 30} and not report.stats.unsent
    assert "40 requests sent (10 ok, 30 in a batch that expired)" in report.summary()
    with sqlite3.connect(batch_opts["cache"]) as conn:  # expired rows are not failures in the cache
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 10
    out = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.batches.lines_answered == 40 and set(server.prompt_counts.values()) == {1}


def test_failed_batch_rows_carry_the_batch_error(server, batch_opts):
    server.batches.max_requests = 5
    with pytest.warns(RunWarning, match="10 failed"):
        d = frame(10).llm.map("Say: {text}", mode="batch", details=True, **batch_opts)
    assert d["error"].str.contains("too_many_requests").all()


def test_cancel(server, batch_opts):
    server.batches.hold()
    df = frame(40)
    job = df.llm.submit("Say: {text}", batch_limits={"requests": 20, "enqueued_tokens": 200}, **batch_opts)
    assert server.batches.batches_created == 1  # the second part waits for the token budget
    status = job.cancel()
    assert server.batches.batches_cancelled == 1
    assert status.state == "cancelled" and status.parts[0].state == "cancelled"
    with pytest.warns(RunWarning, match="cancelled"):
        d = job.result(details=True)
    answered = (d["status"] == "ok").sum()
    assert 0 < answered < 20 and (d["status"] == "cancelled").sum() == 40 - answered
    stats = check_counts(pandas_llm.last_run())  # the second part was never submitted
    n = stats.submitted  # the first batch's requests (under the enqueued-token budget)
    assert (stats.ok, dict(stats.cut_short), dict(stats.unsent)) == (
        answered,
        {"cancelled": n - answered},
        {"cancelled": 40 - n},
    )
    assert server.batches.batches_created == 1
    server.batches.release()
    out = df.llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.batches.lines_answered == 40


def test_lost_create_answer_does_not_create_twice(server, batch_opts):
    server.batches.fail_next_create()
    out = frame(10).llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(frame(10))
    assert server.batches.batches_created == 1 and server.batches.batches_listed >= 1


def test_part_left_without_a_batch_is_created_from_its_file(server, batch_opts, monkeypatch):
    async def broken(self, file_id, metadata):
        raise RetryableError("connection reset", code="connection")

    with monkeypatch.context() as m:
        m.setattr(BatchAPI, "create", broken)
        with pytest.raises(RetryableError):
            frame(10).llm.submit("Say: {text}", **batch_opts)
    assert (server.batches.files_uploaded, server.batches.batches_created) == (1, 0)
    out = frame(10).llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.tolist() == echoes(frame(10))
    assert (server.batches.files_uploaded, server.batches.batches_created) == (1, 1)


def test_auto_mode_switches_at_the_threshold(server, batch_opts):
    small = frame(5)
    assert small.llm.map("Say: {text}", mode="auto", batch_threshold=10, **batch_opts).tolist() == echoes(small)
    assert server.completed == 5 and server.batches.batches_created == 0
    big = frame(20, start=100)
    assert big.llm.map("Say: {text}", mode="auto", batch_threshold=10, **batch_opts).tolist() == echoes(big)
    assert server.batches.batches_created == 1 and server.requests == 5
    # the threshold counts requests still to send: a mostly cached frame goes realtime
    mixed = pd.concat([big, frame(3, start=500)], ignore_index=True)
    mixed.llm.map("Say: {text}", mode="auto", batch_threshold=10, **batch_opts)
    assert server.batches.batches_created == 1 and server.requests == 8


def test_series_accessor_and_async_twins(server, batch_opts):
    s = pd.Series(["a", "b", None, "a"], name="t")
    out = s.llm.map("Say: {}", mode="batch", **batch_opts)
    assert out.tolist()[:2] == ["echo: Say: a", "echo: Say: b"] and out.isna().tolist() == [False, False, True, False]
    assert out.name == "t"

    async def go():
        job = await s.llm.asubmit("Again: {}", **batch_opts)
        return await job.aresult(), await s.llm.amap("Again: {}", mode="batch", **batch_opts)

    import asyncio

    first, second = asyncio.run(go())
    assert first.tolist()[:2] == ["echo: Again: a", "echo: Again: b"] and first.equals(second)


def test_cache_false_still_works_within_the_process(server, batch_opts):
    batch_opts = dict(batch_opts, cache=False)
    assert frame(5).llm.map("Say: {text}", mode="batch", **batch_opts).tolist() == echoes(frame(5))


def test_bad_arguments_fail_before_anything_is_sent(server, batch_opts):
    with pytest.raises(ConfigError, match="mode must be"):
        frame(3).llm.map("{text}", mode="bulk", **batch_opts)
    with pytest.raises(ConfigError, match="batch_limits"):
        frame(3).llm.map("{text}", mode="batch", batch_limits={"rows": 3}, **batch_opts)
    with pytest.raises(ConfigError, match="requests must be"):
        frame(3).llm.map("{text}", mode="batch", batch_limits={"requests": 0}, **batch_opts)
    with pytest.raises(ConfigError, match="poll_interval"):
        frame(3).llm.map("{text}", mode="batch", **dict(batch_opts, poll_interval=0))
    with pytest.raises(ConfigError, match="not a plain function"):
        frame(3).llm.submit("{text}", client=lambda messages, **kw: "x", cache=batch_opts["cache"])
    with pytest.raises(pandas_llm.TemplateError, match="nope"):
        frame(3).llm.submit("{nope}", **batch_opts)
    assert server.batches.files_uploaded == 0 and server.requests == 0
    # with a plain function client, auto mode stays realtime
    out = frame(3).llm.map("{text}", mode="auto", batch_threshold=1, client=lambda messages, **kw: "x",
                           cache=False, progress=False)  # fmt: skip
    assert out.tolist() == ["x"] * 3


def test_user_openai_clients_work(server, batch_opts):
    import openai

    batch_opts = {k: v for k, v in batch_opts.items() if k not in ("base_url", "api_key")}
    sync = openai.OpenAI(base_url=server.base_url, api_key="x")
    aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")
    try:
        assert frame(5).llm.map("Say: {text}", mode="batch", client=sync, **batch_opts).tolist() == echoes(frame(5))
        df = frame(5, start=50)
        assert df.llm.map("Say: {text}", mode="batch", client=aclient, **batch_opts).tolist() == echoes(df)
    finally:
        sync.close()
        import asyncio

        asyncio.run(aclient.close())
    assert server.batches.batches_created == 2


def test_progress_bar_shows_batch_states_and_cost(server, batch_opts, capsys):
    frame(20).llm.map("Say: {text}", mode="batch", **dict(batch_opts, progress=True))
    err = capsys.readouterr().err
    assert "pandas-llm batch" in err and "completed=1" in err and "cost=$" in err


def test_status_counts_by_state(server, batch_opts):
    server.batches.hold()
    job = frame(12).llm.submit("Say: {text}", batch_limits={"requests": 5}, **batch_opts)
    st = job.status()
    assert Counter(p.requests for p in st.parts) == Counter({5: 2, 2: 1})
    assert st.counts()["submitted"] == 12 and st.stats.done_rows == sum(p.completed for p in st.parts)
    server.batches.release()
    job.result()


def test_failure_warning_points_at_the_callers_line(server, batch_opts):
    server.batches.fail_lines("row 3")
    with pytest.warns(RunWarning) as caught:
        frame(5).llm.map("Say: {text}", mode="batch", **batch_opts)
    assert caught[0].filename == __file__
    server.batches.fail_lines("row 3")
    job = frame(5).llm.submit("Say: {text}", **batch_opts)
    with pytest.warns(RunWarning) as caught:
        job.result()
    assert caught[0].filename == __file__


def test_list_batches_reads_the_sidecar(server, batch_opts, tmp_path):
    assert pandas_llm.list_batches(tmp_path / "none.sqlite").empty
    server.batches.hold()
    job = frame(12).llm.submit("Say: {text}", batch_limits={"requests": 5}, **batch_opts)
    listed = pandas_llm.list_batches(batch_opts["cache"])
    assert len(listed) == 3 and listed["open"].all() and set(listed["batch_id"]) == set(server.batches.batches)
    assert (listed["job"] == job.id).all() and listed["requests"].sum() == 12
    server.batches.release()
    job.result()
    listed = pandas_llm.list_batches(batch_opts["cache"])
    assert not listed["open"].any() and set(listed["state"]) == {"completed"}


def test_a_batch_the_api_lost_is_sent_again(server, batch_opts):
    server.batches.hold()
    df = frame(20)
    first = df.llm.submit("Say: {text}", batch_limits={"requests": 10}, **batch_opts)
    lost = sorted(server.batches.batches)[0]
    del server.batches.batches[lost], first
    server.batches.release()
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"requests": 10}, **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.batches.batches_created == 3 and set(server.prompt_counts.values()) == {1}
    assert set(pandas_llm.list_batches(batch_opts["cache"])["state"]) == {"lost", "completed"}


def test_an_output_file_gone_before_collection_is_sent_again(server, batch_opts):
    import openai

    job = frame(10).llm.submit("Say: {text}", **batch_opts)
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    (batch_id,) = server.batches.batches
    client.files.delete(client.batches.retrieve(batch_id).output_file_id)  # the server finishes it here
    client.close()
    assert job.result().tolist() == echoes(frame(10))
    assert server.batches.batches_created == 2 and server.batches.lines_answered == 20


def test_cancel_before_submitting_sends_nothing(server, batch_opts):
    from pandas_llm._config import current_settings
    from pandas_llm._verbs.dispatch import start

    job = start(frame(5), "Say: {text}", current_settings().merged(mode="batch", **batch_opts))
    status = job.cancel()
    assert status.state == "cancelled" and server.batches.files_uploaded == 0
    with pytest.warns(RunWarning, match="5 cancelled"):
        assert job.result().isna().all()


def test_interrupted_wait_leaves_the_batches_to_a_rerun(server, batch_opts):
    import asyncio

    server.batches.hold()
    df = frame(30)

    async def interrupted():
        job = await df.llm.asubmit("Say: {text}", batch_limits={"requests": 10}, **batch_opts)
        task = asyncio.ensure_future(job.aresult())
        while server.batches.batches_retrieved < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return job

    job = asyncio.run(interrupted())
    assert job.stats.outcome == "interrupted" and "BatchJob" in job._repr_html_()
    server.batches.release()
    assert df.llm.map("Say: {text}", mode="batch", **batch_opts).tolist() == echoes(df)
    assert server.batches.batches_created == 3 and server.batches.lines_answered == 30


def test_transient_api_errors_are_retried_with_backoff(server, batch_opts):
    from pandas_llm._config import current_settings
    from pandas_llm._verbs.dispatch import start

    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    server.batches.fail_requests(503, times=2)  # the upload, twice
    server.batches.fail_requests(429, times=1, retry_after=7)  # the create
    job = start(frame(10), "Say: {text}", current_settings().merged(mode="batch", **batch_opts))
    job.sleep = sleep
    assert job.result().tolist() == echoes(frame(10))
    assert waits[:3][2] == 7 and all(0 < w < 5 for w in waits[:2])
    assert (server.batches.files_uploaded, server.batches.batches_created) == (1, 1)


def test_persistent_api_errors_raise_and_the_rerun_recovers(server, batch_opts):
    server.batches.fail_requests(503, times=100)
    with pytest.raises(pandas_llm.RetryableError, match="HTTP 503") as err:
        frame(5).llm.submit("Say: {text}", max_attempts=2, **batch_opts)
    notes = " ".join(err.value.__notes__)  # shown under the traceback: which call, and what to do
    assert "the Batch API's POST /files" in notes and "run the same call again to resume" in notes
    server.batches.clear_faults()
    assert frame(5).llm.map("Say: {text}", mode="batch", **batch_opts).tolist() == echoes(frame(5))
    assert server.batches.batches_created == 1


def test_batch_mode_packs_plain_map(server, batch_opts):
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    assert df.llm.map("Say: {text}", rows_per_request=2, mode="batch", **batch_opts).tolist() == [
        "echo: Say: a", "echo: Say: b", "echo: Say: c"]  # fmt: skip
    assert server.requests == 0 and server.batches.lines_answered == 2


# -- the one dispatch ------------------------------------------------------------------------
@pytest.mark.parametrize("rows_per_request", [1, 2])
def test_auto_plans_once_and_builds_only_the_job_it_picks(server, batch_opts, monkeypatch, rows_per_request):
    """mode="auto" plans the rows once and builds a realtime Run only when it sends in realtime."""
    from pandas_llm._plan import planner
    from pandas_llm._run.run import Run
    from pandas_llm._verbs import dispatch

    runs, plans = [], []
    init, make_plan = Run.__init__, planner.make_plan
    monkeypatch.setattr(Run, "__init__", lambda self, *a, **kw: runs.append(1) or init(self, *a, **kw))
    monkeypatch.setattr(dispatch, "make_plan", lambda *a, **kw: plans.append(1) or make_plan(*a, **kw))
    kw = dict(mode="auto", batch_threshold=5, rows_per_request=rows_per_request, **batch_opts)
    frame(20).llm.map("Say: {text}", **kw)
    assert server.batches.batches_created == 1 and (runs, plans) == ([], [1])  # batch: no Run at all
    frame(3, start=100).llm.map("Say: {text}", **kw)
    assert server.batches.batches_created == 1 and (runs, plans) == ([1], [1, 1])  # realtime: the same plan


def test_realtime_and_batch_jobs_share_wait_and_result(server, batch_opts):
    import asyncio

    from pandas_llm._batch.job import BatchJob
    from pandas_llm._run.run import Run
    from pandas_llm._verbs import prepare

    want = echoes(frame(4))
    for mode, cls in (("realtime", Run), ("batch", BatchJob)):
        job = prepare(frame(4), "Say: {text}", {**batch_opts, "mode": mode, "cache": False}, verb="map")
        assert type(job) is cls
        asyncio.run(job.wait())
        assert job.result().tolist() == want
        assert job.result(details=True)["status"].eq("ok").all()


def test_nothing_below_the_verbs_imports_them():
    import ast
    import pathlib

    root = pathlib.Path(ROOT) / "pandas_llm"
    below = [p for p in root.rglob("*.py") if p.parent.name not in ("_verbs", "_dask") and p.parent != root]
    below += [root / name for name in ("_config.py", "_errors.py", "_pricing.py")]
    for path in below:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "_verbs" in node.module:
                raise AssertionError(f"{path.relative_to(root)} imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module is None and node.level == 2:
                assert all("_verbs" not in a.name for a in node.names), path
