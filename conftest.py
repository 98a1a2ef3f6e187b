"""What every test and every doctest shares: a private working directory and no OpenAI environment.

pytest collects the package too (``--doctest-modules``, see pyproject.toml), so the ``>>>``
examples run like the tests: each in its own temporary directory, so the default sidecar
(.pandas_llm/cache.sqlite) never leaks between them or into the checkout, and with
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` unset, so nothing reaches a real API by accident.
"""

from __future__ import annotations

import pytest

# A deprecated alias that warns when imported (tests/test_exports.py checks it does); it has no examples.
collect_ignore = ["pandas_llm/errors.py"]


@pytest.fixture(autouse=True)
def _private_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield tmp_path
