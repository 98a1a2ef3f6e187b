"""Reading an HTTP 200: is it an answer? Shared by every HTTP backend and the Batch API.

A 200 is not always a chat completion:

- an error object (``{"error": {...}}``, vLLM's ``{"object": "error"}``) is the error it
  names (``errors.error_in_answer``): never an answer;
- a server-sent-event stream (``data: {...}`` lines, ``data: [DONE]``), or a JSON body
  followed by ``data: [DONE]``, answering a request that did not ask to stream: read as
  the stream it is when it is complete (content, refusal, finish_reason and usage
  assembled from its chunks); a stream that ends before its ``finish_reason`` or cannot
  be read stops the run at the first one (FatalAPIError naming what the server did),
  because resending would only pay for the same again;
- a JSON body with no ``choices`` (a web page, another API) stops the run the same way;
  an empty ``choices`` list is that row's error.

Whether the completion counts (its finish_reason, content, refusal) is decided in one
place for every backend: ``scheduler.completion_record``.

    >>> raw = b'data: {"choices":[{"delta":{"content":"Bon"}}]}\\n\\ndata: {"choices":[{"delta":{"content":"jour"},"finish_reason":"stop"}]}\\n\\ndata: [DONE]\\n\\n'
    >>> read_answer(raw, None, endpoint="http://x/v1", model="m")[:2]
    ('Bonjour', 'stop')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from .._errors import BadRequestError, FatalAPIError
from .base import Completion, billed_usage, content_text, first_choice, parse_completion
from .errors import error_in_answer

__all__ = ["read_answer", "judge"]


def read_answer(raw: bytes, headers: Mapping[str, str] | None, *, endpoint: str, model: str | None) -> Completion:
    """The completion in a 200 body; raises the APIError it carries, or FatalAPIError if it is none."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _from_stream(raw, _where(endpoint, model))
    return judge(data, headers, endpoint=endpoint, model=model)


def judge(data: Any, headers: Mapping[str, str] | None, *, endpoint: str, model: str | None) -> Completion:
    """The completion in a parsed 200 body (see the module docstring for what is not one)."""
    if isinstance(data, Mapping):
        if data.get("error") or data.get("object") == "error":
            raise error_in_answer(data, headers, endpoint=endpoint, model=model)
        choices = data.get("choices")
        if isinstance(choices, list) and choices:
            if first_choice(choices) is not None:  # else not a completion: no answer at index 0
                try:
                    return parse_completion(data, headers)
                except (KeyError, IndexError, TypeError, AttributeError):
                    pass
        elif isinstance(choices, list):
            empty = BadRequestError(f"HTTP 200 from {_where(endpoint, model)} answered with no choices: "
                                    f"{_clip(data)}", code="no_choices")  # fmt: skip
            empty.usage = billed_usage(data, headers)  # billed all the same
            raise empty
    stop = FatalAPIError(
        f"HTTP 200 from {_where(endpoint, model)} is not a chat completion: {_clip(data)}. Check that base_url "
        f"({endpoint}) is an OpenAI-compatible endpoint (it usually ends in /v1). The run stopped rather than "
        "resend: the server may bill every attempt.",
        status=200,
        code="bad_response",
    )
    stop.usage = billed_usage(data, headers)
    raise stop


def _from_stream(raw: bytes, where: str) -> dict[str, Any]:
    """A chat.completion-shaped dict from an event stream, or a JSON body + ``data: [DONE]``."""
    text = raw.decode("utf-8", "replace")
    head = text.lstrip()
    if head.startswith("{"):  # a whole answer, then the stream's terminator
        try:
            obj, end = json.JSONDecoder().raw_decode(head)
        except ValueError:
            raise FatalAPIError(  # not a stream at all: a body cut short, or a server's broken JSON
                f"HTTP 200 from {where} is not complete JSON ({len(raw):,} bytes, ending {head[-80:]!r}): the "
                "server, or a proxy in front of it, cut the answer short or wrote invalid JSON. The run stopped "
                "rather than resend, since each attempt may be billed; answered rows are kept.",
                status=200,
                code="bad_response",
            ) from None
        events = _events(head[end:])
        if isinstance(obj, dict) and events is not None and all(e.strip() == "[DONE]" for e in events):
            return obj
        raise _stream_error(where, "is not one JSON object: " + repr(head[:200]))
    events = _events(text)
    if not events:
        raise FatalAPIError(  # a web page (a proxy's, a login's), not a stream: say what it is
            f"HTTP 200 from {where} is not a chat completion (neither JSON nor an event stream): "
            f"{head[:200]!r}. Check that base_url is an OpenAI-compatible endpoint (it usually ends in /v1) "
            "and that no proxy or login page answers in its place. The run stopped rather than resend: the "
            "server may bill every attempt.",
            status=200,
            code="bad_response",
        )
    parts: list[str] | None = None
    refusal: list[str] = []
    finish = usage = error = None
    for data in events:
        if data.strip() == "[DONE]":
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _stream_error(where, f"has an unreadable event: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise _stream_error(where, f"has an unreadable event: {data[:200]!r}")
        usage = chunk.get("usage") or usage
        if chunk.get("error") or chunk.get("object") == "error":
            return {**chunk, "usage": usage} if usage else chunk  # judged as the error object it is, billed so far
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            part = choice.get("delta") or choice.get("message") or {}
            content = content_text(part.get("content"))
            if content is not None:
                parts = parts if parts is not None else []
                parts.append(content)  # a part that is not text makes the whole no text
            if isinstance(part.get("refusal"), str):
                refusal.append(part["refusal"])
            error = choice.get("error") or error
            finish = choice.get("finish_reason") or finish
    if finish is None:
        raise _stream_error(where, "ended before its finish_reason (the answer may be cut short)")
    joined = None if parts is None else "".join(parts) if all(isinstance(p, str) for p in parts) else parts
    message = {"content": joined, "refusal": "".join(refusal) or None}
    return {"choices": [{"message": message, "finish_reason": finish, "error": error}], "usage": usage or {}}


def _events(text: str) -> list[str] | None:
    """The ``data`` of each server-sent event in ``text`` (None if it is not an event stream)."""
    events: list[str] = []
    data: list[str] = []
    for line in text.splitlines():
        if not line:
            if data:
                events.append("\n".join(data))
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, colon, value = line.partition(":")
        if not colon or name not in ("data", "event", "id", "retry"):
            return None
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        events.append("\n".join(data))
    return events


def _stream_error(where: str, what: str) -> FatalAPIError:
    return FatalAPIError(
        f"HTTP 200 from {where}: the server answered a request that did not ask to stream (stream=false) "
        f"with an event stream (text/event-stream) that {what}. The run stopped rather than resend, since "
        "each attempt may be billed. Make the server (or a proxy in front of it) honour stream=false.",
        status=200,
        code="bad_response",
    )


def _where(endpoint: str, model: str | None) -> str:
    return f"{endpoint} (model {model!r})" if model else endpoint


def _clip(data: Any) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
    return repr(text[:200])
