"""The account's coordinator (shared_limit.py): blocks paced on the limit, virtual time."""

from __future__ import annotations

import asyncio

from pandas_llm._dask.limit import Coordinator, SharedLimiter
from pandas_llm._run.limiter import Limiter


def spend(coord: Coordinator, t: list[float], seconds: float, tokens: int = 0, **limits) -> list[float]:
    """Ask for blocks as fast as granted for ``seconds`` of virtual time; the send times."""
    sends = []
    while t[0] < seconds:
        start, n, _, spacing = coord.grant(tokens, limits.get("rpm"), limits.get("tpm"), True)
        sends += [start + i * spacing for i in range(n)]
        t[0] = start
    return sends


def most_in_one_second(sends: list[float]) -> int:
    sends = sorted(sends)
    j, best = 0, 0
    for i, at in enumerate(sends):
        while sends[j] <= at - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_blocks_keep_any_second_under_the_rpm():
    t = [0.0]
    coord = Coordinator(clock=lambda: t[0])
    sends = spend(coord, t, 10.0, rpm=6_000)  # 100 a second (97 at headroom): blocks of 9
    assert coord.granted > 960
    assert most_in_one_second(sends) <= 98


def test_token_limit_paces_blocks_by_their_tokens():
    t = [0.0]
    coord = Coordinator(clock=lambda: t[0])
    sends = spend(coord, t, 10.0, tokens=1_000, tpm=600_000)  # 10,000 tokens a second: 10 requests
    assert 95 <= len(sends) <= 101
    assert most_in_one_second(sends) <= 10


def test_until_a_worker_learns_the_limits_only_the_initial_burst_goes():
    t = [0.0]
    coord = Coordinator(initial_burst=3, clock=lambda: t[0])
    grants = [coord.grant(0, None, None, False) for _ in range(5)]
    assert [g[1] for g in grants] == [1, 1, 1, 0, 0]
    assert grants[-1][0] > t[0]  # ask again later
    assert coord.grant(0, 6000, None, True)[1] >= 1
    assert coord.grant(0, None, None, True)[0] > t[0]  # now paced on 6,000 RPM: the next block waits


def test_no_limits_means_large_blocks():
    coord = Coordinator(clock=lambda: 0.0)
    assert coord.grant(0, None, None, True) == (0.0, 1000, 0, 0.0)


def test_a_429_anywhere_pauses_every_grant():
    t = [0.0]
    coord = Coordinator(clock=lambda: t[0])
    coord.grant(0, 6000, None, True)
    coord.pause(2.0)
    assert coord.grant(0, 6000, None, True)[0] >= 2.0


def test_the_shared_limiter_waits_for_its_grants():
    t = [0.0]
    waits: list[float] = []

    async def sleep(dt: float) -> None:
        waits.append(dt)
        t[0] += dt

    coord = Coordinator(headroom=1.0, clock=lambda: t[0])
    asks = []

    def ask(*args):
        asks.append(args)
        return coord.grant(*args)

    async def main() -> None:
        inner = Limiter(learn=False, clock=lambda: t[0], sleep=sleep)
        lim = SharedLimiter(inner, ask, lambda s: None, rpm=60, clock=lambda: t[0])
        for _ in range(3):
            await lim.acquire()

    asyncio.run(main())
    assert waits == [1.0, 1.0]  # 60 RPM for the whole cluster: one a second
    assert [a[1] for a in asks] == [60, 60, 60]  # blocks of one (a tenth of a second holds less)


def test_a_429_on_one_worker_is_reported_to_the_coordinator():
    paused: list[float] = []

    async def main() -> float:
        inner = Limiter(rpm=600, clock=lambda: 0.0)
        lim = SharedLimiter(inner, lambda *a: (0.0, 1, 0, 0.0), paused.append, clock=lambda: 0.0)
        return lim.rate_limited(0, 2.0, None, "Rate limit reached")  # reported on a thread

    wait = asyncio.run(main())  # waits for the loop's threads
    assert wait > 0 and paused == [wait]


def test_slots_gone_by_are_given_up_not_sent_at_once():
    t = [10.0]
    sent: list[float] = []
    blocks = iter([(9.0, 10, 0, 0.1), (11.0, 10, 0, 0.1)])  # the first reply came 1 s late

    async def sleep(dt: float) -> None:
        t[0] += dt

    async def main() -> None:
        inner = Limiter(learn=False, clock=lambda: t[0], sleep=sleep)
        lim = SharedLimiter(inner, lambda *a: next(blocks), lambda s: None, clock=lambda: t[0])
        for _ in range(3):
            await lim.acquire()
            sent.append(round(t[0], 6))

    asyncio.run(main())
    assert sent == [10.0, 11.0, 11.1]  # one of the late block's slots, not ten at once


def test_the_initial_burst_counts_against_the_first_second():
    t = [0.0]
    coord = Coordinator(initial_burst=16, clock=lambda: t[0])
    sends = [coord.grant(0, None, None, False)[0] for _ in range(16)]
    t[0] = 0.05  # the first answers tell the limit
    sends += spend(coord, t, 3.0, rpm=6000)
    assert most_in_one_second(sends) <= 98
