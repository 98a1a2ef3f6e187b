"""deadline=: whenever it passes, the run ends with the deadline outcome, never an exception;
a row whose retry it cuts short is status "deadline" (with its last error), not "failed"."""

from __future__ import annotations

import asyncio
import sqlite3
import warnings

import pandas as pd
import pytest
from pydantic import BaseModel

import pandas_llm
from helpers import VirtualTime, check_counts, frame
from pandas_llm import RunWarning
from pandas_llm._backends import Completion
from pandas_llm._errors import RetryableError
from pandas_llm._run.engine import Engine, RetryPolicy
from pandas_llm._run.limiter import Limiter
from pandas_llm._stats import RunStats
from pandas_llm._store.store import Store

TINY = [1e-6, 1e-4, 1e-3, 0.01]


def map_quietly(df, **kw):
    """``df.llm.map`` with its RunWarnings recorded: (details, warnings' texts)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunWarning)
        d = df.llm.map("{text}", details=True, **kw)
    return d, [str(w.message) for w in caught if issubclass(w.category, RunWarning)]


def check_deadline_outcome(d, texts):
    """Every row answered or ``deadline``; the warning and last_run() agree with the rows."""
    counts = d["status"].value_counts().to_dict()
    assert set(counts) <= {"ok", "deadline"}
    stats = check_counts(pandas_llm.last_run())
    assert stats.outcome == "done"
    assert stats.cached_unique + stats.ok == counts.get("ok", 0) and not stats.failed  # distinct rows
    assert stats.cut_short["deadline"] + stats.unsent["deadline"] == counts.get("deadline", 0)
    if counts.get("deadline"):
        assert len(texts) == 1 and f"{counts['deadline']} deadline" in texts[0]
    else:
        assert not texts


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache-file"])
@pytest.mark.parametrize("deadline", TINY)
def test_a_tiny_deadline_ends_with_the_deadline_outcome_never_an_exception(server, opts, tmp_path, deadline, cache):
    # 1e-6 s passes before the first worker runs: the engine woke (cancelled) workers not
    # started yet, and that cancel escaped as asyncio.CancelledError
    for i in range(3):
        d, texts = map_quietly(
            frame(8), deadline=deadline, cache=str(tmp_path / f"c{i}.sqlite") if cache else False, **opts
        )
        check_deadline_outcome(d, texts)


@pytest.mark.parametrize("deadline", TINY)
def test_a_tiny_deadline_in_a_threaded_dask_compute(server, opts, deadline):
    dask = pytest.importorskip("dask")
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(frame(12), npartitions=3)
    with dask.config.set(scheduler="threads"), warnings.catch_warnings(record=True):
        warnings.simplefilter("always", RunWarning)
        d = ddf.llm.map("{text}", details=True, deadline=deadline, cache=False, **opts).compute()
    assert len(d) == 12 and set(d["status"]) <= {"ok", "deadline"}


@pytest.mark.server(error_rate={503: 1.0})
def test_a_retry_the_deadline_cuts_short_is_deadline_with_its_last_error(server, opts, monkeypatch):
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt, retry_after: 3600.0)  # after the deadline
    d, texts = map_quietly(frame(20), deadline=600, max_attempts=6, cache=False, **opts)
    check_deadline_outcome(d, texts)
    assert (d["status"] == "deadline").all() and (d["attempts"] == 1).all()
    assert d["error"].str.contains("503").all() and d["error"].str.contains("deadline").all()
    assert "deadline=600 s" in texts[0]
    report = pandas_llm.last_run()
    assert report.stats.cut_short == {"deadline": 20} and not report.stats.unsent  # sent, not "never sent"
    assert (
        "20 rows, 20 distinct requests: 0 rows from cache, 20 requests sent (0 ok, 20 cut short by the deadline),"
        in (report.summary())
    )


@pytest.mark.server(error_rate={503: 1.0})
def test_failed_still_means_every_attempt_was_used(server, opts, fast_retries):
    with pytest.warns(RunWarning, match="20 failed"):
        d = frame(20).llm.map("{text}", deadline=600, max_attempts=2, cache=False, details=True, **opts)
    assert (d["status"] == "failed").all() and (d["attempts"] == 2).all()
    stats = check_counts(pandas_llm.last_run())
    assert stats.failed["failed"] == 20 and not stats.unsent and not stats.cut_short
    assert "20 requests sent (0 ok, 20 failed, 40 HTTP attempts)," in pandas_llm.last_run().summary()


class Topic(BaseModel):
    topic: str


def many_rows_per_request(verb: str, **kw):
    """``verb`` over 10 texts, 5 per request: packed (``rows_per_request``) or grouped (embed)."""
    texts = pd.Series([f"ticket {i}" for i in range(10)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunWarning)
        if verb == "packed":
            texts.to_frame("text").llm.extract("{text}", schema=Topic, rows_per_request=5, **kw)
        else:
            texts.llm.embed(dimensions=4, inputs_per_request=5, **kw)
    return pandas_llm.last_run(), [str(w.message) for w in caught if issubclass(w.category, RunWarning)]


@pytest.mark.server(error_rate={503: 1.0})
@pytest.mark.parametrize("verb", ["packed", "grouped"])
@pytest.mark.parametrize("cut", ["passed", "retry-after-it"])
def test_a_packed_or_grouped_request_the_deadline_cuts_short_is_deadline_on_every_row(
    server, opts, monkeypatch, tmp_path, verb, cut
):
    # they were "failed" (grouped: stored so) or sent alone after the deadline and left "deadline"
    # without their error (packed): only single-row requests followed the rule
    backoff = 0.001 if cut == "passed" else 3600.0  # the deadline passes during the retries, or before one
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt, retry_after: backoff)
    deadline = 0.3 if cut == "passed" else 600
    cache = tmp_path / "c.sqlite"
    report, texts = many_rows_per_request(verb, deadline=deadline, max_attempts=100_000, cache=cache, **opts)
    d = report.details
    assert (d["status"] == "deadline").all() and (d["attempts"] >= 1).all()
    assert d["error"].str.contains("503").all()
    assert d["error"].str.endswith("not sent again: its retry would come after the deadline)").all()
    stats = check_counts(report)
    assert stats.outcome == "done" and stats.cut_short["deadline"] == 10 and not stats.failed and not stats.ok
    assert not stats.unsent and "10 requests sent (0 ok, 10 cut short by the deadline" in report.summary()
    assert len(texts) == 1 and "10 deadline" in texts[0]
    if verb == "packed":
        assert report.packing.fallback_rows == 0  # not sent alone after the pack's retry was cut short
    assert server.completed == 0
    db = sqlite3.connect(cache)  # never stored: a rerun sends them
    assert db.execute("SELECT count(*) FROM results").fetchone() == (0,)
    db.close()


class Backend:
    """Job 0 always fails with a 503; the others answer after 1 s."""

    def __init__(self, vt: VirtualTime):
        self.vt = vt

    async def complete(self, body: bytes) -> Completion:
        await self.vt.sleep(0.1)
        if body == b'{"n":0}':
            raise RetryableError("HTTP 503: overloaded", status=503)
        await self.vt.sleep(0.9)
        return Completion("ok", "stop", 3, 2)


def engine(vt: VirtualTime, results: dict, *, deadline: float) -> tuple[Engine, RunStats]:
    stats = RunStats()
    stats.started = vt.now
    limiter = Limiter(headroom=1.0, learn=False, clock=vt.clock, sleep=vt.sleep)
    eng = Engine(backend=Backend(vt), store=Store(None), stats=stats, concurrency=2, limiter=limiter,
                 retry=RetryPolicy(deadline=deadline, base=2.0, jitter=0.0), clock=vt.clock, sleep=vt.sleep,
                 on_result=results.__setitem__)  # fmt: skip
    return eng, stats


async def test_a_row_in_its_backoff_when_the_sending_stops_is_deadline_with_its_error():
    vt, results = VirtualTime(), {}
    eng, stats = engine(vt, results, deadline=100.0)

    async def halt_soon():  # what the deadline's watcher (or a 429 clearing after it) does
        await vt.sleep(0.5)  # job 0 failed at 0.1 and waits 2 s; job 2 is in flight
        eng._halt(None)

    halter = asyncio.ensure_future(halt_soon())
    await vt.run(eng.run((u, bytes([u]) * 32, b'{"n":%d}' % u) for u in (0, 2, 3)))
    await halter
    eng.store.close()
    assert stats.deadline_reached
    assert results[0].status == "deadline" and "503" in results[0].error and results[0].attempts == 1
    assert results[2].status == "ok" and 3 not in results  # kept in flight; not sent after
    assert stats.cut_short["deadline"] == 1 and not stats.unsent and not stats.failed  # job 3: the caller labels it


async def test_a_stop_during_a_backoff_keeps_the_rows_error_as_stopped():
    vt, at = VirtualTime(), {}

    class Results(dict):  # when each job's record came
        def __setitem__(self, u, record):
            at[u] = vt.now
            super().__setitem__(u, record)

    results = Results()
    eng, stats = engine(vt, results, deadline=None)  # type: ignore[arg-type]
    in_flight = []

    async def stop_soon():
        await vt.sleep(0.5)  # job 0 failed at 0.1 and waits 2 s; job 2 is in flight
        in_flight.append(stats.in_flight)
        eng.stop()

    jobs = ((u, bytes([u]) * 32, b'{"n":%d}' % u) for u in (0, 2))
    stopper = asyncio.ensure_future(stop_soon())
    await vt.run(eng.run(jobs))
    await stopper
    eng.store.close()
    assert results[0].status == "stopped" and "503" in results[0].error
    assert results[2].status == "ok"  # in flight at the stop: kept
    assert stats.cut_short["stopped"] == 1 and not stats.unsent and not stats.failed
    # a row in its backoff is not in flight: the stop wakes it at once (it counted as in
    # flight, and the stop waited for its backoff to end, up to 30 s)
    assert in_flight == [1] and at[0] == 0.5


async def test_a_run_stopped_before_its_workers_began_ends_quietly():
    vt, results = VirtualTime(), {}
    eng, stats = engine(vt, results, deadline=None)  # type: ignore[arg-type]
    eng.stop()
    await vt.run(eng.run((u, bytes([u]) * 32, b'{"n":%d}' % u) for u in range(5)))
    eng.store.close()
    assert not results and stats.attempts == 0


LIMIT = "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 10000, Used 10000, Requested 1."


def test_the_summary_counts_a_request_a_429_left_past_the_deadline_as_sent_and_the_rest_as_not_sent(server, opts):
    # the summary said "3 requests sent (3 ok, 4 HTTP attempts)" and nothing of the 17 others:
    # row 3 was sent (its 429 is an HTTP attempt) and was counted "not sent" with the 16 never sent
    body = {"error": {"message": LIMIT, "code": "rate_limit_exceeded"}}
    server.inject(429, times=1000, match="row 3", retry_after=30, body=body)
    d, texts = map_quietly(frame(20), concurrency=1, deadline=5, cache=False, **opts)
    report = pandas_llm.last_run()
    stats = check_counts(report)
    assert (stats.ok, dict(stats.cut_short), dict(stats.unsent), stats.attempts) == (
        3,
        {"deadline": 1},
        {"deadline": 16},
        4,
    )
    assert d.loc[3, "status"] == "deadline" and d.loc[3, "attempts"] == 1 and "HTTP 429" in d.loc[3, "error"]
    assert (d.loc[4:, "attempts"] == 0).all() and server.requests == 4
    assert report.summary().startswith(
        "20 rows, 20 distinct requests: 0 rows from cache, 4 requests sent (3 ok, 1 cut short by the deadline), "
        "16 not sent (deadline), "
    )
    assert len(texts) == 1 and "17 deadline" in texts[0]


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache-file"])
def test_a_deadline_passing_mid_run_keeps_the_identities(server, opts, tmp_path, cache):
    server.latency = 0.05
    server.inject(503, times=3)  # some retries: HTTP attempts beyond the requests
    frame(5).llm.map("{text}", cache=str(tmp_path / "c.sqlite") if cache else False, **opts)  # 5 from the cache
    d, texts = map_quietly(
        frame(60), concurrency=4, deadline=0.3, cache=str(tmp_path / "c.sqlite") if cache else False, **opts
    )
    check_deadline_outcome(d, texts)
    stats = pandas_llm.last_run().stats
    assert stats.unsent["deadline"] > 0 and stats.cached_unique == (5 if cache else 0)


def test_rows_a_pack_answered_without_their_value_are_cut_short_when_the_deadline_comes_first(server, opts):
    # the pack was sent and answered, the row's item was invalid; its own request would come
    # after the deadline: it was counted "not sent" though its pack was sent (and billed)
    server.latency = 2.0  # the deadline passes with both packs in flight (they are kept)
    server.structured.inject("corrupt", match="ticket 3")
    texts = pd.Series([f"ticket {i}" for i in range(20)]).to_frame("text")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", RunWarning)
        texts.llm.extract("{text}", schema=Topic, rows_per_request=10, deadline=1.0, cache=False, **opts)
    report = pandas_llm.last_run()
    stats = check_counts(report)
    assert (stats.ok, dict(stats.cut_short), dict(stats.unsent), stats.attempts) == (19, {"deadline": 1}, {}, 2)
    row = report.details.iloc[3]
    assert row["status"] == "deadline" and row["attempts"] == 1
    assert (
        row["error"]
        == "its pack's answer had no value for it (invalid); not sent again alone: the deadline passed first"
    )
    assert report.summary().startswith(
        "20 rows, 20 distinct requests: 0 rows from cache, 20 requests sent (19 ok, 1 cut short by the deadline), "
    )


def test_rows_of_a_refused_group_are_cut_short_when_the_deadline_comes_before_their_resend(server, opts):
    server.latency = 2.0
    texts = [f"t{i}" for i in range(10)]
    texts[2] = "poison"
    server.endpoints.refuse_input("poison")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", RunWarning)
        pd.Series(texts).llm.embed(dimensions=4, inputs_per_request=5, deadline=1.0, cache=False, **opts)
    report = pandas_llm.last_run()
    stats = check_counts(report)
    assert (stats.ok, dict(stats.cut_short), dict(stats.unsent), stats.attempts) == (5, {"deadline": 5}, {}, 2)
    refused = report.details.iloc[:5]
    assert (refused["status"] == "deadline").all() and refused["error"].str.contains("input\\[2\\]").all()
    assert report.summary().startswith(
        "10 rows, 10 distinct requests: 0 rows from cache, 10 requests sent (5 ok, 5 cut short by the deadline), "
    )
