"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests, demos, benchmarks and CI.

``POST /v1/chat/completions`` answers deterministically (:func:`answer_for`: ``"echo: "``
+ the last user message), counts what it answered, enforces RPM/TPM limits with the
real API's ``x-ratelimit-*`` headers, and injects faults on demand::

    >>> import json, urllib.request
    >>> from pandas_llm.testing import LLMServer, answer_for
    >>> messages = [{"role": "user", "content": "Translate to French: cat"}]
    >>> with LLMServer(rpm=600) as srv:
    ...     req = urllib.request.Request(
    ...         srv.base_url + "/chat/completions",
    ...         data=json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode(),
    ...         headers={"Content-Type": "application/json"},
    ...     )
    ...     with urllib.request.urlopen(req) as resp:
    ...         body = json.loads(resp.read())
    ...         remaining = resp.headers["x-ratelimit-remaining-requests"]
    >>> body["choices"][0]["message"]["content"] == answer_for(messages, "gpt-4o-mini")
    True
    >>> remaining, srv.prompt_counts["Translate to French: cat"]
    ('599', 1)

``MockBackend(handler)`` answers from a function instead, in process (``client=MockBackend(...)``).

In pytest, the ``llm_server`` fixture (registered by this package's pytest plugin)
yields a started ``LLMServer()``. From a shell: ``python -m pandas_llm.testing --port 8000``.
"""

from .answers import answer_for
from .mock import MockBackend
from .server import LLMServer

__all__ = ["LLMServer", "MockBackend", "answer_for"]
