"""The default backend for https endpoints: aiohttp posting the prepared JSON body.

The per-request path does one POST of bytes that were serialised once (they are also
what the cache key hashes), one orjson parse, and nothing else: no per-request
object models, no second retry layer (the scheduler owns retries).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from .._errors import ConfigError
from .answers import read_answer
from .base import Completion
from .errors import error_for_status, map_errors

__all__ = ["HTTPBackend"]

_OPENAI_HOST = "api.openai.com"


class HTTPBackend:
    """POST /chat/completions on an OpenAI-compatible endpoint."""

    def __init__(self, settings: Any, *, path: str = "/chat/completions", read: Any = read_answer):
        self.endpoint = settings.endpoint
        self.model = settings.model
        self._read = read
        api_key = settings.effective_api_key
        if not api_key and _OPENAI_HOST in self.endpoint:
            raise ConfigError(
                "no API key: pass api_key='sk-...' or set OPENAI_API_KEY "
                f"(requests would go to {self.endpoint}); for a local server pass base_url="
            )
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._url = self.endpoint + path
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._limit = settings.concurrency
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key its headers hold
        return f"<{type(self).__name__} {self.endpoint}>"

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the loop the engine runs on.
        connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        return self._session

    async def complete(self, body: bytes) -> Completion:
        session = self._session or self._open()
        with map_errors("aiohttp", self.endpoint, self.model):
            async with session.post(self._url, data=body) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        if status == 200:
            return self._read(raw, headers, endpoint=self.endpoint, model=self.model)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = raw
        raise error_for_status(status, data, headers, endpoint=self.endpoint, model=self.model)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
