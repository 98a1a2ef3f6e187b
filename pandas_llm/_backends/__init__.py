"""Backends: where a prepared request goes. One small async protocol, several transports.

- ``HTTPBackend`` (http.py): the default for https; aiohttp posting the prepared JSON body.
- ``WireBackend`` (wire.py): the default for plain http (local servers), a lean HTTP/1.1
  client: ~13 µs of CPU per request against aiohttp's ~75 (``PANDAS_LLM_HTTP=aiohttp``
  opts out).
- ``OpenAIClientBackend`` (openai_client.py): a user's own ``openai.AsyncOpenAI``/``OpenAI`` client.
- ``FunctionBackend`` (function.py): any ``(messages, **params) -> str`` function, sync or async.
- ``TransportBackend`` (transport.py): an object answering with HTTP answers in process
  (``pandas_llm.testing.MockBackend``), read like answers from the network.
- a user's own :class:`Backend` object, used as it is.

Each maps its foreign errors to pandas_llm._errors at this boundary and nowhere else
(``errors.map_errors``).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from .base import Backend, Completion, content_text, describe_content, parse_completion

__all__ = ["Backend", "Completion", "content_text", "describe_content", "make_backend", "parse_completion"]


def make_backend(settings: Any, kind: Any = None) -> Backend:
    """The backend for ``settings.client`` (None: HTTP to ``settings.endpoint``).

    ``kind`` (endpoints.py) names another endpoint than chat completions: its ``path``
    and ``read(raw, headers, *, endpoint, model) -> Completion`` for a 200."""
    from .._errors import remember_secret

    client = settings.client
    remember_secret(settings.effective_api_key)
    remember_secret(getattr(client, "api_key", None))  # a user's openai client
    route = {} if kind is None else {"path": kind.path, "read": kind.read}
    if client is None:
        if settings.endpoint.startswith("http://") and os.environ.get("PANDAS_LLM_HTTP") != "aiohttp":
            from .wire import WireBackend  # local servers: a lean HTTP/1.1 client (wire.py)

            return WireBackend(settings, **route)
        from .http import HTTPBackend

        return HTTPBackend(settings, **route)
    if inspect.iscoroutinefunction(getattr(client, "respond", None)):  # pandas_llm.testing.MockBackend
        from .transport import TransportBackend

        return TransportBackend(client, model=settings.model, **({} if kind is None else {"read": kind.read}))
    if inspect.iscoroutinefunction(getattr(client, "complete", None)) and kind is None:
        return _Borrowed(client)
    if hasattr(client, "chat") and hasattr(client, "base_url"):
        from .openai_client import OpenAIClientBackend

        return OpenAIClientBackend(client, timeout=settings.timeout, **route)
    if kind is not None:
        from .._errors import ConfigError

        raise ConfigError(
            f"client= functions and Backend objects answer chat messages only; {kind.path} needs an OpenAI-compatible "
            "endpoint: pass base_url= (and api_key=) or an openai client"
        )
    if callable(client):
        from .function import FunctionBackend

        return FunctionBackend(client, concurrency=settings.concurrency, timeout=settings.request_timeout)
    from .._errors import ConfigError

    raise ConfigError(
        "client= must be an openai.AsyncOpenAI / openai.OpenAI client, a function "
        f"(messages, **params) -> str or a Backend (async complete(body) -> Completion), got {type(client).__name__}"
    )


class _Borrowed:
    """A user's Backend object, used as it is; closing it is theirs (``aclose`` leaves it open)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._complete = backend.complete
        self.endpoint = str(getattr(backend, "endpoint", "") or type(backend).__qualname__)

    async def complete(self, body: bytes) -> Completion:
        out = await self._complete(body)
        if not isinstance(out, Completion):  # a str or a dict would fail later, far from its cause
            from .._errors import ConfigError

            raise ConfigError(
                f"{type(self.backend).__qualname__}.complete() returned {type(out).__name__}: a Backend returns a "
                "Completion (from pandas_llm._backends import Completion; Completion(text, finish_reason, "
                "prompt_tokens, completion_tokens)), or pass a function (messages, **params) -> str as client="
            )
        return out

    async def aclose(self) -> None:
        return None
