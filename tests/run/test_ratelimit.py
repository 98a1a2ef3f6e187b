"""The limiter on virtual time: exact waits, no sleeping."""

from __future__ import annotations

import asyncio

import pytest

from helpers import VirtualTime
from pandas_llm._config import Settings
from pandas_llm._run.learned import remembered_limits
from pandas_llm._run.limiter import Limiter
from pandas_llm._run.limits import parse_duration


def headers(rpm=None, tpm=None, rem_r=None, rem_t=None, reset_r="1s", reset_t="1s"):
    h = {}
    if rpm is not None:
        h["x-ratelimit-limit-requests"] = str(rpm)
        h["x-ratelimit-remaining-requests"] = str(rpm if rem_r is None else rem_r)
        h["x-ratelimit-reset-requests"] = reset_r
    if tpm is not None:
        h["x-ratelimit-limit-tokens"] = str(tpm)
        h["x-ratelimit-remaining-tokens"] = str(tpm if rem_t is None else rem_t)
        h["x-ratelimit-reset-tokens"] = reset_t
    return h


def limiter(vt: VirtualTime, *args, **kw) -> Limiter:
    kw.setdefault("headroom", 1.0)
    return Limiter(*args, clock=vt.clock, sleep=vt.sleep, **kw)


async def slots(vt: VirtualTime, lim: Limiter, n: int, tokens: int = 0) -> list[float]:
    """Times at which n requests, acquired one after another, were let through."""
    out = []
    for _ in range(n):
        await lim.acquire(tokens)
        out.append(round(vt.now, 6))
    return out


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("869ms", 0.869), ("1s", 1.0), ("6m0s", 360.0), ("1.5s", 1.5), ("2m59.56s", 179.56),
        ("1h2m3s", 3723.0), ("0s", 0.0), ("20ms", 0.02), ("17.284s", 17.284), ("0.5", 0.5),
        ("", None), (None, None), ("soon", None), ("5x", None), ("1s2", None), ("ms", None),
    ],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


async def test_requests_are_paced_evenly():
    vt = VirtualTime()
    lim = limiter(vt, rpm=60)
    assert await vt.run(slots(vt, lim, 4)) == [0.0, 1.0, 2.0, 3.0]
    assert vt.waits == [1.0, 1.0, 1.0]


async def test_headroom_leaves_a_margin():
    vt = VirtualTime()
    lim = limiter(vt, rpm=60, headroom=0.5)
    assert await vt.run(slots(vt, lim, 3)) == [0.0, 2.0, 4.0]


async def test_concurrent_workers_book_successive_slots():
    vt = VirtualTime()
    lim = limiter(vt, rpm=600)  # 10 per second
    times = []

    async def worker():
        await lim.acquire()
        times.append(round(vt.now, 6))

    await vt.run(asyncio.gather(*(worker() for _ in range(5))))
    assert sorted(times) == [0.0, 0.1, 0.2, 0.3, 0.4]


async def test_tokens_are_reserved_and_paced():
    vt = VirtualTime()
    lim = limiter(vt, tpm=600)  # 10 tokens per second
    assert await vt.run(slots(vt, lim, 3, tokens=20)) == [0.0, 2.0, 4.0]


async def test_a_request_larger_than_a_second_of_budget_goes_then_waits_its_cost():
    vt = VirtualTime()
    lim = limiter(vt, tpm=60)  # 1 token per second
    assert await vt.run(slots(vt, lim, 2, tokens=5)) == [0.0, 5.0]


async def test_settle_gives_back_unused_tokens_and_charges_overruns():
    vt = VirtualTime()
    lim = limiter(vt, tpm=600)
    await vt.run(lim.acquire(50))  # booked until t=5
    lim.settle(50, 10)  # used 10: booked until t=1
    await vt.run(lim.acquire(10))
    assert vt.now == 1.0
    lim.settle(10, 40)  # overran by 30 tokens: 3 s more
    await vt.run(lim.acquire(1))
    assert vt.now == 5.0


async def test_reservation_uses_max_tokens_then_real_usage():
    vt = VirtualTime()
    lim = limiter(vt, tpm=600_000, max_tokens=100)
    body = b"x" * 200
    assert lim.reserve(body) == 100 + 4 + 100  # 0.5 token per byte until calibrated
    await vt.run(lim.acquire(204))
    lim.done(204, len(body), prompt_tokens=40, completion_tokens=7, headers=None)
    assert lim.reserve(body) == 46 + 4 + 100  # 40/200 tokens per byte, +15%
    # with max_tokens set the server charges it whatever the answer's length
    assert lim.tokens.tat == pytest.approx(140 / (600_000 / 60))


async def test_reservation_without_max_tokens_follows_the_answers():
    vt = VirtualTime()
    lim = limiter(vt, tpm=600_000)
    assert lim.reserve(b"x" * 100) == 50 + 4 + 320  # 1.25 x a 256-token guess
    await vt.run(lim.acquire(374))
    lim.done(374, 100, prompt_tokens=30, completion_tokens=20, headers=None)
    assert lim.reserve(b"x" * 100) == 35 + 4 + 25
    assert lim.tokens.tat == pytest.approx(50 / (600_000 / 60))  # corrected to 30 + 20


def test_no_token_budget_no_estimate():
    assert Limiter(rpm=60).reserve(b"x" * 1000) == 0


async def test_limits_are_learned_from_headers_after_an_initial_burst():
    vt = VirtualTime()
    lim = limiter(vt, initial_burst=2)
    times = []

    async def worker():
        await lim.acquire()
        times.append(vt.now)

    tasks = [asyncio.ensure_future(worker()) for _ in range(4)]
    await vt.settle()
    assert len(times) == 2  # the rest wait for an answer to say what the limits are
    await vt.advance(0.5)
    lim.done(0, 10, 5, 5, headers(rpm=60, rem_r=58))
    await vt.run(asyncio.gather(*tasks))
    # the two early requests count against the learned 1 per second; the headers say 58
    # remain, so once an answer has come back one more may go at once, on credit
    assert times == [0.0, 0.0, 0.5, 2.0]
    assert lim.requests.rate == 1.0


async def test_an_answer_without_headers_means_no_limits():
    vt = VirtualTime()
    lim = limiter(vt, initial_burst=1)
    await vt.run(lim.acquire())
    waiting = asyncio.ensure_future(lim.acquire())
    await vt.settle()
    assert not waiting.done()
    lim.done(0, 10, 5, 5, headers=None)
    await vt.run(waiting)
    assert await vt.run(slots(vt, lim, 50)) == [0.0] * 50


async def test_a_failed_first_request_hands_its_place_to_a_waiting_one():
    vt = VirtualTime()
    lim = limiter(vt, initial_burst=1)
    await vt.run(lim.acquire())
    waiting = [asyncio.ensure_future(lim.acquire()) for _ in range(2)]
    await vt.settle()
    lim.release(0)  # a connection error says nothing about limits
    await vt.settle()
    assert [w.done() for w in waiting] == [True, False]
    assert lim._unknown
    lim.done(0, 10, 1, 1, headers(rpm=6000))
    await vt.run(waiting[1])


def test_an_answer_without_headers_is_remembered_as_no_limits():
    s = Settings(model="m-none", base_url="http://127.0.0.1:9/v1", cache=False)
    first = Limiter.for_settings(s)
    first.done(0, 10, 1, 1, headers=None)
    assert remembered_limits("http://127.0.0.1:9/v1", "m-none") == (None, None)
    again = Limiter.for_settings(s)
    assert not again._unknown and again.requests is None and again.tokens is None


def test_the_user_limit_wins_when_lower_the_server_limit_when_lower():
    lim = Limiter(rpm=600, tpm=100_000)
    lim.observe(headers(rpm=6000, tpm=50_000))
    assert lim.requests.rate * 60 == 600  # the user asked for less
    assert lim.tokens.rate * 60 == 50_000  # the server allows less


def test_limits_no_process_can_reach_are_ignored():
    lim = Limiter()
    lim.observe(headers(rpm=10_000_000, tpm=10_000_000_000))
    assert lim.requests is None and lim.tokens is None
    assert not lim._unknown


def test_learned_limits_are_remembered_for_the_next_run():
    s = Settings(model="m-remember", base_url="http://127.0.0.1:9/v1", cache=False)
    first = Limiter.for_settings(s)
    assert first._unknown and first.requests is None
    first.observe(headers(rpm=3000, tpm=90_000))
    assert remembered_limits("http://127.0.0.1:9/v1", "m-remember") == (3000, 90_000)
    again = Limiter.for_settings(s)
    assert not again._unknown
    assert (again.requests.rate * 60, again.tokens.rate * 60) == (3000, 90_000)


def test_function_clients_send_no_headers_so_nothing_waits_for_them():
    s = Settings(model="m", client=lambda messages, **kw: "x", cache=False)
    assert not Limiter.for_settings(s)._unknown


async def test_no_room_left_holds_until_the_server_refills():
    vt = VirtualTime()
    lim = limiter(vt, rpm=60)
    lim.observe(headers(rpm=60, rem_r=0, reset_r="869ms"))
    await vt.run(lim.acquire())
    assert vt.now == 0.869  # refill of one request (1 s) is later than the full reset
    vt2 = VirtualTime()
    lim = limiter(vt2, rpm=600)
    lim.observe(headers(rpm=600, rem_r=0, reset_r="30s"))
    await vt2.run(lim.acquire())
    assert vt2.now == pytest.approx(0.1)  # one request at 10 per second


async def test_no_room_for_tokens_holds_too():
    vt = VirtualTime()
    lim = limiter(vt, tpm=6000, max_tokens=10)  # 100 tokens per second
    lim.observe(headers(tpm=6000, rem_t=0, reset_t="59s"))
    await vt.run(lim.acquire(1))
    assert vt.now == pytest.approx(0.14)  # room for the next reservation (10 + 4)


async def test_a_429_pauses_every_worker_then_ramps_up():
    vt = VirtualTime()
    lim = limiter(vt, rpm=600, ramp_floor=0.5, ramp_seconds=2.0)  # 10 per second
    ticket = await vt.run(lim.acquire())
    assert lim.rate_limited(ticket, 0.5) == 0.5
    times = []

    async def worker():
        for _ in range(8):
            await lim.acquire()
            times.append(round(vt.now, 4))

    await vt.run(asyncio.gather(*(worker() for _ in range(3))))
    times.sort()
    assert times[0] == 0.5  # nobody before the pause ends
    gaps = [round(b - a, 4) for a, b in zip(times, times[1:])]
    # half the rate right after the pause, back to 10 per second after the ramp (2 s),
    # less the 2% margin one 429 at a known limit adds
    assert gaps[0] == round(0.2 / 0.98, 4)
    assert all(a >= b - 1e-3 for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] == pytest.approx(0.1 / 0.98, abs=2e-4) and times[-2] > 2.5


async def test_a_pause_voids_slots_booked_before_it():
    vt = VirtualTime()
    lim = limiter(vt, rpm=60)
    await vt.run(lim.acquire())
    late = asyncio.ensure_future(lim.acquire())  # booked for t=1
    await vt.advance(0.5)
    lim.pause(3.0)
    await vt.run(late)
    assert vt.now == 3.5


async def test_backoff_doubles_only_when_a_pause_was_not_enough():
    vt = VirtualTime()
    lim = limiter(vt, rpm=6000, backoff=1.0)
    a = await vt.run(lim.acquire())
    b = await vt.run(lim.acquire())  # both sent before the first pause
    assert lim.rate_limited(a, None) == 1.0
    assert lim.rate_limited(b, None) == pytest.approx(1.0)  # the same pause, not doubled nor extended
    assert lim.paused_until == pytest.approx(1.01)  # b was booked at 0.01
    c = await vt.run(lim.acquire())  # sent after the pause
    assert vt.now >= 1.0
    assert lim.rate_limited(c, None) == 2.0
    d = await vt.run(lim.acquire())
    lim.done(0, 10, 1, 1, headers=None)  # a success resets the backoff
    assert lim.rate_limited(d, None) == 1.0


async def test_a_stale_429_with_retry_after_extends_the_pause():
    vt = VirtualTime()
    lim = limiter(vt, rpm=6000)
    a = await vt.run(lim.acquire())
    b = await vt.run(lim.acquire())
    lim.rate_limited(a, 1.0)
    lim.rate_limited(b, 3.0)
    assert lim.paused_until == pytest.approx(3.0 + vt.now)


async def test_with_no_limits_known_a_429_sets_a_provisional_limit():
    vt = VirtualTime()
    lim = limiter(vt, learn=False)
    for _ in range(10):
        await vt.run(lim.acquire())
        await vt.advance(vt.now + 0.1)  # 10 per second get through
    ticket = await vt.run(lim.acquire())
    lim.rate_limited(ticket, 0.0)
    assert lim.requests is not None and lim._provisional
    assert lim.requests.rate == pytest.approx(0.8 * 11 / 1.0, rel=0.1)
    lim.observe(headers(rpm=300))  # figures from the server replace the guess
    assert lim.requests.rate == 5.0 and not lim._provisional


async def test_a_provisional_limit_grows_while_no_429_comes():
    vt = VirtualTime()
    lim = limiter(vt, learn=False, ramp_seconds=1.0)
    for _ in range(10):
        await vt.run(lim.acquire())
        await vt.advance(vt.now + 0.1)
    lim.rate_limited(await vt.run(lim.acquire()), 0.1)
    start = lim.requests.rate
    await vt.run(slots(vt, lim, int(4 * start)))  # ~4 s of sending: ramp, then two quiet periods
    assert lim.requests.rate == pytest.approx(start * 1.1**2)


async def test_429s_at_a_known_limit_add_margin_that_quiet_time_gives_back():
    vt = VirtualTime()
    lim = limiter(vt, rpm=600, ramp_seconds=0.5)
    for _ in range(3):
        lim.rate_limited(await vt.run(lim.acquire()), 0.0)
    assert lim._slack == pytest.approx(0.98**3)
    await vt.run(slots(vt, lim, 150))  # ~15 s without a 429
    assert lim._slack == pytest.approx(0.98**3 + 0.01)
    for _ in range(20):
        lim.rate_limited(await vt.run(lim.acquire()), 0.0)
    assert lim._slack == 0.85


# -- 429s that are not the limit; limits that are not per minute (issue 17 item 2, issue 11 item 5)
RPM_429 = "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 30, Used 30, Requested 1."


@pytest.mark.parametrize(
    "hdrs, message, reserved, limit",
    [
        (None, RPM_429, 0, True),  # the message names the limit it hit
        (headers(rpm=600, rem_r=550), RPM_429, 0, True),  # ... whatever the per-minute headers say
        (headers(rpm=600, rem_r=550), "Rate limit reached. Please try again later.", 0, False),
        (headers(rpm=600, rem_r=0), "Too many requests", 0, True),
        (headers(tpm=6000, rem_t=100), "Too many requests", 500, True),  # no room for this request's tokens
        (headers(tpm=6000, rem_t=1000), "Too many requests", 500, False),
        (None, "The engine is currently overloaded, please try again later.", 0, False),
        (None, "Server is busy, try again later", 0, False),
        (None, "You exceeded your current quota", 0, True),
        (None, "Rate limit exceeded", 0, True),
        (None, "HTTP 429", 0, True),  # nothing to tell: a limit, as before
    ],
)  # fmt: skip
def test_a_429_is_a_limit_only_when_it_says_so(hdrs, message, reserved, limit):
    assert Limiter().is_limit(hdrs, message, reserved) is limit


def test_a_request_limit_whose_reset_is_longer_than_a_minute_is_not_paced_as_per_minute():
    # Groq: x-ratelimit-limit-requests is per day; tokens are per minute
    lim = Limiter()
    lim.observe(headers(rpm=14_400, rem_r=14_370, reset_r="2m59.56s", tpm=6000, rem_t=5900, reset_t="1s"))
    assert lim.requests is None and lim.tokens.rate * 60 == 6000
    assert not lim._unknown  # the first answer told what it could: sending goes on
    lim.observe(headers(rpm=14_400, rem_r=14_369, reset_r="5s"))  # a short reset later changes nothing
    assert lim.requests is None
    lim.observe(headers(rpm=14_400, rem_r=0, reset_r="23h59m"))  # nor does an empty per-day budget hold sending
    assert lim.requests is None
    assert remembered_limits("x", "y") is None  # (no key: nothing remembered)


async def test_a_429_naming_the_per_minute_limit_replaces_a_header_figure_that_counts_per_day():
    vt = VirtualTime()
    lim = limiter(vt)
    # a fresh day: the per-day header's reset is short, so it reads like 14,400 per minute
    lim.observe(headers(rpm=14_400, rem_r=14_399, reset_r="6s"))
    assert lim.requests.rate * 60 == 14_400
    ticket = await vt.run(lim.acquire())
    assert lim.is_limit(None, RPM_429)
    lim.rate_limited(ticket, 2.0, headers(rpm=14_400, rem_r=14_398, reset_r="12s"), RPM_429)
    assert lim.requests.rate * 60 == 30 and lim.requests.told
    lim.observe(headers(rpm=14_400, rem_r=14_397, reset_r="18s"))
    assert lim.requests.rate * 60 == 30  # the header's figure no longer counts
    await vt.run(slots(vt, lim, 2))
    # after the pause, one gap at 30 per minute on the ramp's floor (less the margin a 429 adds)
    assert vt.now == pytest.approx(2.0 + 1.0 / (0.5 * 0.98 * lim.ramp_floor))


def test_a_429_naming_a_per_day_limit_drops_that_header_figure():
    lim = Limiter()
    lim.observe(headers(rpm=1000, rem_r=999, reset_r="1m26.4s"))  # per day, but it looked per minute
    assert lim.requests is None  # (1m26s is already longer than a minute)
    lim = Limiter()
    lim.observe(headers(rpm=1000, rem_r=999, reset_r="30s"))
    lim.rate_limited(0, 60.0, None, "... on requests per day (RPD): Limit 1000, Used 1000, Requested 1.")
    assert lim.requests is None or lim._provisional
    assert "requests" in lim._not_per_minute


def test_the_user_limit_stays_when_a_429_names_a_higher_one():
    lim = Limiter(rpm=20)
    lim.rate_limited(0, 1.0, None, RPM_429)
    assert lim.requests.rate * 60 == 20


# -- learning the window: remaining as credit (issue 17 item 1) -------------------------
async def _run_against(vt, lim, seconds, remaining_after, latency=0.05):
    """Workers send for ``seconds`` of virtual time; each answer (after ``latency``) carries
    ``remaining_after(n, send times)`` as x-ratelimit-remaining-requests (n: requests the
    server had seen when it answered). Returns the send times."""
    sent = []

    async def worker():
        while vt.now < seconds:
            await lim.acquire()
            if vt.now >= seconds:
                break
            sent.append(vt.now)
            n = len(sent)
            await vt.sleep(latency)
            lim.done(0, 10, 1, 1, headers(rpm=600, rem_r=remaining_after(n, sent), reset_r="50ms"))

    await vt.run(asyncio.gather(*(worker() for _ in range(50))))
    return sent


def per_second(times, seconds):
    return [sum(1 for t in times if s <= t < s + 1) for s in range(seconds)]


async def test_a_plain_minute_window_is_used_as_credit_growing_from_the_pace():
    vt = VirtualTime()
    lim = limiter(vt, observe_every=0.0)
    lim.observe(headers(rpm=600, rem_r=599, reset_r="50ms"))  # 10 per second; the whole minute left
    sent = await _run_against(vt, lim, 7, lambda n, times: 600 - n)
    counts = per_second(sent, 7)
    # the pace (10 a second) plus 1, 2, 4, 8, 16, 64 ... on credit while remaining falls one per request
    assert counts[0] <= 12 and counts[1:] == sorted(counts[1:]) and counts[-1] > 60
    assert len(sent) <= 600 and not lim.credit.quantized


async def test_credit_never_exceeds_what_the_headers_say_remains():
    vt = VirtualTime()
    lim = limiter(vt, observe_every=0.0)
    lim.observe(headers(rpm=600, rem_r=79, reset_r="50ms"))  # 80 left this minute
    sent = await _run_against(vt, lim, 10, lambda n, times: max(0, 80 - n))
    # the credit is spent once; the pace (10 a second) goes on as before, the server's
    # remaining refilling at the per-minute rate as far as the limiter knows
    assert 80 <= sum(1 for t in sent if t < 7) <= 80 + 7 * 10 + 1


async def test_remaining_falling_faster_than_requests_means_a_short_window_and_the_pace_only():
    vt = VirtualTime()
    lim = limiter(vt, observe_every=0.0)
    lim.observe(headers(rpm=600, rem_r=599, reset_r="50ms"))
    # a 1-s window reported per minute: each request takes 60 from remaining, a second gives it back
    sent = await _run_against(
        vt, lim, 4, lambda n, times: max(0, 600 - 60 * sum(1 for s in times if s >= int(times[-1])))
    )
    assert lim.credit.quantized
    assert all(abs(c - 10) <= 1 for c in per_second(sent, 4)[1:])  # the pace alone


async def test_a_limit_429_while_requests_remained_means_a_quantized_window():
    vt = VirtualTime()
    lim = limiter(vt)
    lim.observe(headers(rpm=600, rem_r=500, reset_r="1s"))
    ticket = await vt.run(lim.acquire())
    lim.rate_limited(ticket, 0.5, headers(rpm=600, rem_r=499, reset_r="1s"))
    assert lim.credit.quantized and not lim.credit.may_send(vt.now + 5)
    # a 429 with nothing left is the plain window spent, not a quantized one
    lim = limiter(vt)
    lim.observe(headers(rpm=600, rem_r=0, reset_r="1s"))
    lim.rate_limited(await vt.run(lim.acquire()), 0.5, headers(rpm=600, rem_r=0, reset_r="1s"))
    assert not lim.credit.quantized


async def test_a_users_rpm_is_a_ceiling_never_passed_on_credit():
    vt = VirtualTime()
    lim = limiter(vt, rpm=600, observe_every=0.0)
    sent = await _run_against(vt, lim, 3, lambda n, t: 6000 - n)
    assert len(sent) <= 31 and not lim.credit.used  # the pace alone: nothing went on credit


async def test_a_429_found_by_sending_on_credit_pauses_without_ramp_or_extra_margin():
    vt = VirtualTime()
    lim = limiter(vt, rpm=600)
    lim.requests.user = False  # as if learned from headers
    lim.observe(headers(rpm=600, rem_r=500, reset_r="1s"))
    lim.credit.allow = 4.0  # sending on credit
    lim.rate_limited(await vt.run(lim.acquire()), 0.5, headers(rpm=600, rem_r=450, reset_r="1s"))
    assert lim.credit.quantized and lim._slack == 1.0
    assert await vt.run(slots(vt, lim, 3)) == [0.5, 0.6, 0.7]  # the full pace right after the pause


async def test_requests_the_server_refused_without_counting_them_do_not_look_like_a_short_window():
    vt = VirtualTime()
    lim = limiter(vt, observe_every=0.0)
    lim.observe(headers(rpm=6000, rem_r=5999, reset_r="10ms"))
    lim.credit.allow, lim.credit.span = 1000.0, 0.0  # well into the burst: all on credit, at once
    counted = 0
    for i in range(300):
        await vt.run(lim.acquire())
        if i % 5 == 0:
            lim.release(0)  # a busy server's 429: not counted in its remaining
            continue
        counted += 1
        lim.done(0, 10, 1, 1, headers(rpm=6000, rem_r=5999 - counted, reset_r="10ms"))
    assert vt.now < 0.1 and not lim.credit.quantized
