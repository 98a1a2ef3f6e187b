"""retrying(): the loop for every call outside the engine (the Batch API client's calls)."""

from __future__ import annotations

import pytest

from pandas_llm._errors import FatalAPIError, QuotaError, RateLimitError, RetryableError
from pandas_llm._run.retry import RetryPolicy, retrying


class Flaky:
    def __init__(self, failures: list[Exception], answer: str = "ok"):
        self.failures, self.answer, self.calls = list(failures), answer, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.answer


class Sleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def test_retries_until_an_answer_waiting_the_backoff_or_the_servers_retry_after():
    call, sleeps = (
        Flaky([RetryableError("503", status=503), RetryableError("429", status=429, retry_after=7.5)]),
        Sleeps(),
    )
    assert await retrying(call, RetryPolicy(jitter=0.0), sleep=sleeps) == "ok"
    assert call.calls == 3 and sleeps == [0.5, 7.5]


async def test_gives_up_after_max_attempts_with_the_last_error_and_never_sleeps_after_it():
    errors = [RetryableError(f"503 #{i}", status=503) for i in range(5)]
    call, sleeps = Flaky(errors), Sleeps()
    with pytest.raises(RetryableError, match="503 #2"):
        await retrying(call, RetryPolicy(max_attempts=3, jitter=0.0), sleep=sleeps)
    assert call.calls == 3 and sleeps == [0.5, 1.0]


async def test_other_errors_are_not_retried():
    call, sleeps = Flaky([FatalAPIError("401", status=401)]), Sleeps()
    with pytest.raises(FatalAPIError, match="401"):
        await retrying(call, RetryPolicy(), sleep=sleeps)
    assert call.calls == 1 and sleeps == []


async def test_recover_ends_the_retries_with_what_it_found():
    call, sleeps = Flaky([RetryableError("dropped", status=None)] * 3), Sleeps()

    async def recover() -> str:
        return "found"

    assert await retrying(call, RetryPolicy(), sleep=sleeps, recover=recover) == "found"
    assert call.calls == 1 and sleeps == []


async def test_a_retry_after_of_hours_is_a_quota_raised_at_once_not_slept():
    call, sleeps = Flaky([RateLimitError("429", status=429, retry_after=6 * 3600)]), Sleeps()
    with pytest.raises(QuotaError, match="quota"):
        await retrying(call, RetryPolicy(), sleep=sleeps)
    assert call.calls == 1 and sleeps == []
