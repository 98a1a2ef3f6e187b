"""pytest plugin: the ``llm_server`` fixture. Opt in from your conftest.py with

    pytest_plugins = ["pandas_llm.testing.pytest_plugin"]

(opt-in rather than an automatic ``pytest11`` entry point, so installing pandas-llm never
changes anyone else's test sessions). The server is imported when a test asks for it.

    def test_it(llm_server):
        client = openai.OpenAI(base_url=llm_server.base_url, api_key="x", max_retries=0)
        ...
        assert llm_server.completed == 1
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import LLMServer


@pytest.fixture
def llm_server() -> Iterator[LLMServer]:
    """A started ``LLMServer()`` with default options, stopped after the test."""
    from .server import LLMServer

    with LLMServer() as srv:
        yield srv
