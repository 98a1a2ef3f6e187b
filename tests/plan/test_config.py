"""Settings validate what they are given, and scope correctly."""

from __future__ import annotations

import threading

import pytest

import pandas_llm
from pandas_llm import ConfigError, Settings


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"concurrency": 2.5},
        {"timeout": 0},
        {"timeout": "60"},
        {"max_attempts": 0},
        {"model": ""},
        {"na": "drop"},
        {"rpm": -1},
        {"max_cost": 0},
        {"system": 3},
        {"params": {"temprature": 1}},
    ],
)
def test_validation_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        Settings(**kwargs)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().model = "x"  # type: ignore[misc]


def test_merged_routes_generation_params():
    s = Settings().merged(temperature=0, seed=3, concurrency=4, stop=["\n"])
    assert s.params == {"temperature": 0, "seed": 3, "stop": ["\n"]}
    assert s.concurrency == 4
    assert s.merged(temperature=None).params == {"seed": 3, "stop": ["\n"]}


def test_configure_and_nested_blocks():
    old = pandas_llm.current_settings()
    try:
        pandas_llm.configure(concurrency=3)
        with pandas_llm.settings(model="a"):
            with pandas_llm.settings(temperature=0.1):
                s = pandas_llm.current_settings()
                assert (s.model, s.concurrency, s.params["temperature"]) == ("a", 3, 0.1)
            assert "temperature" not in pandas_llm.current_settings().params
        assert pandas_llm.current_settings().model == "gpt-4o-mini"
    finally:
        pandas_llm._config._session = old


def test_with_block_does_not_leak_into_other_threads():
    seen = []
    with pandas_llm.settings(model="only-here"):
        t = threading.Thread(target=lambda: seen.append(pandas_llm.current_settings().model))
        t.start()
        t.join()
    assert seen == ["gpt-4o-mini"]


def test_endpoint_is_part_of_the_key_but_not_the_api_key():
    from pandas_llm._plan.requests import RequestBuilder

    msgs = [{"role": "user", "content": "x"}]
    a = RequestBuilder(Settings(base_url="http://a/v1", api_key="one")).encode(msgs)[0]
    b = RequestBuilder(Settings(base_url="http://a/v1", api_key="two")).encode(msgs)[0]
    c = RequestBuilder(Settings(base_url="http://b/v1", api_key="one")).encode(msgs)[0]
    assert a == b != c


# -- the settings in groups, each a frozen value checking its own fields --------------------
def test_the_groups_hold_the_fields_and_keep_them_frozen():
    import dataclasses

    s = Settings(
        concurrency=4, rpm=100, timeout=5, deadline=60, max_cost=1.5, mode="auto", batch_limits={"requests": 10}
    )
    assert (s.pacing.concurrency, s.pacing.rpm, s.pacing.tpm) == (4, 100, None)
    assert (s.patience.timeout, s.patience.max_attempts, s.patience.deadline) == (5, 6, 60)
    assert (s.spending.max_cost, s.spending.prices) == (1.5, None)
    assert (s.batch.mode, s.batch.batch_limits.requests) == ("auto", 10)
    assert (s.answers.structured, s.answers.rows_per_request) == ("json_schema", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pacing.concurrency = 8
    assert s.merged(concurrency=2).pacing.concurrency == 2  # a copy gets its own groups
    # the public fields are unchanged: the groups are views, not fields
    assert "pacing" not in {f.name for f in dataclasses.fields(Settings)}
    assert Settings(concurrency=4) == Settings(concurrency=4)


@pytest.mark.parametrize(
    "group, kwargs",
    [
        ("Pacing", {"concurrency": 0, "rpm": None, "tpm": None}),
        ("Pacing", {"concurrency": 1, "rpm": None, "tpm": -5}),
        ("Patience", {"timeout": 0, "max_attempts": 1, "deadline": None}),
        ("Patience", {"timeout": None, "max_attempts": 1, "deadline": float("nan")}),
        ("Spending", {"max_cost": 0, "prices": None}),
        ("Spending", {"max_cost": None, "prices": {"m": 1.0}}),
        ("Answers", {"structured": "yaml", "rows_per_request": 1, "invalid_retries": 0}),
        ("Answers", {"structured": "json_schema", "rows_per_request": 1, "invalid_retries": -1}),
    ],
)
def test_each_group_rejects_bad_values(group, kwargs):
    from pandas_llm import _config

    with pytest.raises(ConfigError):
        getattr(_config, group)(**kwargs)


def test_the_chat_parameters_are_listed_once():
    from pandas_llm import _config, _params
    from pandas_llm._backends import openai_client

    assert _config.GENERATION_PARAMS is _params.GENERATION_PARAMS == frozenset(_params.PARAM_CHECKS)
    assert openai_client._KNOWN == _params.GENERATION_PARAMS | {"model", "messages", "n"}
