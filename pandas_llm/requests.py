"""Requests: the canonical request for a row and its cache key.

The canonical request is the chat-completions body (model, messages and every parameter
that changes the answer) plus the endpoint's base URL. The key is the sha256 of its
canonical JSON (sorted keys), so it names the request, never the run or the row:
another frame with the same prompts reuses the answers, and changing one parameter
re-pays only what it changes. The API key is never part of it.

    >>> from pandas_llm.config import Settings
    >>> b = RequestBuilder(Settings(model="m", base_url="http://x/v1", params={"temperature": 0}))
    >>> key, raw = b.encode([{"role": "user", "content": "hi"}])
    >>> len(key), raw
    (32, b'{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}')
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from .config import Settings
from .schema import response_format_fragment

__all__ = ["RequestBuilder", "KEY_VERSION"]

#: Bumped only if the canonical form changes; old cache entries then stop matching.
KEY_VERSION = b"pandas-llm/1\n"
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


class RequestBuilder:
    """Builds request bodies and their keys for one run's settings."""

    def __init__(self, settings: Settings, *, extra: dict[str, Any] | None = None):
        base: dict[str, Any] = {"model": settings.model}
        base.update(settings.params)
        base.update(settings.extra_body)
        if extra:
            base.update(extra)
        if isinstance(base.get("response_format"), dict):
            # sorted keywords but schema properties in declared order (the model writes them in it)
            base["response_format"] = response_format_fragment(base["response_format"])
        self.base = base
        self._prefix = KEY_VERSION + settings.endpoint.encode() + b"\n"

    def body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = dict(self.base)
        body["messages"] = messages
        return body

    def encode(self, messages: list[dict[str, Any]]) -> tuple[bytes, bytes]:
        """Return ``(key, body_json)``: the 32-byte key and the canonical JSON body."""
        raw = orjson.dumps(self.body(messages), option=_OPTS)
        return hashlib.sha256(self._prefix + raw).digest(), raw

    def key_of(self, raw: bytes) -> bytes:
        return hashlib.sha256(self._prefix + raw).digest()
