"""Requests: the canonical request for a row and its cache key.

The canonical request is the chat-completions body (model, messages and every parameter
that changes the answer) plus the endpoint's base URL. The key is the sha256 of its
canonical JSON (sorted keys), so it names the request, never the run or the row:
another frame with the same prompts reuses the answers, and changing one parameter
re-pays only what it changes. The API key is never part of it.

For OpenAI's reasoning models (o1, o3, o4 series, the gpt-5 family), which refuse
``max_tokens``, ``max_tokens=`` is sent as ``max_completion_tokens`` (it then bounds the
hidden reasoning tokens and the visible answer together); the key follows what is sent.

    >>> from pandas_llm._config import Settings
    >>> b = RequestBuilder(Settings(model="m", base_url="http://x/v1", params={"temperature": 0}))
    >>> key, raw = b.encode([{"role": "user", "content": "hi"}])
    >>> len(key), raw
    (32, b'{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}')
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from .._config import Settings
from .._structured.schema import response_format_fragment

__all__ = ["RequestBuilder", "TextCodec", "KEY_VERSION", "is_reasoning_model", "to_keep"]

#: Bumped only if the canonical form changes; old cache entries then stop matching.
KEY_VERSION = b"pandas-llm/1\n"
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


#: OpenAI's reasoning models (fine-tunes and provider prefixes included): o1, o3-mini, o4-mini, gpt-5.1...
_REASONING = re.compile(r"^(?:ft:)?(?:[\w.-]+/)?(?:o\d+(?:-|$)|gpt-5)", re.I)


def is_reasoning_model(model: str) -> bool:
    """True for OpenAI's reasoning models, which take ``max_completion_tokens``, not ``max_tokens``.

    >>> [is_reasoning_model(m) for m in ("o3-mini", "o1", "gpt-5-mini", "openai/o4-mini", "gpt-4o", "omni-moderation-latest")]
    [True, True, True, True, False, False]
    """
    return bool(_REASONING.match(model))


def to_keep(body: bytes) -> bytes:
    """A right-sized copy of ``body``, for a body held beyond the request being sent: the
    bytes ``orjson.dumps`` returns keep its whole write buffer, 4 KiB for a short body
    (orjson 3.13: 4,120 bytes of RSS each for 60-byte bodies, 122 once copied).

    >>> to_keep(b'{"a":1}')
    b'{"a":1}'
    """
    return memoryview(body).tobytes()


class RequestBuilder:
    """Builds request bodies and their keys for one run's settings."""

    def __init__(self, settings: Settings, *, extra: dict[str, Any] | None = None):
        base: dict[str, Any] = {"model": settings.model}
        base.update(settings.params)
        if "max_tokens" in base and is_reasoning_model(settings.model):
            limit = base.pop("max_tokens")
            base.setdefault("max_completion_tokens", limit)
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

    def text_codec(self, head_messages: list[dict[str, Any]]) -> TextCodec | None:
        """A fast encoder for bodies whose messages are ``head_messages`` + one user text."""
        return TextCodec.build(self, head_messages)


#: A private-use marker that orjson writes verbatim; it splits a sample body in two.
_MARK = "\ue000pandas-llm text\ue001"


class TextCodec:
    """Key and body of ``head + [{"role": "user", "content": text}]`` without building dicts.

    The canonical body is the same bytes as ``RequestBuilder.encode`` gives (checked when
    built): the JSON before the text, the text as a JSON string, the JSON after it. With
    the prefix already hashed, a key costs one copy of the hash and two updates.
    """

    __slots__ = ("head", "tail", "_pre")

    def __init__(self, prefix: bytes, head: bytes, tail: bytes):
        self.head, self.tail = head, tail
        self._pre = hashlib.sha256(prefix + head)

    @classmethod
    def build(cls, builder: RequestBuilder, head_messages: list[dict[str, Any]]) -> TextCodec | None:
        raw = builder.encode([*head_messages, {"role": "user", "content": _MARK}])[1]
        mark = orjson.dumps(_MARK)
        if raw.count(mark) != 1:
            return None  # the marker also appears in a parameter: use the general path
        pos = raw.index(mark)
        codec = cls(builder._prefix, raw[:pos], raw[pos + len(mark) :])
        probe = 'a "quoted" {text}\n with ünïcode \u2028 and \x00'
        if codec.encode(probe) != builder.encode([*head_messages, {"role": "user", "content": probe}]):
            return None
        return codec

    def key(self, text: str) -> bytes:
        h = self._pre.copy()
        h.update(orjson.dumps(text))
        h.update(self.tail)
        return h.digest()

    def encode(self, text: str) -> tuple[bytes, bytes]:
        """``(key, body)`` exactly as ``RequestBuilder.encode`` would give them."""
        body = self.head + orjson.dumps(text) + self.tail
        h = self._pre.copy()
        h.update(body[len(self.head) :])
        return h.digest(), body
