"""Odd numbers in the wait and limit headers (inf, nan, 1e400, negative, huge) are sane waits, never an exception."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import pandas_llm
from pandas_llm._backends.headers import LONGEST, hinted_wait, parse_duration, retry_after
from pandas_llm._run.limiter import Limiter
from pandas_llm._run.stopping import MAX_RETRY_AFTER

ODD = ["inf", "+inf", "Infinity", "1e400", "9" * 400, "nan", "-5", "-inf", "-1e400", "1e300"]


@pytest.mark.parametrize("value", ODD)
def test_every_odd_wait_header_is_a_sane_number_of_seconds(value):
    for headers in ({"retry-after": value}, {"retry-after-ms": value}):
        wait = retry_after(headers)
        assert wait is None or (math.isfinite(wait) and 0 <= wait <= LONGEST), (headers, wait)
    for text in (value, value + "s", value + "ms", "1m" + value + "s"):
        seconds = parse_duration(text)
        assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= LONGEST), (text, seconds)
    hinted = hinted_wait(f"Please try again in {value}s.")
    assert hinted is None or (math.isfinite(hinted) and 0 <= hinted <= LONGEST)


def test_how_odd_waits_read():
    assert retry_after({"retry-after": "inf"}) == retry_after({"retry-after": "1e400"}) == LONGEST > MAX_RETRY_AFTER
    assert retry_after({"retry-after": "-5"}) == 0.0
    assert retry_after({"retry-after": "nan"}) is None  # unreadable: the run's own backoff
    assert retry_after({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0  # the readable one
    assert retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}) == LONGEST
    assert parse_duration("1e400") == parse_duration("9" * 400 + "h") == LONGEST


@pytest.mark.parametrize("value", ODD)
def test_odd_rate_limit_headers_never_raise_in_the_limiter(value):
    lim = Limiter()
    for name in ("requests", "tokens"):
        headers = {
            f"x-ratelimit-limit-{name}": value,
            f"x-ratelimit-remaining-{name}": value,
            f"x-ratelimit-reset-{name}": value,
        }
        lim.observe(headers)
        lim.is_limit(headers, None, 10)
        lim.observe({f"x-ratelimit-limit-{name}": "100", f"x-ratelimit-remaining-{name}": "0",
                     f"x-ratelimit-reset-{name}": value})  # fmt: skip


@pytest.mark.parametrize("value", ["inf", "1e400", "99999999999999999999", "nan", "-5", "-inf"])
def test_an_odd_retry_after_never_crashes_the_run_and_answers_are_kept(server, opts, tmp_path, value):
    server.inject(429, retry_after=value, match="row 20")
    df = pd.DataFrame({"a": [f"row {i}" for i in range(40)]})
    kw = dict(cache=str(tmp_path / "c.sqlite"), concurrency=8, **opts)
    try:
        df.llm.map("{a}", **kw)
    except pandas_llm.QuotaError as exc:  # a wait as good as forever is a quota: stop, say when to come back
        assert value not in ("nan", "-5", "-inf") and exc.retry_after == LONGEST
    details = pandas_llm.last_run().details
    answered = set(df["a"][details["status"] == "ok"])
    # the answers that came are kept: row 20 is taken by a worker only once 20 - 8 earlier
    # rows were settled (8 workers); more may have been abandoned in flight by the quota stop
    assert len(answered) >= 20 - 8
    before = dict(server.prompt_counts)
    out = df.llm.map("{a}", **kw)  # the rerun: the 429 was consumed
    assert out.notna().all()
    assert all(server.prompt_counts[a] == before[a] for a in answered)  # what was answered is not sent again
