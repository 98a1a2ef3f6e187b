"""Fixtures for the integration suite: one real llama.cpp server (pandas-llm[local]) per session.

Every test here needs the ``local_server`` fixture, which skips with the install command
when the extra or the model is missing, or fails when ``PANDAS_LLM_REQUIRE_LOCAL`` is set
(``.ci/run`` sets it, so CI cannot go green by skipping the suite).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pandas_llm.local import LocalServer, unavailable_reason

CHAT = "POST /v1/chat/completions"


@pytest.fixture(scope="session")
def needs_local() -> None:
    """Skip (or fail under PANDAS_LLM_REQUIRE_LOCAL) unless pandas-llm[local] and its model are installed."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("PANDAS_LLM_REQUIRE_LOCAL"):
        pytest.fail(f"PANDAS_LLM_REQUIRE_LOCAL is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def local_server(needs_local: None) -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def served(local_server: LocalServer) -> Callable[[], int]:
    """Chat requests the server has answered so far, counted from its own access log."""
    return lambda: local_server.log().count(CHAT)


@pytest.fixture
def options(local_server: LocalServer, tmp_path) -> dict:
    """Keywords for every call: the local server, greedy decoding, one line, a fresh cache."""
    return dict(
        base_url=local_server.base_url,
        model=local_server.model,
        temperature=0,
        max_tokens=48,
        stop=["\n"],
        cache=tmp_path / "cache.sqlite",
        progress=False,
    )
