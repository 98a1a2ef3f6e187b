"""A user's own openai client as the backend (``client=openai.AsyncOpenAI(...)``).

The client's own retries are not used (the scheduler owns retries): each call passes
``max_retries=0`` through ``with_options``. The client keeps its own timeout (the SDK's
default is 600 s) unless ``timeout=`` is given, which then applies to every request.
Sync ``openai.OpenAI`` clients run in a thread.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import orjson

from .._config import CHAT_FIELDS
from .answers import read_answer
from .base import Completion
from .errors import map_errors

__all__ = ["OpenAIClientBackend", "timeout_options"]

#: Body fields the SDK's create() takes by name; anything else goes in extra_body.
_KNOWN = CHAT_FIELDS


def timeout_options(seconds: float | None) -> dict[str, Any]:
    """``with_options`` keywords: a user's client keeps its own timeout unless ``timeout=`` was given."""
    return {} if seconds is None else {"timeout": seconds}


class OpenAIClientBackend:
    def __init__(self, client: Any, *, timeout: float | None, path: str = "/chat/completions",
                 read: Any = read_answer):  # fmt: skip
        """``timeout``: seconds per request, None to keep the client's own."""
        import openai

        self._openai = openai
        self.endpoint = str(client.base_url).rstrip("/")
        self._client = client.with_options(max_retries=0, **timeout_options(timeout))
        self._read = read
        self._chat = path == "/chat/completions"
        resource = {"/chat/completions": lambda c: c.chat.completions, "/embeddings": lambda c: c.embeddings,
                    "/moderations": lambda c: c.moderations}[path](self._client)  # fmt: skip
        create = resource.with_raw_response.create
        self._async = inspect.iscoroutinefunction(create)
        self._create = create

    async def complete(self, body: bytes) -> Completion:
        params = orjson.loads(body)
        extra = {k: params.pop(k) for k in list(params) if k not in _KNOWN} if self._chat else {}
        if extra:
            params["extra_body"] = extra
        with map_errors("openai", self.endpoint, params.get("model")):
            if self._async:
                raw = await self._create(**params)
            else:
                raw = await asyncio.to_thread(self._create, **params)
            content = raw.content
            headers = raw.headers
        return self._read(content, headers, endpoint=self.endpoint, model=params.get("model"))

    async def aclose(self) -> None:
        return None  # the client is the user's; they close it
