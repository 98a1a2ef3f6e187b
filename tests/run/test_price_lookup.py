"""A price look-up that fails never stops a run nor loses an answer: the price is unknown for that
run, with one RunWarning saying why and how to pass ``prices=``; with ``max_cost`` it is a
ConfigError before anything is sent."""

from __future__ import annotations

import json
import os
import sys
import time
import types
from importlib import metadata

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import ConfigError, RunWarning
from pandas_llm import _pricing as pricing
from pandas_llm._cost import meter


@pytest.fixture(autouse=True)
def fresh_lookups():
    pricing.price_for.cache_clear()
    pricing.PRICES.forget()
    yield
    pricing.price_for.cache_clear()
    pricing.PRICES.forget()


def _raising_module() -> types.ModuleType:
    module = types.ModuleType("genai_prices")

    def __getattr__(name):
        raise RuntimeError("the bundled price data cannot be parsed")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def broken_table(monkeypatch, how: str) -> None:
    if how == "import":
        monkeypatch.setitem(sys.modules, "genai_prices", None)  # ImportError on import
    elif how == "module":
        monkeypatch.setitem(sys.modules, "genai_prices", _raising_module())
    else:  # whatever the look-up raises

        def fail(*args, **kw):
            raise OverflowError("int too large to convert to float")

        monkeypatch.setattr(meter, "resolve_price", fail)


def frame(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"a": [f"row {i}" for i in range(n)]})


@pytest.mark.parametrize("how", ["import", "module", "anything"])
def test_a_failing_price_look_up_keeps_every_answer_and_a_rerun_sends_nothing(server, opts, tmp_path, monkeypatch, how):
    broken_table(monkeypatch, how)
    kw = dict(cache=str(tmp_path / "c.sqlite"), model="gpt-4o-mini", **opts)
    with pytest.warns(RunWarning, match=r"could not be looked up.*prices=pandas_llm\.Price\.per_million") as warned:
        out = frame().llm.map("{a}", **kw)
    assert len([w for w in warned if "looked up" in str(w.message)]) == 1  # one warning
    assert out.notna().all() and server.completed == 50
    run = pandas_llm.last_run()
    assert not run.stats.cost_known and "price unknown" in run.summary()
    assert run.details["cost"].isna().all() and (run.details["prompt_tokens"] > 0).all()
    again = frame().llm.map("{a}", **kw)
    assert again.equals(out) and server.completed == 50  # every answer was committed: nothing sent again


@pytest.mark.parametrize("how", ["import", "module", "anything"])
def test_with_max_cost_a_failing_price_look_up_is_a_config_error_before_anything_is_sent(
    server, opts, monkeypatch, how
):
    broken_table(monkeypatch, how)
    with pytest.raises(ConfigError, match=r"prices=pandas_llm\.Price\.per_million"):
        frame(5).llm.map("{a}", model="gpt-4o-mini", max_cost=1.0, cache=False, **opts)
    assert server.requests == 0


def test_a_kept_price_too_big_for_a_float_is_ignored_and_the_table_asked(server, opts, tmp_path, monkeypatch):
    rates = {**dict.fromkeys(pricing.Price.__dataclass_fields__, 7.5e-08), "output": 10**400}  # too big for a float
    path = pricing.PRICES.path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({f"{metadata.version('genai-prices')}  gpt-4o-mini": {"price": rates, "at": time.time()}}, f)
    monkeypatch.delitem(sys.modules, "genai_prices", raising=False)  # as in a new process: the kept file is read first
    kw = dict(cache=str(tmp_path / "c.sqlite"), model="gpt-4o-mini", **opts)
    out = frame().llm.map("{a}", **kw)
    assert out.notna().all() and server.completed == 50
    run = pandas_llm.last_run()
    assert run.stats.cost_known and run.stats.cost > 0
    frame().llm.map("{a}", **kw)
    assert server.completed == 50
