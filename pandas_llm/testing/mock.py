"""``MockBackend(handler)``: answers from a function instead of a server, as httpx's ``MockTransport``.

``client=MockBackend(handler)`` sends every request to ``handler(request)``, ``request`` being
the request body as a dict (``model``, ``messages``, the generation parameters,
``response_format``), and reads what it returns as the endpoint's answer:

- a ``str`` (or None): the message content of an HTTP 200 chat completion, ``finish_reason``
  ``"stop"``, with token counts estimated as the loopback server does;
- a ``dict``: the whole HTTP 200 body, sent as is (a ``chat.completion`` with your own
  ``finish_reason`` or ``usage``, an ``{"error": {...}}`` object, an embeddings list);
- an ``int`` or a tuple ``(status, body)`` / ``(status, body, headers)``: that HTTP answer
  (``body`` a dict, str or None for the real API's error body), e.g. ``(429, None,
  {"retry-after": "0"})`` to be rate limited once;
- or it raises: one of pandas_llm's exceptions as is, ``TimeoutError`` / ``ConnectionError``
  as a lost answer / a refused connection; anything else propagates (a bug in the handler).

The answer goes through the same reading, judging and error mapping as an HTTP answer does,
so a mock's 429 is retried, a 400 is that row's error and a 401 stops the run, as over the
network. The handler may be ``async``; ``mock.requests`` lists the request bodies it got.

    >>> import pandas as pd, pandas_llm
    >>> from pandas_llm.testing import MockBackend
    >>> mock = MockBackend(lambda request: request["messages"][-1]["content"].upper())
    >>> pd.Series(["cat", "dog"]).llm.map("{}", client=mock, cache=False, progress=False).tolist()
    ['CAT', 'DOG']
    >>> len(mock.requests)
    2
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .._errors import ConfigError
from ._http import default_error
from .answers import estimate_tokens, prompt_tokens

__all__ = ["MockBackend"]

_ids = itertools.count(1)


class MockBackend:
    """``client=MockBackend(handler)``: see the module docstring.

    ``endpoint`` names it in the cache key (answers cached under one mock's endpoint are
    found again by another with the same ``endpoint``)."""

    def __init__(self, handler: Callable[[dict[str, Any]], Any], *, endpoint: str = "mock://backend") -> None:
        if not callable(handler):
            raise ConfigError(f"MockBackend needs a function request -> answer, got {type(handler).__name__}")
        self.handler = handler
        self.endpoint = endpoint
        #: The request bodies received, in order.
        self.requests: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<MockBackend {self.endpoint} {getattr(self.handler, '__qualname__', self.handler)!r}>"

    async def respond(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The HTTP answer ``(status, headers, body)`` for one request body."""
        request = orjson.loads(body)
        self.requests.append(request)
        out = self.handler(request)
        if inspect.isawaitable(out):
            out = await out
        return answer(request, out)


def answer(request: Mapping[str, Any], out: Any) -> tuple[int, dict[str, str], bytes]:
    """What the handler returned (``out``), as an HTTP answer to ``request``."""
    if isinstance(out, int) and not isinstance(out, bool):
        out = (out, None)
    if isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[0], int):
        status, body, headers = out if len(out) == 3 else (*out, {})
        if body is None:  # the real API's error body for that status
            body = default_error(status).body
        data = orjson.dumps(body) if isinstance(body, Mapping) else body.encode() if isinstance(body, str) else body
        return status, dict(headers), data
    if isinstance(out, Mapping):
        return 200, {}, orjson.dumps(out)
    if out is not None and not isinstance(out, str):
        raise ConfigError(
            f"a MockBackend handler returned {type(out).__name__}: return a str, a dict, a status or "
            "(status, body[, headers])"
        )
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    n_prompt, n_answer = prompt_tokens(messages), estimate_tokens(out or "")
    completion = {
        "id": f"chatcmpl-mock-{next(_ids):08d}",
        "object": "chat.completion",
        "model": request.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_answer, "total_tokens": n_prompt + n_answer},
    }
    return 200, {}, orjson.dumps(completion)
