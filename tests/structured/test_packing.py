"""Packing: rows_per_request=k gives the same values, falls back row by row, caches per row."""

from __future__ import annotations

import math
import sqlite3
from typing import Literal

import pandas as pd
import pytest
from pydantic import BaseModel

import pandas_llm
from helpers import spy_writes
from pandas_llm import ConfigError, RunWarning
from pandas_llm._structured.packing import packed_key
from pandas_llm.testing import LLMServer


class Ticket(BaseModel):
    topic: Literal["billing", "bug", "feature", "other"]
    urgency: int
    summary: str
    refund: bool
    amount: float | None = None
    tags: list[str]


LABELS = ["billing", "bug", "feature", "other"]
N = 47  # not a multiple of any k


def frame(n: int = N) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"ticket number {i:03d}" for i in range(n)]}, index=range(100, 100 + n))


@pytest.mark.parametrize("k", [1, 5, 20])
def test_packing_gives_exactly_the_values_of_single_requests(server, opts, k):
    df, opts = frame(), {**opts, "cache": False}  # (with a cache, a packed run reuses single answers)
    single = df.llm.extract("Triage this ticket: {text}", schema=Ticket, **opts)
    server.reset_counters()
    packed = df.llm.extract("Triage this ticket: {text}", schema=Ticket, rows_per_request=k, **opts)
    pd.testing.assert_frame_equal(packed, single)
    assert server.requests == (N if k == 1 else math.ceil(N / k))
    if k > 1:
        report = pandas_llm.last_run().packing
        assert (report.packs, report.rows_packed, report.fallback_rows) == (math.ceil(N / k), N, 0)
        assert sum(server.structured.item_counts.values()) == N


@pytest.mark.parametrize("k", [5, 20])
def test_packing_classify_and_map_give_the_same_values(server, opts, k):
    df, opts = frame(), {**opts, "cache": False}
    for verb, kw in (("classify", {"labels": LABELS}), ("classify", {"labels": LABELS, "multi": True,
                                                                       "reasons": True}),
                     ("classify", {"labels": [True, False]}), ("map", {})):  # fmt: skip
        single = getattr(df.llm, verb)("{text}", **kw, **opts)
        packed = getattr(df.llm, verb)("{text}", rows_per_request=k, **kw, **opts)
        assert pandas_llm.last_run().packing.rows_packed == N
        if isinstance(single, pd.Series):
            pd.testing.assert_series_equal(packed, single)
        else:
            pd.testing.assert_frame_equal(packed, single)


def test_a_pack_whose_ids_do_not_match_gives_no_row_a_value_and_an_invalid_item_only_its_own(server, opts):
    # an id missing, repeated or foreign: the model did not read the items as sent, so no
    # entry of that answer is trusted (the whole pack is sent alone); a corrupt item is only its row
    df = frame(40)
    bad = {"drop": 3, "duplicate": 14, "corrupt": 22, "bad_id": 31}
    for kind, i in bad.items():
        server.structured.inject(kind, match=f"ticket number {i:03d}")
    packed = df.llm.extract("{text}", schema=Ticket, rows_per_request=10, **opts)
    counts = server.prompt_counts  # single-row requests, by prompt
    sent_alone = {p for p, n in counts.items() if "<item" not in p}
    whole = [*range(0, 20), *range(30, 40)]
    assert sent_alone == {f"ticket number {i:03d}" for i in [*whole, 22]}
    assert all(counts[p] == 1 for p in sent_alone)
    assert server.structured.packed_requests == 4
    assert set(server.structured.item_counts.values()) == {1}
    report = pandas_llm.last_run().packing
    assert report.fallback_rows == 31 and report.rows_packed == 9
    assert report.fallback_reasons == {"pack ids mismatch": 27, "missing": 2, "duplicated": 1, "invalid": 1}
    assert "27 pack ids mismatch" in str(report)
    stats = pandas_llm.last_run().stats
    assert (stats.to_send, stats.sent_done, stats.ok, sum(stats.failed.values())) == (40, 40, 40, 0)
    server.clear_faults()
    single = df.llm.extract("{text}", schema=Ticket, cache=False, **opts)
    pd.testing.assert_frame_equal(packed, single)


def test_a_pack_whose_answer_stays_invalid_falls_back_whole(server, opts):
    # 3 broken answers: the pack's first answer and its two resends; the rows then go alone
    server.structured.inject("invalid_json", match="ticket number 007", times=3)
    out = frame(12).llm.extract("{text}", schema=Ticket, rows_per_request=6, **opts)
    assert out["summary"].notna().all()
    report = pandas_llm.last_run().packing
    assert report.fallback_rows == 6 and report.fallback_reasons == {"pack invalid": 6}
    assert server.structured.packed_requests == 2 + 2 and server.requests == 4 + 6


def test_a_row_that_stays_invalid_alone_is_invalid(server, opts):
    server.structured.inject("corrupt", match="ticket number 002")
    server.structured.inject("violate", match="ticket number 002", times=None)
    with pytest.warns(RunWarning, match="1 invalid"):
        out = frame(5).llm.extract("{text}", schema=Ticket, rows_per_request=5, **opts)
    assert out["summary"].isna().tolist() == [False, False, True, False, False]
    assert pandas_llm.last_run().details["status"].iloc[2] == "invalid"


def test_each_row_is_cached_under_its_own_key_whatever_k(server, opts):
    opts = {**opts, "cache": "c.sqlite"}
    df = frame()
    first = df.llm.extract("{text}", schema=Ticket, rows_per_request=5, **opts)
    server.reset_counters()
    again = df.llm.extract("{text}", schema=Ticket, rows_per_request=8, **opts)  # other k: all reused
    pd.testing.assert_frame_equal(again, first)
    assert server.requests == 0 and pandas_llm.last_run().packing.reused == N
    more = pd.concat([df, pd.DataFrame({"text": ["a new ticket"]}, index=[999])])
    more.llm.extract("{text}", schema=Ticket, rows_per_request=5, **opts)
    assert server.requests == 1 and server.structured.item_counts == {"a new ticket": 1}


def test_rows_that_fell_back_are_reused_by_a_run_without_packing(server, opts):
    opts = {**opts, "cache": "c.sqlite"}
    df = frame(10)
    server.structured.inject("corrupt", match="ticket number 004")
    df.llm.extract("{text}", schema=Ticket, rows_per_request=5, **opts)
    server.reset_counters()
    df.llm.extract("{text}", schema=Ticket, **opts)  # unpacked: packed answers answered another request
    assert server.requests == 9 and server.count("ticket number 004") == 0


def test_a_packed_answer_committed_before_a_crash_is_not_paid_again(server, opts):
    opts = {**opts, "cache": "c.sqlite"}
    df = frame(10)
    first = df.llm.extract("{text}", schema=Ticket, rows_per_request=5, **opts)
    keys = pandas_llm.last_run().plan.keys
    forget_rows_of_packs(keys)
    server.reset_counters()
    again = df.llm.extract("{text}", schema=Ticket, rows_per_request=5, **opts)
    pd.testing.assert_frame_equal(again, first)
    assert server.requests == 0


def test_packed_requests_put_fixed_text_first_and_rows_last(opts):
    bodies = []

    def fn(messages, **params):
        bodies.append((messages, params))
        import re

        ids = re.findall(r'<item id="(\d+)">', messages[-1]["content"])
        return '{"items": [' + ",".join(f'{{"id": {i}, "label": "bug"}}' for i in ids) + "]}"

    out = frame(7).llm.classify("{text}", labels=LABELS, system="You triage.", rows_per_request=4,
                                client=fn, progress=False, max_tokens=10)  # fmt: skip
    assert out.tolist() == ["bug"] * 7 and len(bodies) == 2
    messages, params = bodies[0]
    assert [m["role"] for m in messages] == ["system", "user"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert system.startswith("You triage.\n\nClassify the input") and "<item id" in system
    assert user.startswith('<item id="1">\nticket number 000\n</item>') and "ticket number" not in system
    assert bodies[0][0][0] == bodies[1][0][0]  # the same system message for every pack: a cacheable prefix
    item = params["response_format"]["json_schema"]["schema"]["properties"]["items"]["items"]
    assert list(item["properties"]) == ["id", "label"] and params["response_format"]["json_schema"]["strict"]
    assert params["max_tokens"] == 4 * 10 + 16 * 4  # a pack answers k rows


def test_rows_a_template_function_renders_differently_are_sent_alone(server, opts):
    def template(row):
        if row["text"].endswith("1"):
            return [{"role": "system", "content": "special"}, {"role": "user", "content": row["text"]}]
        return row["text"]

    out = frame(4).llm.classify(template, labels=LABELS, rows_per_request=4, **opts)
    assert out.notna().all()
    report = pandas_llm.last_run().packing
    assert report.fallback_reasons == {"not packable": 1} and report.rows_packed == 3


def test_packing_reports_the_tokens_it_saved(server, opts):
    out = frame(100).llm.extract("{text}", schema=Ticket, rows_per_request=20, **opts)
    assert out["summary"].notna().all()
    run = pandas_llm.last_run()
    report = run.packing
    assert report.saved_prompt_tokens > 0 and 0.5 < report.saved_fraction < 1
    assert "saved ~" in str(report) and "packing 20 rows/request" in run.summary()


def test_packing_needs_a_schema_with_fields(server, opts):
    with pytest.raises(ConfigError):
        frame(3).llm.extract("{text} in JSON", schema="json_object", rows_per_request=2, **opts)
    with pytest.raises(ConfigError, match="schema="):
        frame(3).llm.map("{text}", response_format={"type": "json_object"}, rows_per_request=2, **opts)
    assert server.requests == 0


def test_packing_with_json_object_fallback(server, opts):
    df, opts = frame(20), {**opts, "cache": False}
    single = df.llm.extract("{text}", schema=Ticket, **opts)
    packed = df.llm.extract("{text}", schema=Ticket, structured="json_object", rows_per_request=10, **opts)
    pd.testing.assert_frame_equal(packed, single)
    assert pandas_llm.last_run().packing.rows_packed == 20 and server.structured.packed_requests == 2


def test_a_row_schema_with_its_own_id_field_packs_too(server, opts):
    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
              "required": ["id", "name"]}  # fmt: skip
    df, opts = frame(9), {**opts, "cache": False}
    single = df.llm.extract("{text}", schema=schema, **opts)
    packed = df.llm.extract("{text}", schema=schema, rows_per_request=4, **opts)
    pd.testing.assert_frame_equal(packed, single)
    assert pandas_llm.last_run().packing.rows_packed == 9


INSTRUCTION = "You route support tickets to the right queue. " * 20 + "\n\nTicket: "


def test_the_templates_fixed_text_is_sent_once_per_pack_and_values_equal_single_requests(server, opts):
    df, opts = frame(40), {**opts, "cache": False}
    template = INSTRUCTION + "{text} (end)"
    single = df.llm.classify(template, labels=LABELS, **opts)
    single_tokens = server.prompt_tokens
    server.reset_counters()
    packed = df.llm.classify(template, labels=LABELS, rows_per_request=20, **opts)
    pd.testing.assert_series_equal(packed, single)
    assert server.structured.packed_requests == 2 and server.requests == 2
    # the server answered each item as the full single prompt: instruction + row + tail
    assert set(server.structured.item_counts) == {INSTRUCTION + t + " (end)" for t in df["text"]}
    packed_tokens = server.prompt_tokens
    assert packed_tokens < 0.2 * single_tokens  # the instruction is not repeated per row
    report = pandas_llm.last_run().packing
    assert report.rows_packed == 40 and report.saved_fraction > 0.8
    server.reset_counters()
    by_hand = df.llm.classify("{text} (end)", labels=LABELS, rows_per_request=20,
                              system=INSTRUCTION.strip(), **opts)  # fmt: skip
    assert by_hand.notna().all()
    assert packed_tokens < 1.1 * server.prompt_tokens  # as cheap as moving it to system= by hand


def test_a_packed_prompt_holds_the_fixed_text_once_before_the_rows(opts):
    bodies = []

    def fn(messages, **params):
        bodies.append(messages)
        import re

        ids = re.findall(r'<item id="(\d+)">', messages[-1]["content"])
        return '{"items": [' + ",".join(f'{{"id": {i}, "label": "bug"}}' for i in ids) + "]}"

    frame(6).llm.classify(INSTRUCTION + "{text}", labels=LABELS, rows_per_request=6, client=fn, progress=False)
    user = bodies[0][-1]["content"]
    assert user.count("You route support tickets") == 20  # once, not once per row
    assert user.startswith("<template>\n" + INSTRUCTION + '<item/>\n</template>\n\n<item id="1">\nticket number 000\n')
    assert "<template> block" in bodies[0][0]["content"]


def test_short_fixed_text_is_repeated_in_items_rather_than_shared(opts):
    bodies = []

    def fn(messages, **params):
        bodies.append(messages)
        return '{"items": [' + ",".join(f'{{"id": {i}, "label": "bug"}}' for i in (1, 2)) + "]}"

    frame(2).llm.classify("Ticket: {text}", labels=LABELS, rows_per_request=2, client=fn, progress=False)
    assert bodies[0][-1]["content"].startswith('<item id="1">\nTicket: ticket number 000\n</item>')


def test_cached_prompt_tokens_are_reported_and_priced_at_the_cached_rate(opts):
    with LLMServer(prompt_cache=True) as srv:
        o = {**opts, "base_url": srv.base_url, "cache": False, "concurrency": 1}
        frame(3).llm.classify("{text}", labels=LABELS, system="Route tickets. " * 400, **o)
        stats = pandas_llm.last_run().stats
    assert stats.cached_tokens == srv.cached_tokens > 0
    price = pandas_llm._pricing.price_for("gpt-4o-mini")
    expected = pandas_llm._pricing.cost(price, prompt_tokens=srv.prompt_tokens,
                                       completion_tokens=srv.completion_tokens, cached_tokens=srv.cached_tokens)  # fmt: skip
    assert stats.cost == pytest.approx(expected)
    assert "from the provider's prompt cache" in pandas_llm.last_run().summary()


def keys_written(spied: list) -> list[tuple[str, set[bytes]]]:
    """spy_writes' records as (thread name, the keys written)."""
    return [(name, {r.key for r in records}) for name, records in spied]


def forget_rows_of_packs(keys) -> None:
    """As if killed between a pack's commit and its rows': the rows' answers are not on disk."""
    with sqlite3.connect("c.sqlite") as db:
        db.executemany("DELETE FROM results WHERE key = ?", [(packed_key(k),) for k in keys])
    db.close()


def test_packed_answers_are_committed_by_the_commit_thread_with_their_pack(server, opts, monkeypatch):
    spied = spy_writes(monkeypatch)
    frame(12).llm.extract("{text}", schema=Ticket, rows_per_request=4, **{**opts, "cache": "c.sqlite"})
    writes = keys_written(spied)
    run = pandas_llm.last_run()
    rows = {packed_key(k) for k in run.plan.keys}
    written = set().union(*(keys for _, keys in writes))
    assert rows <= written
    assert {name.startswith("pandas-llm-commit") for name, keys in writes if keys & rows} == {True}
    for _, keys in writes:  # each pack's answer in the same transaction as its rows
        if keys & rows:
            assert len(keys - rows) >= 1
    stats = run.stats
    assert (stats.to_send, stats.sent_done, stats.ok, sum(stats.failed.values())) == (12, 12, 12, 0)


def test_a_pack_answered_before_a_crash_is_split_by_the_commit_thread(server, opts, monkeypatch):
    opts = {**opts, "cache": "c.sqlite"}
    df = frame(8)
    first = df.llm.extract("{text}", schema=Ticket, rows_per_request=4, **opts)
    keys = pandas_llm.last_run().plan.keys
    forget_rows_of_packs(keys)
    spied = spy_writes(monkeypatch)
    server.reset_counters()
    again = df.llm.extract("{text}", schema=Ticket, rows_per_request=4, **opts)
    writes = keys_written(spied)
    pd.testing.assert_frame_equal(again, first)
    assert server.requests == 0
    rows = {packed_key(k) for k in keys}
    assert rows <= set().union(*(k for _, k in writes))
    assert {name.startswith("pandas-llm-commit") for name, k in writes if k & rows} == {True}
    stats = pandas_llm.last_run().stats
    assert (stats.to_send, stats.sent_done, stats.ok) == (8, 8, 8)


def test_a_failed_pack_counts_none_of_its_rows_until_they_are_sent_alone(server, opts):
    server.structured.inject("invalid_json", match="ticket number 001", times=3)
    frame(8).llm.extract("{text}", schema=Ticket, rows_per_request=4, **opts)
    stats = pandas_llm.last_run().stats
    assert (stats.to_send, stats.sent_done, stats.ok, sum(stats.failed.values())) == (8, 8, 8, 0)
    assert pandas_llm.last_run().packing.fallback_rows == 4


def test_the_envelope_imports_nothing_from_the_planner_runner_or_store():
    import ast
    from pathlib import Path

    import pandas_llm._structured.packing as envelope

    tree = ast.parse(Path(envelope.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.lstrip(".").split(".")[0] in ("_plan", "_run", "_store", "_batch")]
