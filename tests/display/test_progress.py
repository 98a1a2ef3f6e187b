"""Observers: figures, throttling with an injected clock, tqdm, widget, log summary."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

import pandas_llm
from pandas_llm._display import progress
from pandas_llm._display.notebook import WidgetObserver
from pandas_llm._display.progress import LogObserver, Snapshot, ThrottledObserver, TqdmObserver, make_observer
from pandas_llm._stats import RunStats


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder(ThrottledObserver):
    def __init__(self, clock):
        super().__init__(clock=clock)
        self.snaps: list[tuple[Snapshot, bool]] = []

    def draw(self, snap, *, final):
        self.snaps.append((snap, final))


def stats(**kw) -> RunStats:
    base = dict(total=100, unique=100, to_send=100, started=100.0)
    base.update(kw)
    return RunStats(**base)


# -- figures ------------------------------------------------------------------------------
def test_rate_eta_and_projected_cost():
    s = stats(sent_done=20, ok=19, failed=Counter(failed=1), cost=0.002, in_flight=8)
    snap = Snapshot.of(s, now=104.0)
    assert snap.elapsed == 4.0
    assert snap.rate == 5.0  # 20 answered in 4 s
    assert snap.eta == 16.0  # 80 left at 5/s
    assert snap.projected == pytest.approx(0.01)  # $0.0001 per request x 100
    assert snap.n_failed == 1 and snap.ok == 19 and snap.in_flight == 8


def test_eta_counts_only_requests_to_send():
    # 60 came from the cache: the 40 sent ones set the pace, the ETA covers the 30 left
    s = stats(cached_unique=60, to_send=40, sent_done=10, ok=10, cost=0.001, started=0.0)
    snap = Snapshot.of(s, now=2.0)
    assert snap.done == 70 and snap.rate == 5.0 and snap.eta == 6.0
    assert snap.projected == pytest.approx(0.004)


def test_no_answer_yet_means_unknown_eta_and_projection():
    snap = Snapshot.of(stats(), now=101.0)
    assert snap.rate is None and snap.eta is None and snap.projected is None
    assert "ETA --:--" in snap.speed()


def test_unknown_price_shows_tokens_and_says_so():
    s = stats(sent_done=5, ok=5, prompt_tokens=50, completion_tokens=70, cost_known=False)
    snap = Snapshot.of(s, now=101.0)
    assert snap.cost is None and snap.projected is None
    assert snap.money() == "tokens 50 in / 70 out · price unknown"


def test_money_line_with_cache_savings_and_budget():
    s = stats(sent_done=50, ok=50, cost=0.0125, saved_cost=0.5, max_cost=1.0)
    line = Snapshot.of(s, now=110.0).money()
    assert "$0.0125 spent" in line and "~$0.0250 projected" in line
    assert "max_cost $1.00" in line and "cache saved $0.500" in line


def test_pause_retries_and_budget_are_reported_while_running():
    s = stats(paused_until=103.5, retries=7, rate_limited=2, timeouts=4, budget_reached=True)
    trouble = Snapshot.of(s, now=101.0).trouble()
    assert trouble == (
        "rate limited: paused 2.5 s · 2 rate-limit 429s · 7 retries · 4 timeouts · "
        "max_cost reached: no new requests, finishing those in flight"
    )
    assert Snapshot.of(stats(), now=101.0).trouble() is None


def test_429s_from_an_overloaded_server_are_counted_apart_from_rate_limits():
    s = stats(retries=4, rate_limited=1, overloaded=3)
    assert Snapshot.of(s, now=101.0).trouble() == (
        "1 rate-limit 429s · 3 overloaded 429s (limit not reached) · 4 retries"
    )


def test_failure_summary_by_kind_and_unsent():
    s = stats(failed=Counter({"length": 2, "failed": 5}), unsent=Counter(budget=30))
    line = Snapshot.of(s, now=101.0).failures()
    assert line.startswith("5 failed (transient errors persisted after every retry); 2 length (cut off")
    assert line.endswith("; 30 not sent (max_cost reached)")
    assert Snapshot.of(stats(), now=101.0).failures() is None


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(outcome="done", finished=112.0), "done in 12.0 s"),
        (dict(outcome="interrupted", finished=103.0, sent_done=7, ok=7), "interrupted after 3.0 s"),
        (dict(outcome="failed", finished=101.0), "stopped after 1.0 s"),
        (dict(outcome="done", finished=101.0, budget_reached=True), "stopped at max_cost after 1.0 s"),
        (dict(outcome="done", finished=100.0, to_send=0, cached_unique=100), "all from cache"),
    ],
)
def test_verdicts(kw, words):
    snap = Snapshot.of(stats(**kw), now=200.0)
    assert snap.verdict() == words
    assert (snap.advice() is None) == (words.startswith(("done", "all")))


def test_money_and_duration_formats():
    assert progress.money(None) == "price unknown"
    assert progress.money(0.000123456) == "$0.000123"
    assert progress.money(2.5) == "$2.50"
    assert progress.duration(59.6) == "1:00"


# -- throttling ---------------------------------------------------------------------------
def test_updates_are_throttled_to_ten_per_second():
    clock = Clock()
    obs = Recorder(clock)
    s = stats()
    obs.start(s)  # draws once
    for _ in range(10_000):  # a burst of commits at the same instant
        obs.update(s)
    assert obs.draws == 1
    clock.now += 0.099
    obs.update(s)
    assert obs.draws == 1
    clock.now += 0.001
    obs.update(s)
    assert obs.draws == 2
    # one simulated second of updates every millisecond: at most 10 draws
    for _ in range(1000):
        clock.now += 0.001
        obs.update(s)
    assert 9 <= obs.draws - 2 <= 10


def test_close_always_draws_the_final_figures():
    clock = Clock()
    obs = Recorder(clock)
    s = stats()
    obs.start(s)
    s.sent_done = s.ok = 100
    s.outcome, s.finished = "done", 100.01
    obs.close(s)  # within the throttle interval, still drawn
    snap, final = obs.snaps[-1]
    assert final and snap.done == 100 and snap.outcome == "done"


# -- tqdm ---------------------------------------------------------------------------------
def test_tqdm_shows_figures_in_its_postfix():
    out = io.StringIO()
    clock = Clock()
    obs = TqdmObserver(clock=clock, file=out, mininterval=0)
    s = stats(cost=0.0, paused_until=0.0)
    obs.start(s)
    s.sent_done = s.ok = 40
    s.in_flight, s.prompt_tokens, s.completion_tokens, s.cost, s.retries = 16, 12_345, 678, 0.004, 3
    s.timeouts = 2
    clock.now += 1
    obs.update(s)
    text = out.getvalue()
    assert "40/100" in text and "in_flight=16" in text and "tokens=12.3k/678" in text
    assert "cost=$0.00400" in text and "projected=$0.0100" in text and "retries=3" in text
    assert "timeouts=2" in text
    s.outcome, s.finished = "interrupted", 102.0
    obs.close(s)
    assert "pandas-llm (interrupted)" in out.getvalue()


# -- widget -------------------------------------------------------------------------------
def widget_for(s: RunStats, clock: Clock) -> WidgetObserver:
    shown = []
    obs = WidgetObserver(clock=clock, display=shown.append)
    obs.start(s)
    assert shown == [obs]  # shown as itself: the box where widgets render, text elsewhere
    return obs


def test_widget_live_figures():
    clock = Clock()
    s = stats(total=300, cost=0.0)
    obs = widget_for(s, clock)
    assert obs.bar.value == 0 and obs.bar.max == 100 and obs.bar.bar_style == "info"
    s.sent_done, s.ok, s.in_flight, s.cost = 25, 25, 16, 0.001
    s.prompt_tokens, s.completion_tokens, s.retries, s.rate_limited, s.paused_until = 500, 900, 2, 1, 102.0
    clock.now = 105.0
    obs.update(s)
    assert obs.bar.value == 25
    text = obs.text
    assert "25 / 100 requests (300 rows)" in text and "5.0 req/s" in text and "ETA 0:15" in text
    assert "25 ok · 0 failed · 0 from cache · 16 in flight" in text
    assert "tokens 500 in / 900 out · $0.00100 spent · ~$0.00400 projected" in text
    assert "1 rate-limit 429s · 2 retries" in text


def test_widget_final_state_with_failures():
    clock = Clock()
    s = stats()
    obs = widget_for(s, clock)
    s.sent_done, s.ok, s.failed = 100, 97, Counter(length=3)
    s.outcome, s.finished, s.cost = "done", 110.0, 0.02
    obs.close(s)
    assert obs.bar.value == 100 and obs.bar.bar_style == "warning"
    assert "done in 10.0 s" in obs.text and "3 length (cut off at max_tokens" in obs.text
    assert "in flight" not in obs.text and "projected" not in obs.text


def test_widget_interrupted_state():
    clock = Clock()
    s = stats()
    obs = widget_for(s, clock)
    s.sent_done = s.ok = 30
    s.outcome, s.finished, s.unsent = "interrupted", 103.0, Counter(stopped=70)
    obs.close(s)
    assert obs.bar.bar_style == "danger"
    assert "100 requests · interrupted after 3.0 s" in obs.text
    assert "30 answers are kept in the cache: run the same call again to resume" in obs.text
    assert "70 not sent (the run stopped first)" in obs.text


def test_widget_budget_and_price_unknown():
    clock = Clock()
    s = stats(cost_known=False)
    obs = widget_for(s, clock)
    s.sent_done = s.ok = 10
    s.budget_reached, s.outcome, s.finished, s.unsent = True, "done", 101.0, Counter(budget=90)
    obs.close(s)
    assert obs.bar.bar_style == "warning"
    assert (
        "price unknown" in obs.text
        and "stopped at max_cost" in obs.text
        and "90 not sent (max_cost reached)" in obs.text
    )
    assert "run again with a higher max_cost" in obs.text


def test_widget_escapes_html():
    clock = Clock()
    s = stats()
    obs = widget_for(s, clock)
    s.failed = Counter({"<b>x</b>": 1})
    s.outcome, s.finished = "done", 101.0
    obs.close(s)
    assert "<b>x</b>" not in obs.body.value and "&lt;b&gt;x&lt;/b&gt;" in obs.body.value


# -- choosing, combining, logging ---------------------------------------------------------
def test_make_observer_outside_a_kernel():
    assert not progress.in_notebook()
    assert [type(o) for o in make_observer(True).observers] == [TqdmObserver, LogObserver]
    assert [type(o) for o in make_observer(False).observers] == [LogObserver]
    mine = Recorder(Clock())
    assert make_observer(mine).observers[0] is mine


def test_batch_bar_with_progress_text_is_the_plain_tqdm_bar():
    from pandas_llm._batch.status import BatchProgress

    bar = BatchProgress(text=True, file=io.StringIO())
    bar.start(stats())
    assert type(bar.bar).__module__ == "tqdm.std"  # never tqdm's notebook widget
    bar.close(stats(outcome="done"))


def test_make_observer_in_a_kernel_picks_the_widget(monkeypatch):
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    assert type(make_observer(True).observers[0]) is WidgetObserver
    assert type(make_observer("text").observers[0]) is TqdmObserver  # progress="text": the bar, even here


@pytest.mark.parametrize("bad", ["widget", 1, "yes"])
def test_progress_is_validated(bad, llm_server):
    with pytest.raises(pandas_llm.ConfigError, match=r"progress must be True .*'text'"):
        pd.DataFrame({"t": ["a"]}).llm.map("{t}", base_url=llm_server.base_url, api_key="x", progress=bad)
    assert llm_server.requests == 0


class Broken:
    def start(self, stats):
        pass

    def update(self, stats):
        raise RuntimeError("display gone")

    def close(self, stats):
        raise AssertionError("not called after being dropped")


def test_a_broken_display_never_stops_the_run(llm_server, caplog):
    df = pd.DataFrame({"t": [f"r{i}" for i in range(50)]})
    with caplog.at_level(logging.WARNING, logger="pandas_llm"):
        out = df.llm.map("{t}", base_url=llm_server.base_url, api_key="x", cache=False, progress=Broken())
    assert out.tolist() == [f"echo: r{i}" for i in range(50)]
    assert "progress display Broken failed" in caplog.text


def test_run_summary_is_logged(llm_server, caplog):
    df = pd.DataFrame({"t": ["a", "b", "a"]})
    kw = dict(base_url=llm_server.base_url, api_key="x", cache=False, progress=False)
    with caplog.at_level(logging.INFO, logger="pandas_llm"):
        df.llm.map("{t}", **kw)
    (record,) = [r for r in caplog.records if r.name == "pandas_llm"]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "pandas-llm run done: 3 rows, 2 distinct requests, 0 from cache, 2 sent, 2 ok"
    )
    assert "$0.00000" in record.getMessage()  # gpt-4o-mini is priced


def test_import_configures_no_logging_and_prints_nothing():
    code = (
        "import logging, pandas_llm, pandas_llm._display.progress, pandas_llm._display.notebook, pandas_llm._verbs.estimate, pandas_llm._run.budget\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "assert logging.getLogger('pandas_llm').handlers == []\n"
        "assert logging.getLogger('pandas_llm').level == logging.NOTSET\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


# -- cost in a real run -------------------------------------------------------------------
def test_cost_is_summed_stored_and_saved_by_the_cache(llm_server, tmp_path):
    from pandas_llm._pricing import cost, price_for

    df = pd.DataFrame({"t": [f"row number {i}" for i in range(40)]})
    kw = dict(base_url=llm_server.base_url, api_key="x", cache=tmp_path / "c.sqlite", progress=False)
    details = df.llm.map("Say {t}", details=True, **kw)
    first = pandas_llm.last_run().stats
    price = price_for("gpt-4o-mini")
    billed = cost(price, prompt_tokens=llm_server.prompt_tokens, completion_tokens=llm_server.completion_tokens)
    assert first.cost == pytest.approx(billed, rel=1e-12) and first.cost > 0
    assert details["cost"].sum() == pytest.approx(billed, rel=1e-12)
    assert first.prompt_tokens == llm_server.prompt_tokens

    again = df.llm.map("Say {t}", details=True, **kw)  # all from the cache
    second = pandas_llm.last_run().stats
    assert second.cost == 0 and second.sent_done == 0
    assert second.saved_cost == pytest.approx(billed, rel=1e-12)
    # cost per row is stored with the answer: a rerun shows it as saved, and 0 spent
    assert again["saved_cost"].tolist() == details["cost"].tolist() and (again["cost"] == 0).all()
    assert again["from_cache"].all()


def test_explicit_prices_for_an_unknown_model(llm_server):
    price = pandas_llm.Price.per_million(input=1.0, output=2.0)
    df = pd.DataFrame({"t": ["a", "b"]})
    kw = dict(base_url=llm_server.base_url, api_key="x", cache=False, progress=False, model="my-local-llama")
    df.llm.map("{t}", **kw)
    assert not pandas_llm.last_run().stats.cost_known
    df.llm.map("{t}", prices={"my-local-llama": price}, **kw)
    s = pandas_llm.last_run().stats
    assert s.cost_known and s.cost == pytest.approx(s.prompt_tokens * 1e-6 + s.completion_tokens * 2e-6)


@pytest.mark.parametrize("bad", [0.15, {"gpt-4o-mini": 0.15}, {"input": 0.15, "output": 0.6}])
def test_prices_are_validated(bad):
    with pytest.raises(pandas_llm.ConfigError, match="prices must be a pandas_llm.Price"):
        pandas_llm.Settings(prices=bad)


@pytest.mark.parametrize("shown", [True, "text"])
def test_batch_runs_keep_their_bar_and_log_the_summary(shown, llm_server, caplog, capsys):
    df = pd.DataFrame({"t": [f"row {i}" for i in range(6)]})
    kw = dict(base_url=llm_server.base_url, api_key="x", cache=False, poll_interval=0.005)
    with caplog.at_level(logging.INFO, logger="pandas_llm"):
        df.llm.map("{t}", mode="batch", progress=shown, **kw)
    last = capsys.readouterr().err.strip().split("\r")[-1]
    assert last.startswith("pandas-llm batch") and "completed=1" in last  # its own final figures
    assert "pandas-llm run done: 6 rows" in caplog.text


# -- what frontends without widgets see ------------------------------------------------------
class Handle:
    """IPython's DisplayHandle as the widget uses it: the text/plain each update sends."""

    def __init__(self, obj):
        self.texts = [obj._repr_mimebundle_()["text/plain"]]

    def update(self, obj):
        self.texts.append(obj._repr_mimebundle_()["text/plain"])


def test_the_widgets_text_representation_after_a_run_holds_the_counts_and_cost(llm_server):
    handles = []
    obs = WidgetObserver(display=lambda o: handles.append(Handle(o)) or handles[-1])
    llm_server.inject(400, times=1, match="r3")
    df = pd.DataFrame({"t": [f"r{i}" for i in range(10)] + ["r0"]})
    with pytest.warns(pandas_llm.RunWarning):
        df.llm.map("{t}", base_url=llm_server.base_url, api_key="x", cache=False, progress=obs)
    (handle,) = handles
    start, final = handle.texts
    # the first line is drawn once the first requests are out (here: once the first answers are in)
    assert re.match(r"pandas-llm \d+ / 10 requests \(11 rows\)", start) and "VBox" not in start
    assert final == repr(obs) and "VBox" not in final
    assert final.startswith("pandas-llm 10 / 10 requests (11 rows) · done in")
    assert "9 ok · 1 failed · 0 from cache" in final
    assert "tokens " in final and " spent" in final and "$" in final
    assert "1 error (" in final  # the failures by kind
    bundle = obs._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == obs.box.model_id


def test_timeouts_are_counted_and_shown(llm_server):
    llm_server.inject(200, hang=True, times=2, match="slow")
    obs = WidgetObserver(display=lambda o: None)
    df = pd.DataFrame({"t": ["slow", "fast"]})
    out = df.llm.map("{t}", base_url=llm_server.base_url, api_key="x", cache=False, timeout=0.2, progress=obs)
    assert out.notna().all()
    s = pandas_llm.last_run().stats
    assert s.timeouts == 2 and s.retries == 2
    assert "2 retries · 2 timeouts" in repr(obs)
    assert "; 2 timeouts;" in Snapshot.of(s, now=s.finished).summary()


class Order:
    """Records what a run calls on its display, with the requests in flight at ``start``."""

    def __init__(self):
        self.calls: list[str] = []
        self.in_flight_at_start = None

    def start(self, stats):
        self.calls.append("start")
        self.in_flight_at_start = stats.in_flight

    def update(self, stats):
        self.calls.append("update")

    def close(self, stats):
        self.calls.append("close")


@pytest.mark.server(latency=0.3)
def test_the_display_starts_once_the_first_requests_are_out_and_sees_the_whole_run(server):
    # drawing the first bar costs CPU (tqdm's first import: ~10 ms) that the first requests
    # should not wait for: it starts while they are in flight, before any update
    shown = Order()
    df = pd.DataFrame({"t": [f"r{i}" for i in range(20)]})
    out = df.llm.map("{t}", base_url=server.base_url, api_key="x", cache=False, progress=shown, concurrency=4)
    assert out.notna().all()
    assert shown.calls[0] == "start" and shown.calls.count("start") == 1
    assert shown.calls[-1] == "close" and shown.calls.count("close") == 1
    assert shown.in_flight_at_start > 0


def test_a_run_with_nothing_to_send_still_starts_and_closes_its_display(llm_server, tmp_path):
    df = pd.DataFrame({"t": ["a", "b"]})
    kw = dict(base_url=llm_server.base_url, api_key="x", cache=str(tmp_path / "c.sqlite"))
    df.llm.map("{t}", progress=False, **kw)
    shown = Order()
    df.llm.map("{t}", progress=shown, **kw)  # every row from the cache
    assert shown.calls == ["start", "close"]


# -- the displays and the summary agree after a run cut short -------------------------------
def displays_of(s: RunStats) -> tuple[str, str, str]:
    """What the tqdm bar, the widget and the log say of the ended run ``s``."""
    out = io.StringIO()
    bar = TqdmObserver(file=out, mininterval=0)
    bar.start(s)
    bar.close(s)
    widget = WidgetObserver(display=lambda obj: None)
    widget.start(s)
    widget.close(s)
    return out.getvalue(), widget.text, Snapshot.of(s, s.finished).summary()


def agree(report) -> tuple[str, str, str]:
    from helpers import check_counts

    s = check_counts(report)
    cut, unsent = sum(s.cut_short.values()), sum(s.unsent.values())
    bar, widget, log = displays_of(s)
    summary = report.summary()
    assert f"{s.sent} requests sent" in summary and f"{s.sent} sent, " in log
    assert f"{unsent} not sent" in summary and f"not_sent={unsent}" in bar and f"· {unsent} not sent" in widget
    assert f"{cut} cut short" in summary and f"cut_short={cut}" in bar and f"· {cut} cut short" in widget
    assert f", {cut} cut short, {unsent} not sent;" in log
    return bar, widget, log


def test_after_a_deadline_the_bar_the_widget_and_the_log_agree_with_the_summary(server, opts):
    limit = "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 10000, Used 10000, Requested 1."
    server.inject(429, times=1000, match="row 3", retry_after=30, body={"error": {"message": limit}})
    with pytest.warns(pandas_llm.RunWarning):
        pd.DataFrame({"text": [f"row {i}" for i in range(20)]}).llm.map("{text}", concurrency=1, deadline=5, **opts)
    bar, widget, log = agree(pandas_llm.last_run())
    assert "4 sent, 3 ok, 0 failed, 1 cut short, 16 not sent;" in log
    assert "pandas-llm (deadline)" in bar
    assert "stopped at the deadline" in widget and "1 sent, cut short by the deadline (no answer)" in widget
    assert "16 not sent (the deadline passed first)" in widget


def test_after_a_stop_the_bar_the_widget_and_the_log_agree_with_the_summary(server, opts, monkeypatch):
    import asyncio

    from pandas_llm._run.retry import RetryPolicy

    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt, retry_after: 30.0)
    server.latency = 0.05
    server.inject(503, times=1000, match="row 0")  # in its 30 s backoff when the stop comes

    async def main() -> None:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
        task = asyncio.ensure_future(df.llm.amap("{text}", concurrency=2, **opts))
        while server.completed < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    report = pandas_llm.last_run()
    assert report.stats.cut_short == {"stopped": 1}
    bar, widget, log = agree(report)
    assert "pandas-llm (interrupted)" in bar and "interrupted after" in widget
    assert "1 sent, cut short by the stop (no answer)" in widget
