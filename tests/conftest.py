"""Shared fixtures: THE loopback server, the keywords and clients pointing at it, and a few switches.

- ``server``: a fresh ``LLMServer`` per test. Options go in a marker, on a test or a whole
  module: ``@pytest.mark.server(latency=0.4)``, ``pytestmark = pytest.mark.server(answer=f)``.
- ``opts``: keywords pointing a verb at it, quietly; ``batch_opts`` the same for the Batch API
  (a cache file the test can open, polls without waiting).
- ``client``: the openai SDK's own client at it, without retries; ``run``: map through each
  backend that speaks HTTP.
- ``fast_retries``: backoff without real waiting; ``no_network``: any connection refused.

Every test runs in its own temporary directory (the repository's conftest.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from pandas_llm.testing import LLMServer

pytest_plugins = ["pandas_llm.testing.pytest_plugin"]  # the fixture users opt in to, tested as they use it


@pytest.fixture
def server(request) -> Iterator[LLMServer]:
    marker = request.node.get_closest_marker("server")
    with LLMServer(**(marker.kwargs if marker else {})) as srv:
        yield srv


@pytest.fixture
def opts(server) -> dict[str, Any]:
    """Keywords pointing a verb at the loopback server, quietly."""
    return {"base_url": server.base_url, "api_key": "sk-test", "progress": False}


@pytest.fixture
def batch_opts(opts, tmp_path) -> dict[str, Any]:
    """``opts`` for the Batch API: the cache in a file the test can name, polls 5 ms apart."""
    return {**opts, "cache": str(tmp_path / "cache.sqlite"), "poll_interval": 0.005}


@pytest.fixture
def client(server) -> Iterator[openai.OpenAI]:
    """The openai SDK's client at the loopback server, without its own retries."""
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(params=["wire", "aiohttp", "openai"])
def run(request, server, monkeypatch):
    """``run(df, template, **kw)``: map through each backend that speaks HTTP (wire, aiohttp, a
    user's openai client), so a test of how answers are read holds for all three."""

    def go(df, template="{text}", **kw):
        if request.param == "openai":
            with openai.OpenAI(base_url=server.base_url, api_key="k") as client:
                return df.llm.map(template, client=client, progress=False, **kw)
        return df.llm.map(template, base_url=server.base_url, api_key="k", progress=False, **kw)

    if request.param == "aiohttp":
        monkeypatch.setenv("PANDAS_LLM_HTTP", "aiohttp")
    return go


@pytest.fixture
def fast_retries(monkeypatch):
    """Backoff without real waiting, so retry tests take milliseconds."""
    from pandas_llm._run.retry import RetryPolicy

    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt, retry_after: 0.001)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and name look-up refused, as on a machine without a network."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
