"""The max_cost cap: reservation arithmetic, worst cases, and a real run that never goes over."""

from __future__ import annotations

import asyncio
import warnings

import orjson
import pandas as pd
import pytest

import pandas_llm
from helpers import billed, check_counts, varied
from pandas_llm._backends import Completion
from pandas_llm._config import Settings
from pandas_llm._cost.tokens import count_message_tokens
from pandas_llm._pricing import Price, cost, price_for
from pandas_llm._run.budget import Budget, Meter, max_output_tokens
from pandas_llm._stats import RunStats
from pandas_llm._store.store import Record
from pandas_llm.testing import LLMServer

PRICE = Price.per_million(input=1.0, output=2.0, cached_input=0.5)  # $1e-6 in, $2e-6 out


def meter(max_output: int | None = 1000) -> Meter:
    return Meter("gpt-4o-mini", PRICE, max_output=max_output)


# -- arithmetic ---------------------------------------------------------------------------
def test_reserve_until_the_cap_then_wait_then_exhausted():
    b = Budget(10.0, meter())
    assert b.try_reserve(4.0) is True
    assert b.try_reserve(4.0) is True
    assert b.try_reserve(4.0) is None  # 12 > 10 while others hold: wait, maybe they cost less
    b.settle(4.0, 1.0)  # the first one cost 1 of its worst case 4
    assert (b.spent, b.reserved, b.holders) == (1.0, 4.0, 1)
    assert b.try_reserve(4.0) is True  # 1 + 4 + 4 <= 10
    b.settle(4.0, 3.0)
    b.settle(4.0, 3.0)
    assert (b.spent, b.reserved, b.holders) == (7.0, 0.0, 0)
    assert b.try_reserve(4.0) is False  # nothing in flight and 7 + 4 > 10: exhausted
    assert b.exhausted
    assert b.try_reserve(0.5) is False  # once exhausted, nothing more is sent


def test_exactly_at_the_cap_is_allowed():
    b = Budget(1.0, meter())
    assert b.try_reserve(1.0) is True
    b.settle(1.0, 1.0)
    assert b.spent == 1.0 and b.try_reserve(1e-12) is False


def test_no_float_residue_when_idle():
    b = Budget(1.0, meter())
    for _ in range(1000):
        assert b.try_reserve(0.1) is True
        b.settle(0.1, 0.0)
    assert b.reserved == 0.0


def test_reserved_cost_and_budget_reached_are_shown_in_stats():
    stats = RunStats()
    b = Budget(1.0, meter(), stats=stats)
    b.try_reserve(0.75)
    assert stats.reserved_cost == 0.75 and not stats.budget_reached
    b.settle(0.75, 0.5)
    assert stats.reserved_cost == 0.0
    assert b.try_reserve(0.75) is False and stats.budget_reached


def test_what_a_finished_request_is_charged():
    b = Budget(1.0, meter())
    key = b"k" * 32
    assert b.actual(0.3, Record(key, "ok", "hi", prompt_tokens=5, completion_tokens=2, cost=0.01)) == 0.01
    assert b.actual(0.3, Record(key, "failed", error="500")) == 0.0  # an HTTP error costs nothing
    assert b.actual(0.3, Record(key, "ok", "hi")) == 0.3  # answered without usage: charge the worst case
    assert b.actual(0.3, None) == 0.3  # cancelled in flight: it may have been billed


async def test_waiters_wake_on_settle_and_learn_of_exhaustion():
    b = Budget(10.0, meter())
    assert await b.reserve(6.0)
    second = asyncio.ensure_future(b.reserve(6.0))
    third = asyncio.ensure_future(b.reserve(6.0))
    await asyncio.sleep(0)
    assert not second.done() and not third.done()
    b.settle(6.0, 1.0)  # 1 spent: one more fits, then the last finds 1 + 6 + 6 > 10
    assert await second is True
    await asyncio.sleep(0)
    assert not third.done()
    b.settle(6.0, 5.0)  # 6 spent, nothing in flight, 6 + 6 > 10: exhausted
    assert await third is False


async def test_a_cancelled_waiter_does_not_disturb_the_others():
    b = Budget(10.0, meter())
    assert await b.reserve(6.0)
    waiters = [asyncio.ensure_future(b.reserve(6.0)) for _ in range(2)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    b.settle(6.0, 0.0)
    assert await waiters[1] is True
    assert waiters[0].cancelled()


# -- cost and worst case ------------------------------------------------------------------
def test_cost_of_a_completion_with_cached_input():
    m = meter()
    c = Completion("hi", "stop", prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    assert m.cost(c) == pytest.approx(600e-6 + 400 * 0.5e-6 + 200e-6)
    assert m.cost(Completion("hi")) is None  # no usage reported (a plain function client)
    assert Meter("x", None).cost(c) is None  # price unknown


def test_worst_case_is_prompt_at_input_price_plus_max_tokens_at_output_price():
    messages = [{"role": "user", "content": "Translate to French: the cat sat on the mat"}]
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 50})
    prompt = max(count_message_tokens(messages, "gpt-4o-mini"), -(-len(body) // 4))
    assert meter().worst_case(body) == pytest.approx(prompt * 1e-6 + 50 * 2e-6)
    # without max_tokens, the model's output limit bounds the answer
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": messages})
    assert meter(max_output=16_384).worst_case(body) == pytest.approx(-(-len(body) // 4) * 1e-6 + 16_384 * 2e-6)


def test_worst_case_prompt_is_never_below_the_exact_count():
    long = "数据科学 " * 500  # CJK: more tokens than bytes / 4 would suggest
    messages = [{"role": "user", "content": long}]
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 1})
    exact = count_message_tokens(messages, "gpt-4o-mini")
    assert meter().worst_case(body) >= exact * 1e-6 + 2e-6


def test_max_output_tokens():
    assert max_output_tokens("gpt-4o-mini") == 16_384
    assert max_output_tokens("gpt-4.1-nano") == 32_768
    assert max_output_tokens("openai/gpt-5-mini") == 128_000
    assert max_output_tokens("gpt-4-turbo") == 4_096
    assert max_output_tokens("claude-3-5-sonnet") == 200_000  # the context window bounds it
    assert max_output_tokens("my-llama") is None


# -- configuration errors before spending -------------------------------------------------
def test_max_cost_with_unknown_price_is_a_config_error_before_any_request(server):
    df = pd.DataFrame({"t": ["a", "b"]})
    with pytest.raises(pandas_llm.ConfigError, match="needs the price of 'my-llama'.*prices="):
        df.llm.map("{t}", model="my-llama", max_cost=1.0, base_url=server.base_url, api_key="x", cache=False)
    assert server.requests == 0


def test_max_cost_with_unknown_output_limit_needs_max_tokens(server):
    df = pd.DataFrame({"t": ["a", "b"]})
    kw = dict(
        model="my-llama", prices=PRICE, max_cost=1.0, base_url=server.base_url, api_key="x", cache=False, progress=False
    )
    with pytest.raises(pandas_llm.ConfigError, match="pass max_tokens"):
        df.llm.map("{t}", **kw)
    assert server.requests == 0
    assert df.llm.map("{t}", max_tokens=20, **kw).tolist() == ["echo: a", "echo: b"]


@pytest.mark.parametrize("bad", [0, -1.0, "5"])
def test_max_cost_must_be_positive(bad):
    with pytest.raises(pandas_llm.ConfigError, match="max_cost must be a positive number"):
        pandas_llm.Settings(max_cost=bad)


# -- a real run against the loopback server ------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 16])
def test_the_cap_is_never_exceeded_by_what_the_server_billed(concurrency):
    price = price_for("gpt-4o-mini")
    df = pd.DataFrame({"t": [f"Tell me about item {i}" for i in range(300)]})
    cap = 0.0012
    with LLMServer(answer=varied) as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=False, progress=False, concurrency=concurrency)
        with pytest.warns(
            pandas_llm.RunWarning, match=r"budget \(not sent: it could have taken the run over max_cost\)"
        ):
            out = df.llm.map("{t}", max_tokens=80, max_cost=cap, **kw)
        billed = cost(price, prompt_tokens=srv.prompt_tokens, completion_tokens=srv.completion_tokens)
        report = pandas_llm.last_run()
        assert billed <= cap
        assert report.stats.cost == pytest.approx(billed, rel=1e-9)
        assert report.stats.budget_reached and report.stats.unsent["budget"] > 0
        stats = check_counts(report)
        assert f"{stats.sent} requests sent ({stats.ok} ok" in report.summary()
        assert f"), {stats.unsent['budget']} not sent (budget), " in report.summary()
        # it stopped because the next worst case did not fit, not much earlier
        worst = (60 + 80) * price.input + 80 * price.output
        assert billed > cap - 2 * worst
        status = report.details["status"]
        assert set(status) == {"ok", "budget", "length"} or set(status) == {"ok", "budget"}
        assert out.isna().sum() == (status != "ok").sum()
        assert srv.completed == (status != "budget").sum()  # budget rows were never sent
        # a rerun with a cache... here cache=False, so a bigger budget sends everything
        srv.reset_counters()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pandas_llm.RunWarning)  # a few 'length' answers
            df.llm.map("{t}", max_tokens=80, max_cost=1.0, **kw)
        assert srv.completed == 300 and not pandas_llm.last_run().stats.budget_reached


def test_an_endpoint_billing_more_than_the_worst_case_scales_the_later_reservations():
    """A server that counts far more prompt tokens than tiktoken (a gateway's hidden system
    prompt): after its first answer, each reservation is that much larger, so one request at
    a time never goes over the cap."""
    from pandas_llm.testing import MockBackend

    def handler(request):
        return {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100_000, "completion_tokens": 5},
        }

    df = pd.DataFrame({"t": [f"row {i}" for i in range(50)]})
    with pytest.warns(pandas_llm.RunWarning, match="budget"):
        df.llm.map("Say {t}", client=MockBackend(handler), cache=False, progress=False, max_tokens=10,
                   max_cost=0.05, concurrency=1)  # fmt: skip
    stats = pandas_llm.last_run().stats
    assert stats.cost <= 0.05 and stats.ok == 3  # $0.015 each: the 4th would have made $0.060


def test_budget_rows_are_sent_by_a_rerun_with_more_budget(tmp_path):
    df = pd.DataFrame({"t": [f"Tell me about item {i}" for i in range(100)]})
    with LLMServer() as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=tmp_path / "c.sqlite", progress=False, max_tokens=50)
        with pytest.warns(pandas_llm.RunWarning, match="max_cost"):
            first = df.llm.map("{t}", max_cost=0.0002, **kw)
        answered = first.notna().sum()
        assert 0 < answered < 100
        second = df.llm.map("{t}", max_cost=1.0, **kw)
        assert second.notna().all()
        assert srv.completed == 100  # nothing answered was paid twice
        assert pandas_llm.last_run().stats.cached == answered


def test_a_cap_below_one_request_sends_nothing(server):
    df = pd.DataFrame({"t": ["a", "b", "c"]})
    with pytest.warns(pandas_llm.RunWarning, match="3 budget"):
        out = df.llm.map(
            "{t}", max_cost=1e-9, max_tokens=10, base_url=server.base_url, api_key="x", cache=False, progress=False
        )
    assert out.isna().all() and server.requests == 0
    report = pandas_llm.last_run()
    assert check_counts(report).unsent == {"budget": 3}
    assert "3 rows, 3 distinct requests: 0 rows from cache, 0 requests sent (0 ok), 3 not sent (budget)," in (
        report.summary()
    )


# -- the cap with the schema verbs: resends of invalid answers, packed requests ------------
REVIEW = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative"]}, "summary": {"type": "string"}},
    "required": ["sentiment", "summary"],
}


def test_the_cap_holds_when_invalid_answers_are_asked_again(server, opts):
    # every prompt with "item 1" gets broken JSON forever: each such row costs 3 requests
    server.structured.inject("invalid_json", match="item 1", times=None)
    df = pd.DataFrame({"t": [f"Review of item {i}" for i in range(200)]})
    cap = 0.002
    with pytest.warns(pandas_llm.RunWarning, match="budget"):
        df.llm.extract("{t}", schema=REVIEW, max_tokens=60, max_cost=cap, cache=False, **opts)
    report = pandas_llm.last_run()
    assert 0 < billed(server) <= cap
    assert report.stats.cost == pytest.approx(billed(server), rel=1e-9)
    statuses = set(report.details["status"])
    assert {"ok", "budget", "invalid"} <= statuses
    check_counts(report)


def test_the_cap_holds_with_packed_requests(server, opts):
    df = pd.DataFrame({"t": [f"Review of item {i}" for i in range(400)]})
    cap = 0.006  # a pack of 10 reserves ~$0.0015: 10 rows' max_tokens, times 3 (2 resends if its envelope is invalid)
    with pytest.warns(pandas_llm.RunWarning, match="budget"):
        out = df.llm.extract(
            "{t}", schema=REVIEW, rows_per_request=10, max_tokens=60, max_cost=cap, cache=False, **opts
        )
    assert server.structured.packed_requests > 0
    assert 0 < billed(server) <= cap
    assert out["sentiment"].notna().sum() > 0 and out["sentiment"].isna().sum() > 0
    check_counts(pandas_llm.last_run())


# -- the Batch API: requests go into batch files only within the cap, at batch prices -------
def test_max_cost_with_the_batch_api_holds_the_cap(server, opts, tmp_path):
    df = pd.DataFrame({"t": [f"row {i}" for i in range(20)]})
    out = df.llm.map("{t}", mode="batch", max_cost=1.0, max_tokens=20, cache=tmp_path / "c.sqlite",
                     poll_interval=0.005, **opts)  # fmt: skip
    assert out.notna().all() and server.requests == 0 and server.batches.batches_created == 1
    assert 0 < pandas_llm.last_run().stats.cost <= 1.0


def test_auto_mode_stays_realtime_under_a_cap(server, opts, tmp_path):
    df = pd.DataFrame({"t": [f"row {i}" for i in range(20)]})
    out = df.llm.map(
        "{t}", mode="auto", batch_threshold=10, max_cost=1.0, max_tokens=20, cache=tmp_path / "c.sqlite", **opts
    )
    assert out.notna().all()
    assert server.batches.batches_created == 0 and server.completed == 20


def test_batch_results_are_priced_with_explicit_prices(server, opts, tmp_path):
    df = pd.DataFrame({"t": [f"row {i}" for i in range(5)]})
    price = pandas_llm.Price.per_million(input=1.0, output=2.0)  # batch: half
    details = df.llm.map("{t}", mode="batch", model="my-llama", prices=price, details=True, poll_interval=0.005,
                         cache=tmp_path / "c.sqlite", **opts)  # fmt: skip
    want = details["prompt_tokens"] * 0.5e-6 + details["completion_tokens"] * 1e-6
    assert details["cost"].tolist() == pytest.approx(want.tolist())


def test_without_max_cost_the_price_is_looked_up_while_the_first_requests_fly():
    from concurrent.futures import Future

    from pandas_llm._config import Settings
    from pandas_llm._run.budget import Meter

    meter = Meter.for_settings(Settings(model="gpt-4o-mini", cache=False))
    assert meter.price is not None and meter.price.input * 1e6 == pytest.approx(0.15)
    pending: Future = Future()
    slow = Meter("no-such-model", pending)
    assert not slow.price_unknown()  # not known yet: nothing to say
    pending.set_result(None)
    assert slow.price is None and slow.price_unknown()


def test_a_run_of_a_model_without_a_price_ends_saying_the_price_is_unknown(server):
    pd.DataFrame({"text": ["a", "b"]}).llm.map(
        "{text}", model="my-local-model", base_url=server.base_url, api_key="x", cache=False, progress=False
    )
    stats = pandas_llm.last_run().stats
    assert stats.ok == 2 and not stats.cost_known


class Answering:
    """A backend that answers every request at once ("ok", 3 prompt + 2 completion tokens),
    counting the calls."""

    calls = 0

    async def complete(self, body: bytes) -> Completion:
        self.calls += 1
        await asyncio.sleep(0)
        return Completion("ok", "stop", 3, 2)

    async def aclose(self) -> None:
        pass


async def test_answers_await_a_price_still_being_looked_up_and_the_loop_runs_on():
    # the price table loads on a thread while the first requests fly; an answer arriving
    # before it is ready waits for it without blocking the event loop (other answers,
    # sends, the display go on), after the limiter has learned from it, and every answer
    # is priced once the price is known
    import threading
    from concurrent.futures import Future

    from helpers import VirtualTime
    from pandas_llm._run.engine import Engine
    from pandas_llm._run.limiter import Limiter
    from pandas_llm._store.store import Store

    vt = VirtualTime()
    pending: Future = Future()
    safety = threading.Timer(10.0, lambda: pending.done() or pending.set_result(None))  # never hang
    safety.start()
    slow = Meter("gpt-4o-mini", pending)

    stats, backend = RunStats(), Answering()
    with Store(None) as store:
        eng = Engine(
            backend=backend, store=store, stats=stats, concurrency=4, cost=slow.cost,
            price_pending=slow.pending, clock=vt.clock, sleep=vt.sleep,
            limiter=Limiter(initial_burst=1, clock=vt.clock, sleep=vt.sleep),  # the rest wait for an answer
        )  # fmt: skip
        run = asyncio.ensure_future(eng.run((u, bytes([u]) * 32, b"{}") for u in range(4)))
        for _ in range(50):
            await asyncio.sleep(0)  # the loop turns: nothing blocks it on the pending price
        # the first answer's headers (none: no limits) let the others go before its price is known
        assert backend.calls == 4 and stats.ok == 0 and not run.done()  # answered, waiting for their price
        pending.set_result(Price.per_million(input=1.0, output=2.0))
        await vt.run(run)
    safety.cancel()
    assert stats.ok == 4 and stats.cost_known
    assert stats.cost == pytest.approx(4 * (3 * 1e-6 + 2 * 2e-6))
    assert slow.pending() is None


async def test_an_answer_abandoned_while_awaiting_its_price_counts_as_possibly_billed():
    from concurrent.futures import Future

    from helpers import VirtualTime
    from pandas_llm._run.engine import Engine
    from pandas_llm._store.store import Store

    vt = VirtualTime()
    pending: Future = Future()

    stats, backend = RunStats(), Answering()
    with Store(None) as store:
        eng = Engine(
            backend=backend, store=store, stats=stats, concurrency=3, price_pending=lambda: pending,
            worst_case=lambda body: 0.5, clock=vt.clock, sleep=vt.sleep,
        )  # fmt: skip
        run = asyncio.ensure_future(eng.run((u, bytes([u]) * 32, b"{}") for u in range(3)))
        for _ in range(50):
            await asyncio.sleep(0)
        run.cancel()  # a second interrupt: everything in hand is abandoned
        with pytest.raises(asyncio.CancelledError):
            await run
    pending.set_result(None)
    assert stats.ok == 0 and stats.lost_answers == 3 and stats.possibly_billed == 1.5


def test_a_deferred_price_look_up_starts_when_asked_or_when_first_needed():
    s = Settings(model="gpt-4o-mini", cache=False)
    lazy = Meter.for_settings(s, defer=True)
    assert not lazy._lookup.started and not lazy.price_unknown()
    assert lazy.pending() is not None and lazy._lookup.started  # an answer that needs it starts it
    assert lazy.price is not None and lazy.pending() is None
    asked = Meter.for_settings(s, defer=True)
    asked.look_up_now()
    assert asked._lookup.started and asked.price == lazy.price
    assert Meter.for_settings(s).price == lazy.price  # not deferred: started at once
