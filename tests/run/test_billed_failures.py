"""Tokens billed on a response without an answer are counted: in the run's figures, the row's
record and ``max_cost``, whatever the row's status, for every billed attempt (retries included)."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest

import pandas_llm
from pandas_llm import Price
from pandas_llm._batch.files import parse_line

PRICE = Price.per_million(input=1, output=1)  # $1 per million tokens: 5,000 tokens = $0.005
USAGE = {"prompt_tokens": 5000, "completion_tokens": 0, "total_tokens": 5000}
NO_CHOICES = {"id": "x", "object": "chat.completion", "choices": [], "usage": USAGE}
ERROR_OBJECT = {"error": {"message": "upstream rejected", "type": "invalid_request_error"}, "usage": USAGE}


@pytest.mark.parametrize("max_cost", [None, 1.0])
def test_tokens_of_an_answer_without_choices_or_an_error_object_are_counted(server, opts, max_cost):
    server.inject(200, body=NO_CHOICES, match="A")
    server.inject(200, body=ERROR_OBJECT, match="B")
    with pytest.warns(pandas_llm.RunWarning):
        pd.DataFrame({"a": ["A", "B"]}).llm.map("{a}", cache=False, model="gpt-4o-mini", prices=PRICE,
                                                max_cost=max_cost, **opts)  # fmt: skip
    run = pandas_llm.last_run()
    d = run.details
    assert d["status"].tolist() == ["error", "error"]
    assert d["prompt_tokens"].tolist() == [5000, 5000]
    assert d["cost"].tolist() == pytest.approx([0.005, 0.005])
    assert run.stats.prompt_tokens == 10_000 and run.stats.cost == pytest.approx(0.01)
    assert "10000 prompt" in run.summary() and "$0.0100" in run.summary()


@pytest.mark.parametrize("body", [NO_CHOICES, ERROR_OBJECT])
def test_max_cost_counts_the_billed_tokens_of_failures(server, opts, body):
    server.inject(200, times=100, body=body)
    with pytest.warns(pandas_llm.RunWarning, match="max_cost"):
        pd.DataFrame({"a": [f"row {i}" for i in range(10)]}).llm.map(
            "{a}", cache=False, model="gpt-4o-mini", prices=PRICE, max_cost=0.006, max_tokens=10, concurrency=1,
            **opts,
        )  # fmt: skip
    run = pandas_llm.last_run()
    # $0.005 for a request whose worst case was ~$0.00004: billed past its worst case, so the next
    # reservation is scaled by that overrun and does not fit (before, all 10 were sent at "$0")
    assert server.requests == 1
    assert run.stats.budget_reached and run.stats.cost == pytest.approx(0.005)


@pytest.mark.parametrize(
    "status, body",
    [
        (500, {"error": {"message": "upstream failed", "type": "server_error"}, "usage": USAGE}),
        (200, {"error": {"message": "upstream failed", "type": "server_error"}, "usage": USAGE}),
    ],
)
@pytest.mark.parametrize("max_cost", [None, 1.0])
def test_each_billed_attempt_of_a_retried_row_counts(server, opts, fast_retries, status, body, max_cost):
    server.inject(status, times=2, body=body, match="A")
    out = pd.DataFrame({"a": ["A"]}).llm.map("{a}", cache=False, model="gpt-4o-mini", prices=PRICE,
                                             max_cost=max_cost, **opts)  # fmt: skip
    assert out.notna().all()
    run = pandas_llm.last_run()
    d = run.details.iloc[0]
    answer_tokens = run.stats.prompt_tokens - 10_000
    assert 0 < answer_tokens < 100  # the answer's own prompt tokens, on top of the two billed failures
    assert d["prompt_tokens"] == run.stats.prompt_tokens and d["attempts"] == 3
    assert d["cost"] == pytest.approx(run.stats.cost) and run.stats.cost > 0.01


def test_max_cost_stops_retrying_when_the_billed_failures_leave_no_room(server, opts, fast_retries):
    body = {"error": {"message": "upstream failed", "type": "server_error"}, "usage": USAGE}
    server.inject(500, times=100, body=body)
    with pytest.warns(pandas_llm.RunWarning):
        pd.DataFrame({"a": ["A"]}).llm.map("{a}", cache=False, model="gpt-4o-mini", prices=PRICE,
                                           max_cost=0.008, max_tokens=10, **opts)  # fmt: skip
    run = pandas_llm.last_run()
    # the first attempt billed 250 times its worst case (an overrun no cap can foresee); its
    # retry is reserved at that overrun, $0.005, which no longer fits under $0.008: not sent
    assert server.requests == 1
    assert run.stats.cost == pytest.approx(0.005) and run.details["cost"].iloc[0] == pytest.approx(0.005)
    assert run.details["status"].iloc[0] == "budget" and run.stats.cut_short["budget"] == 1  # not "failed"
    assert "exceed max_cost" in run.details["error"].iloc[0]


@pytest.mark.parametrize("rows", [1, 10])
def test_a_retried_billed_failure_never_takes_the_run_over_max_cost(server, opts, fast_retries, rows):
    body = {"error": {"message": "boom", "type": "server_error"},
            "usage": {"prompt_tokens": 10_000, "completion_tokens": 0, "total_tokens": 10_000}}  # fmt: skip
    server.inject(500, times=1000, body=body)
    for cap in (0.015, 0.025, 0.035):
        with pytest.warns(pandas_llm.RunWarning):
            pd.DataFrame({"a": [f"q{i}" for i in range(rows)]}).llm.map(
                "{a}", cache=False, model="gpt-4o-mini", prices=PRICE, max_cost=cap, max_tokens=10, concurrency=1,
                **opts)  # fmt: skip
        run = pandas_llm.last_run()
        assert run.stats.cost <= cap  # each billed attempt is $0.01: the retries stop before the cap
        assert set(run.details["status"]) <= {"budget"}


@pytest.mark.parametrize("body", [NO_CHOICES, ERROR_OBJECT])
def test_a_batch_line_without_an_answer_keeps_its_billed_tokens(body):
    key = bytes(range(32))
    line = orjson.dumps({"custom_id": key.hex(), "response": {"status_code": 200, "body": body}})
    got, record, _ = parse_line(line, cost=lambda u: u.prompt_tokens * 1e-6, model="m", endpoint="http://x/v1")
    assert got == key and record.status == "error"
    assert record.prompt_tokens == 5000 and record.cost == pytest.approx(0.005)
