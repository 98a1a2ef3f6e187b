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
