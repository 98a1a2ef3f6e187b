"""The engine at the rate limit: learned limits, pause-all on 429, bounded in-flight state.

Counts only, never timings (speed figures live in benchmarks/)."""

from __future__ import annotations

import asyncio

import pytest

import pandas_llm  # noqa: F401 - registers the accessor
from helpers import VirtualTime, frame
from pandas_llm._backends import Completion
from pandas_llm._errors import RateLimitError
from pandas_llm._run.engine import Engine, RetryPolicy
from pandas_llm._run.limiter import Limiter
from pandas_llm._stats import RunStats
from pandas_llm._store.store import Store
from pandas_llm.testing import LLMServer


@pytest.mark.parametrize("limits", [dict(rpm=6000), dict(tpm=60_000)])
def test_a_rate_limited_run_learns_the_limit_and_every_row_succeeds(limits):
    # 100 requests (or 1,000 tokens) in any 1-second window; the client is not told
    n = 200
    with LLMServer(window=1.0, **limits) as srv:
        out = frame(n).llm.map(
            "Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False, concurrency=64
        )
        assert out.tolist() == [f"echo: Say: row {i}" for i in range(n)]
        assert srv.completed == n
        assert srv.rate_limited <= 5, f"{srv.rate_limited} 429s for {n} rows"


def test_a_run_told_the_limit_stays_under_it():
    n = 150
    with LLMServer(rpm=6000, window=1.0) as srv:
        out = frame(n).llm.map(
            "Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False,
            concurrency=100, rpm=6000,
        )  # fmt: skip
        assert out.notna().all()
        assert srv.completed == n and srv.rate_limited <= 5


def test_a_request_larger_than_the_token_limit_is_that_rows_error_not_retried_forever():
    with LLMServer(tpm=100) as srv:
        with pytest.warns(pandas_llm.RunWarning):
            details = frame(2).llm.map(
                "Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False,
                max_tokens=500, details=True,
            )  # fmt: skip
        assert details["status"].tolist() == ["error", "error"]
        assert "Request too large" in details["error"].iloc[0]
        assert srv.requests == 2 and srv.completed == 0


class FakeBackend:
    """Answers at once on virtual time; the first ``fail`` calls get a 429."""

    def __init__(
        self, vt: VirtualTime, fail: int = 0, retry_after: float | None = 2.0, message="HTTP 429", headers=None
    ):
        self.vt, self.fail, self.retry_after = vt, fail, retry_after
        self.message, self.headers = message, headers
        self.calls: list[tuple[float, bytes]] = []
        self.rejected: list[float] = []

    async def complete(self, body: bytes) -> Completion:
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            self.rejected.append(self.vt.now)
            raise RateLimitError(self.message, status=429, retry_after=self.retry_after, headers=self.headers)
        self.calls.append((self.vt.now, body))
        return Completion("ok:" + body.decode(), "stop", 3, 2)

    async def aclose(self) -> None:
        pass


def engine(vt: VirtualTime, backend, *, concurrency=20, rpm=600, max_attempts=6, deadline=None):
    stats = RunStats()
    stats.started = vt.now
    limiter = Limiter(rpm=rpm, headroom=1.0, clock=vt.clock, sleep=vt.sleep)
    eng = Engine(
        backend=backend, store=Store(None), stats=stats, concurrency=concurrency,
        retry=RetryPolicy(max_attempts=max_attempts, deadline=deadline), limiter=limiter,
        clock=vt.clock, sleep=vt.sleep,
    )  # fmt: skip
    return eng, stats


def jobs(n: int):
    for u in range(n):
        yield u, u.to_bytes(32, "big"), f"job{u}".encode()  # distinct keys, as dedup makes them


async def test_a_429_pauses_every_worker_and_sending_resumes_on_a_ramp():
    vt = VirtualTime()
    backend = FakeBackend(vt, fail=1, retry_after=2.0)
    eng, stats = engine(vt, backend, rpm=600)  # 10 per second
    await vt.run(eng.run(jobs(40)))
    eng.store.close()
    assert stats.ok == 40 and stats.rate_limited == 1
    (t429,) = backend.rejected
    times = [t for t, _ in backend.calls]
    assert not [t for t in times if t429 < t < t429 + 2.0]  # nobody sent during the pause
    after = [t for t in times if t >= t429 + 2.0]
    gaps = [round(b - a, 6) for a, b in zip(after, after[1:])]
    assert gaps[0] > 0.11 and gaps[-1] == round(0.1 / 0.98, 6)  # slower right after the pause, full rate later
    assert all(a >= b for a, b in zip(gaps, gaps[1:]))


@pytest.mark.parametrize(
    "message, headers",
    [
        ("HTTP 429: Rate limit reached. Please try again later.", {"x-ratelimit-remaining-requests": "550"}),
        ("HTTP 429: The engine is currently overloaded, please try again later.", None),
    ],
)
async def test_a_429_with_the_limit_not_reached_retries_that_request_only(message, headers):
    vt = VirtualTime()
    backend = FakeBackend(vt, fail=1, retry_after=2.0, message=message, headers=headers)
    eng, stats = engine(vt, backend, rpm=600)  # 10 per second
    await vt.run(eng.run(jobs(40)))
    eng.store.close()
    assert stats.ok == 40 and (stats.overloaded, stats.rate_limited, stats.retries) == (1, 0, 1)
    assert eng.limiter.pauses == 0 and eng.limiter._slack == 1.0  # nobody paused, the pace kept
    times = sorted(t for t, _ in backend.calls)
    gaps = {round(b - a, 6) for a, b in zip(times, times[1:])}
    assert gaps <= {0.0, 0.1}  # the others went on at the full rate
    assert times[-1] == pytest.approx(4.0)  # the retried one waited its retry-after (2 s) in the line


async def test_rate_limit_retries_continue_past_max_attempts():
    vt = VirtualTime()
    backend = FakeBackend(vt, fail=10, retry_after=0.5)
    eng, stats = engine(vt, backend, concurrency=1, max_attempts=2)
    await vt.run(eng.run(jobs(3)))
    eng.store.close()
    assert stats.ok == 3 and stats.rate_limited == 10 and not stats.failed


async def test_rate_limit_retries_stop_at_the_deadline():
    vt = VirtualTime()
    backend = FakeBackend(vt, fail=1000, retry_after=1.0)
    eng, stats = engine(vt, backend, concurrency=1, deadline=5.0)
    await vt.run(eng.run(jobs(2)))
    eng.store.close()
    # nothing is sent after the deadline; the rows stay unanswered (the caller labels them "deadline")
    assert stats.deadline_reached and stats.ok == 0 and stats.sent_done == 0
    assert backend.rejected and max(backend.rejected) <= 5.0 and stats.rate_limited < 10


async def test_in_flight_state_is_bounded_by_concurrency():
    concurrency, n = 8, 2000
    pulled = finished = peak = 0

    def lazy_jobs():
        nonlocal pulled, peak
        for job in jobs(n):
            pulled += 1
            peak = max(peak, pulled - finished)
            yield job

    class Backend:
        async def complete(self, body: bytes) -> Completion:
            nonlocal finished
            await asyncio.sleep(0)
            finished += 1
            return Completion("x", "stop", 1, 1)

        async def aclose(self) -> None:
            pass

    stats = RunStats()
    with Store(None) as store:
        eng = Engine(backend=Backend(), store=store, stats=stats, concurrency=concurrency, limiter=Limiter(learn=False))
        await eng.run(lazy_jobs())
    assert stats.ok == n and pulled == n
    assert peak <= concurrency  # never more than one pulled-but-unanswered job per worker


def test_a_map_pulls_rows_lazily(monkeypatch):
    from pandas_llm._plan import planner

    concurrency, n = 4, 3000
    state = {"pulled": 0, "answered": 0, "peak": 0, "calls": 0, "peak_calls": 0}
    original = planner.Plan.jobs

    def spying_jobs(self):
        for job in original(self):
            state["pulled"] += 1
            state["peak"] = max(state["peak"], state["pulled"] - state["answered"])
            yield job

    async def answer(messages, **params):
        state["calls"] += 1
        state["peak_calls"] = max(state["peak_calls"], state["calls"])
        await asyncio.sleep(0)
        state["calls"] -= 1
        state["answered"] += 1
        return messages[-1]["content"].upper()

    monkeypatch.setattr(planner.Plan, "jobs", spying_jobs)
    out = frame(n).llm.map("{text}", client=answer, cache=False, progress=False, concurrency=concurrency)
    assert out.iloc[-1] == f"ROW {n - 1}"
    assert state["pulled"] == n
    assert state["peak"] <= concurrency and state["peak_calls"] <= concurrency


class UsageBackend:
    """Answers at once with 3 + 2 tokens of usage and the given headers."""

    def __init__(self, vt: VirtualTime, headers=None):
        self.vt, self.headers = vt, headers
        self.times: list[float] = []

    async def complete(self, body: bytes) -> Completion:
        await asyncio.sleep(0)
        self.times.append(self.vt.now)
        return Completion("ok", "stop", 3, 2, 0, self.headers)

    async def aclose(self) -> None:
        pass


async def test_token_pacing_follows_real_usage_not_the_reservation():
    vt = VirtualTime()
    stats = RunStats()
    limiter = Limiter(tpm=600, headroom=1.0, clock=vt.clock, sleep=vt.sleep)  # 10 tokens/s
    with Store(None) as store:
        eng = Engine(
            backend=UsageBackend(vt), store=store, stats=stats, concurrency=8, limiter=limiter,
            reserve_tokens=lambda body: 15, clock=vt.clock, sleep=vt.sleep,
        )  # fmt: skip
        await vt.run(eng.run(jobs(21)))
    assert stats.ok == 21
    # 20 requests after the first, 5 tokens each at 10 tokens/s: 10 s (15 reserved would be 30 s)
    assert 9.0 <= vt.now <= 11.0


async def test_reservations_are_sized_after_the_first_answer_brings_a_token_limit():
    vt = VirtualTime()
    stats = RunStats()
    limiter = Limiter(initial_burst=1, headroom=1.0, clock=vt.clock, sleep=vt.sleep)
    backend = UsageBackend(vt, {"x-ratelimit-limit-tokens": "600", "x-ratelimit-remaining-tokens": "600"})
    with Store(None) as store:
        eng = Engine(
            backend=backend, store=store, stats=stats, concurrency=5, limiter=limiter, clock=vt.clock, sleep=vt.sleep
        )
        await vt.run(eng.run(jobs(6)))
    assert stats.ok == 6 and limiter.tokens is not None
    # the ones that waited for the first answer each booked tokens: paced, not a burst at t=0
    assert backend.times.count(0.0) == 1
    assert all(b > a for a, b in zip(backend.times, backend.times[1:]))


def test_random_429s_with_room_left_are_retried_without_pausing_the_run():
    n = 300
    with LLMServer(rpm=600_000, error_rate={429: 0.05}, seed=3) as srv:
        out = frame(n).llm.map("Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False)
        stats = pandas_llm.last_run().stats
        assert out.notna().all() and srv.completed == n
        assert srv.injected > 5 and stats.overloaded == srv.injected
        assert stats.rate_limited == 0 and srv.rate_limited == 0


@pytest.mark.parametrize(
    "rpd, rpd_used",
    [
        # read as per minute, either figure is far above the 1,000 per second enforced
        (1_000_000, 5_000),  # reset "7m12s": longer than a minute, so not a per-minute figure
        (2_000_000, 0),  # reset short (43 ms a request): trusted until a 429 names the real limit
    ],
)
def test_a_per_day_request_header_is_not_paced_as_per_minute(rpd, rpd_used):
    n = 1200
    with LLMServer(rpm=60_000, window=1.0, rpd=rpd, rpd_used=rpd_used) as srv:  # 1,000 per second enforced
        out = frame(n).llm.map(
            "Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False, concurrency=8
        )
        assert out.notna().all() and srv.completed == n
        assert srv.rate_limited <= n // 100, f"{srv.rate_limited} 429s for {n} rows"


@pytest.mark.parametrize("kind", ["quantized", "bucket"])
def test_windows_of_other_shapes_answer_every_row_with_few_429s(kind):
    # quantized: 1,000 a wall-clock second while the headers speak of the minute, so
    # sending on credit is found out by a 429 and stops; bucket: the burst is credit
    n = 2000
    with LLMServer(rpm=60_000, window=1.0, limit_kind=kind) as srv:
        out = frame(n).llm.map(
            "Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False, concurrency=64
        )
        assert out.notna().all() and srv.completed == n
        assert srv.rate_limited <= n // 100, f"{srv.rate_limited} 429s for {n} rows"
