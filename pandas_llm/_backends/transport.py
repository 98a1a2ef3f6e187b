"""An object that answers requests with HTTP answers (``pandas_llm.testing.MockBackend``) as a backend.

Such a transport has ``async respond(body: bytes) -> (status, headers, body)``; its answers are
read, judged and mapped exactly as the HTTP backends read an answer from the network
(``answers.read_answer``, ``errors.error_for_status``), so a test through a mock exercises the
same code as a run against a server.
"""

from __future__ import annotations

from typing import Any

import orjson

from .answers import read_answer
from .base import Completion
from .errors import error_for_status, map_errors

__all__ = ["TransportBackend"]


class TransportBackend:
    """A backend over ``transport.respond``; the transport is the caller's (``aclose`` leaves it open)."""

    def __init__(self, transport: Any, *, model: str | None, read: Any = read_answer) -> None:
        self.transport = transport
        self.endpoint = str(getattr(transport, "endpoint", "mock://backend")).rstrip("/")
        self.model = model
        self._read = read

    async def complete(self, body: bytes) -> Completion:
        with map_errors("transport", self.endpoint, self.model):
            status, headers, raw = await self.transport.respond(body)
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if status == 200:
            return self._read(raw, headers, endpoint=self.endpoint, model=self.model)
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = raw
        raise error_for_status(status, data, headers, endpoint=self.endpoint, model=self.model)

    async def aclose(self) -> None:
        return None
