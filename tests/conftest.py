"""Shared fixtures: a loopback server per test, and keywords pointing a verb at it.

Every test runs in its own temporary directory (the repository's conftest.py).
"""

from __future__ import annotations

import openai
import pytest

from pandas_llm.testing import LLMServer

pytest_plugins = ["pandas_llm.testing.pytest_plugin"]  # the fixture users opt in to, tested as they use it


@pytest.fixture
def server():
    with LLMServer() as srv:
        yield srv


@pytest.fixture
def opts(server):
    """Keywords pointing a verb at the loopback server, quietly."""
    return {"base_url": server.base_url, "api_key": "sk-test", "progress": False}


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
