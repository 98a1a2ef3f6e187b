"""Prices from genai-prices' bundled table, explicit prices, and per-request cost."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from genai_prices.types import Tier, TieredPrices

from pandas_llm import _pricing as pricing
from pandas_llm._errors import ConfigError
from pandas_llm._pricing import Price, cost, price_for, resolve_price

M = 1_000_000


@pytest.fixture(autouse=True)
def offline(no_network):
    """No network, and every look-up done afresh under that condition."""
    price_for.cache_clear()
    yield
    price_for.cache_clear()


def per_million(price: Price) -> dict[str, float]:
    return {name: round(getattr(price, name) * M, 9) for name in Price.__dataclass_fields__}


def test_gpt_4o_mini_table_price():
    assert per_million(price_for("gpt-4o-mini")) == {
        "input": 0.15,
        "output": 0.60,
        "cached_input": 0.075,
        "batch_input": 0.075,
        "batch_output": 0.30,
        # OpenAI's batch table lists no cached rate for gpt-4o-mini; genai-prices keeps
        # the standard cached rate, which equals the batch input rate.
        "batch_cached_input": 0.075,
    }
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini")


def test_batch_is_half_of_realtime():
    price = price_for("gpt-4o-mini")
    realtime = cost(price, prompt_tokens=M, completion_tokens=M)
    assert realtime == pytest.approx(0.75)
    assert cost(price, prompt_tokens=M, completion_tokens=M, batch=True) == pytest.approx(realtime / 2)


def test_cached_tokens_are_part_of_prompt_tokens():
    price = price_for("gpt-4o-mini")
    # 1M prompt tokens, 400k of them cached: 600k at $0.15/M + 400k at $0.075/M.
    assert cost(price, prompt_tokens=M, completion_tokens=0, cached_tokens=400_000) == pytest.approx(0.09 + 0.03)
    assert cost(price, prompt_tokens=1_000, completion_tokens=200, cached_tokens=400) == pytest.approx(
        (600 * 0.15 + 400 * 0.075 + 200 * 0.60) / M
    )
    assert cost(price, prompt_tokens=0, completion_tokens=0) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 0, "cached_tokens": 11}, "exceed"),
        ({"prompt_tokens": -1, "completion_tokens": 0}, ">= 0"),
        ({"prompt_tokens": 1, "completion_tokens": -1}, ">= 0"),
        ({"prompt_tokens": 1, "completion_tokens": 0, "cached_tokens": -1}, ">= 0"),
    ],
)
def test_cost_rejects_impossible_usage(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cost(Price.per_million(input=1, output=1), **kwargs)


@pytest.mark.parametrize("model", ["no-such-model-xyz", "Qwen/Qwen2.5-0.5B-Instruct"])
def test_unknown_model_has_no_price(model):
    assert price_for(model) is None
    assert resolve_price(model) is None


def test_unknown_provider_has_no_price():
    assert price_for("gpt-4o-mini", provider="no-such-provider") is None


def test_explicit_provider_and_fine_tunes():
    assert price_for("gpt-4o-mini", provider="openai") == price_for("gpt-4o-mini")
    fine_tune = price_for("ft:gpt-4o-mini-2024-07-18:acme::abc123")
    assert fine_tune is not None
    assert fine_tune.input > price_for("gpt-4o-mini").input


def test_lookups_are_cached():
    assert price_for("gpt-4o-mini") is price_for("gpt-4o-mini")
    assert price_for.cache_info().hits >= 1


def _table_without_batch_prices(monkeypatch):
    real = genai_prices.calc_price

    def calc_price(usage, model_ref, **kwargs):
        kwargs.pop("price_context", None)
        return real(usage, model_ref, **kwargs)

    monkeypatch.setattr(genai_prices, "calc_price", calc_price)


def test_missing_batch_price_is_assumed_half_for_openai(monkeypatch):
    _table_without_batch_prices(monkeypatch)
    price = price_for("gpt-5")
    assert price.batch_input == pytest.approx(price.input / 2)
    assert price.batch_output == pytest.approx(price.output / 2)
    assert price.batch_cached_input == pytest.approx(price.cached_input / 2)


def test_missing_batch_price_is_realtime_for_other_providers(monkeypatch):
    _table_without_batch_prices(monkeypatch)
    price = price_for("claude-3-5-haiku-latest")
    assert price is not None
    assert (price.batch_input, price.batch_output, price.batch_cached_input) == (
        price.input,
        price.output,
        price.cached_input,
    )


def test_tiered_prices_use_the_base_tier():
    tiered = TieredPrices(base=Decimal("1.25"), tiers=[Tier(start=200_000, price=Decimal("2.5"))])
    assert pricing._per_token(tiered) == 1.25e-06
    assert pricing._per_token(Decimal("0.8")) == 8e-07


def test_per_million_defaults():
    price = Price.per_million(input=0.15, output=0.60)
    assert per_million(price) == {
        "input": 0.15,
        "output": 0.60,
        "cached_input": 0.15,  # unknown cached rate: charged as input
        "batch_input": 0.075,
        "batch_output": 0.30,
        "batch_cached_input": 0.075,
    }


def test_per_million_cached_and_discount():
    price = Price.per_million(input=2.0, output=8.0, cached_input=0.5, batch_discount=0.25)
    assert per_million(price)["cached_input"] == 0.5
    assert per_million(price)["batch_input"] == 1.5
    assert per_million(price)["batch_cached_input"] == 0.375
    no_discount = Price.per_million(input=2.0, output=8.0, batch_discount=0)
    assert no_discount.batch_output == no_discount.output


@pytest.mark.parametrize("bad", [-0.5, 1.5, True])
def test_per_million_rejects_bad_discounts(bad):
    with pytest.raises(ValueError, match="batch_discount"):
        Price.per_million(input=1, output=1, batch_discount=bad)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1e-7, ConfigError),
        (math.nan, ConfigError),
        (math.inf, ConfigError),
        ("0.1", ConfigError),
        (True, ConfigError),
        (10**400, ConfigError),  # an int too big for a float
    ],
)
def test_price_rejects_bad_values(value, error):
    with pytest.raises(error, match="output"):
        Price(input=0, output=value, cached_input=0, batch_input=0, batch_output=0, batch_cached_input=0)


def test_price_is_frozen_and_keyword_only():
    price = Price.per_million(input=1, output=1)
    with pytest.raises(AttributeError):
        price.input = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Price(1, 1, 1, 1, 1, 1)  # type: ignore[misc]


def test_resolve_price_prefers_the_callers_price():
    mine = Price.per_million(input=1.0, output=2.0)
    assert resolve_price("gpt-4o-mini", mine) is mine
    assert resolve_price("my-local-model", {"my-local-model": mine}) is mine
    # A mapping that does not name the model falls back to the table.
    assert resolve_price("gpt-4o-mini", {"my-local-model": mine}) == price_for("gpt-4o-mini")
    assert resolve_price("gpt-4o-mini") == price_for("gpt-4o-mini")


# -- one pricing of an answer, realtime and Batch API alike --------------------------------
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 100, "completion_tokens": 10, "cached_tokens": 500},  # more cached than prompt
        {"prompt_tokens": 0, "completion_tokens": 0},  # no usage reported
        {"prompt_tokens": 1000, "completion_tokens": 100, "cached_tokens": 400},
    ],
)
def test_realtime_and_batch_price_the_same_usage_alike(usage):
    from pandas_llm._backends import Completion
    from pandas_llm._batch.collect import Collector
    from pandas_llm._batch.status import BatchStats
    from pandas_llm._cost.meter import Meter

    price = Price.per_million(input=1.0, output=2.0, cached_input=0.5, batch_discount=0)  # batch = realtime
    answer = Completion("hi", **usage)
    stats = BatchStats()
    batch = Collector(None, stats, model="gpt-4o-mini", endpoint="", price=price).cost(answer)
    realtime = Meter("gpt-4o-mini", price).cost(answer)
    assert batch == realtime == pricing.usage_cost(price, **usage)
    assert stats.realtime_cost == (realtime or 0.0)


def test_usage_cost_of_odd_usage():
    p = Price.per_million(input=1.0, output=2.0, cached_input=0.5)
    # more cached tokens than prompt tokens: all the prompt at the cached rate
    assert pricing.usage_cost(p, prompt_tokens=100, completion_tokens=10, cached_tokens=500) == pytest.approx(
        100 * 0.5e-6 + 10 * 2e-6
    )
    assert pricing.usage_cost(p, prompt_tokens=0, completion_tokens=0) is None  # unknown, not free
    free = Price.per_million(input=0, output=0)
    assert pricing.usage_cost(free, prompt_tokens=0, completion_tokens=0) == 0.0  # free whatever it reports
    assert pricing.usage_cost(None, prompt_tokens=5, completion_tokens=5) is None


# -- one money formatter ---------------------------------------------------------------------
def test_money_has_three_significant_digits_below_a_dollar():
    assert pricing.money(None) == "price unknown"
    assert pricing.money(0) == "$0.00"
    assert pricing.money(0.000123456) == "$0.000123"
    assert pricing.money(0.0000456) == "$0.0000456"
    assert pricing.money(2.5) == "$2.50"
    assert pricing.money(1234.5) == "$1,234.50"


def test_every_display_of_money_uses_the_one_formatter():
    from pandas_llm._batch.status import BatchProgress, BatchStats, BatchStatus
    from pandas_llm._display import progress

    assert progress.money is pricing.money
    stats = BatchStats(cost=0.0000456, realtime_cost=0.0000912)
    text = repr(BatchStatus("job", "done", stats))
    assert "cost at batch prices $0.0000456 (realtime would be $0.0000912)" in text  # not "$0.0000"
    shown = {}

    class Bar:
        n = 0

        def set_postfix(self, post, refresh):
            shown.update(post)

        def refresh(self):
            pass

    bar = BatchProgress()
    bar.bar = Bar()
    bar.update(stats, force=True)
    assert shown["cost"] == "$0.0000456"
    from pandas_llm._stats import RunReport, RunStats

    report = RunReport(RunStats(cost=0.0000456, lost_answers=2, possibly_billed=0.25, started=0.0, finished=1.0), None)
    assert "$0.0000456 + up to $0.250 possibly billed" in report.summary()  # not "$0.0000 + up to $0.2500"


# --- prices kept for the next process (prices.json): a restarted kernel never imports the table ---


def run_python(code: str) -> str:
    """``code`` in a new process with this test's cache folder (conftest: XDG_CACHE_HOME)."""
    env = dict(os.environ, PYTHONWARNINGS="error")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def kept_written() -> None:
    for t in threading.enumerate():
        if t.name == "pandas-llm-prices-kept":
            t.join()


def look_up_in_a_new_process(model: str) -> tuple[dict | None, bool]:
    code = f"""
        import sys, json, threading
        from pandas_llm._pricing import price_for
        price = price_for({model!r})
        imported = "genai_prices" in sys.modules
        for t in threading.enumerate():
            if t.name == "pandas-llm-prices-kept":
                t.join()
        print(json.dumps([None if price is None else {{k: getattr(price, k) for k in price.__dataclass_fields__}}, imported]))
    """
    price, imported = json.loads(run_python(code))
    return (None if price is None else Price(**price)), imported


@pytest.mark.parametrize("model", ["gpt-4o-mini", "no-such-model-xyz"])
def test_a_new_process_reads_the_price_an_earlier_one_looked_up_without_importing_the_table(model):
    first, imported = look_up_in_a_new_process(model)
    assert imported  # nothing kept yet: the table said
    assert first == price_for(model)
    again, imported = look_up_in_a_new_process(model)
    assert not imported  # read from prices.json
    assert again == first


def test_the_kept_prices_are_per_table_version(monkeypatch):
    price_for("gpt-4o-mini")
    kept_written()
    entries = json.loads(Path(pricing.PRICES.path).read_text())
    [name] = entries
    version = name.split(" ")[0]
    assert version == pricing._table_version()
    assert name == f"{version}  gpt-4o-mini"
    assert per_million(Price(**entries[name]["price"])) == per_million(price_for("gpt-4o-mini"))


def with_kept_entry(monkeypatch, entry: object, *, version: str | None = None) -> None:
    """prices.json holding ``entry`` for gpt-4o-mini, read by a process that has not imported the table."""
    path = pricing.PRICES.path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    name = f"{version or pricing._table_version()}  gpt-4o-mini"
    Path(path).write_text(json.dumps({name: {"price": entry, "at": time.time()}}))
    pricing.PRICES.forget()
    monkeypatch.delitem(sys.modules, "genai_prices")  # as in a new process; the look-up imports it again


def test_a_kept_price_is_used_when_the_table_is_not_imported(monkeypatch):
    mine = Price.per_million(input=7, output=8)
    with_kept_entry(monkeypatch, {k: getattr(mine, k) for k in Price.__dataclass_fields__})
    assert price_for("gpt-4o-mini") == mine  # what the file says: the table is not asked


@pytest.mark.parametrize(
    "entry",
    [
        {"input": 1e-6},  # a rate missing
        {"input": -1, "output": 0, "cached_input": 0, "batch_input": 0, "batch_output": 0, "batch_cached_input": 0},
        {"input": "1", "output": 0, "cached_input": 0, "batch_input": 0, "batch_output": 0, "batch_cached_input": 0},
        [1, 2],
        "free",
        {**dict.fromkeys(Price.__dataclass_fields__, 0), "output": 10**400},  # an int too big for a float
        {**dict.fromkeys(Price.__dataclass_fields__, 0), "input": [1]},
        {**dict.fromkeys(Price.__dataclass_fields__, 0), "input": {"a": 1}},
    ],
)
def test_a_damaged_kept_price_is_looked_up_in_the_table(monkeypatch, entry):
    with_kept_entry(monkeypatch, entry)
    assert per_million(price_for("gpt-4o-mini"))["input"] == 0.15
    kept_written()
    pricing.PRICES.forget()
    assert pricing.PRICES.get(f"{pricing._table_version()}  gpt-4o-mini")["price"]["input"] == pytest.approx(0.15 / M)


def test_another_table_versions_price_is_not_used(monkeypatch):
    with_kept_entry(monkeypatch, None, version="0.0.1")  # that release did not know the model
    assert per_million(price_for("gpt-4o-mini"))["input"] == 0.15


@pytest.mark.server(rpm=600, tpm=200_000)
def test_a_restarted_process_runs_without_importing_the_table(server):
    run = f"""
        import sys, threading, pandas as pd, pandas_llm
        df = pd.DataFrame({{"text": ["a", "b", "c"]}})
        out = df.llm.map("{{text}}", model="gpt-4o-mini", base_url="{server.base_url}", api_key="sk-x",
                         cache=False, progress=False)
        assert out.notna().all()
        report = pandas_llm.last_run()
        assert report.stats.cost_known and report.stats.cost > 0, report.summary()
        for t in threading.enumerate():
            if t.name.startswith("pandas-llm-"):
                t.join(5)
        print("genai_prices" in sys.modules, report.stats.cost)
    """
    imported, cost_first = run_python(run).split()
    assert imported == "True"
    imported, cost_again = run_python(run).split()
    assert imported == "False"  # the restarted process priced its answers from prices.json
    assert cost_again == cost_first


def test_a_broken_price_table_is_a_config_error_that_says_how_to_price_the_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "genai_prices", None)  # a broken install: ImportError on import
    with pytest.raises(
        ConfigError, match=r"genai-prices\) failed with ModuleNotFoundError.*prices=pandas_llm\.Price\.per_million"
    ):
        price_for("gpt-4o-mini")
    assert resolve_price("gpt-4o-mini", Price.per_million(input=1, output=1)).input == 1e-6  # not asked
