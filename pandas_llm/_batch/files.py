"""Batch files: requests -> JSONL parts within the API's limits, and result lines -> Records.

Each line's ``custom_id`` is the request's cache key in hex, so a result is matched to
its request whatever order the API returns them in, and lands in the cache under the
same key a realtime answer would have.

    >>> from pandas_llm._config import BatchLimits
    >>> jobs = [(u, bytes([u]) * 32, b'{"model":"m","messages":[]}') for u in range(5)]
    >>> [len(p.keys) for p in split_parts(jobs, BatchLimits(requests=2))]
    [2, 2, 1]
    >>> split_parts(jobs[:1], BatchLimits()).__next__().data[:30]
    b'{"custom_id":"0000000000000000'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .._backends.answers import judge
from .._backends.errors import error_for_status
from .._config import BatchLimits
from .._errors import APIError, BadRequestError, RetryableError
from .._run.judge import completion_record
from .._run.stopping import row_status
from .._store.store import Record
from .client import ENDPOINT

__all__ = ["PartData", "split_parts", "parse_line", "UNANSWERED_CODES"]

#: Error codes of lines the API never ran (the batch expired or was cancelled): not failures,
#: just not answered yet; the next run sends them again.
UNANSWERED_CODES = {"batch_expired": "expired", "batch_cancelled": "cancelled"}

_HEAD = b'{"custom_id":"'


def _mid(url: str) -> bytes:
    return b'","method":"POST","url":"' + url.encode() + b'","body":'


_MID = _mid(ENDPOINT)


@dataclass
class PartData:
    """One batch input file: its bytes, the keys it covers (and their plan slots), its tokens."""

    data: bytes
    keys: list[bytes]
    slots: list[int]
    tokens: int


def jsonl_line(key: bytes, body: bytes, mid: bytes = _MID) -> bytes:
    """One input line; ``body`` is the canonical request JSON, embedded as is."""
    return b"".join((_HEAD, key.hex().encode(), mid, body, b"}\n"))


def split_parts(
    jobs: Iterable[tuple[int, bytes, bytes]],
    limits: BatchLimits,
    tokens_of: Callable[[bytes], int] | None = None,
    url: str = ENDPOINT,
) -> Iterator[PartData]:
    """Group ``(slot, key, body)`` jobs into parts within ``limits``, lazily.

    A part holds at most ``limits.requests`` lines and ``limits.file_bytes`` bytes, and at
    most ``limits.enqueued_tokens`` prompt tokens (counted with ``tokens_of``) when set.
    A single request over a limit goes alone in its part (the API then says why).
    ``url``: the endpoint every line goes to (``/v1/embeddings`` for embed).
    """
    mid = _mid(url)
    max_tokens = limits.enqueued_tokens
    lines: list[bytes] = []
    keys: list[bytes] = []
    slots: list[int] = []
    size = tokens = 0
    for slot, key, body in jobs:
        line = jsonl_line(key, body, mid)
        n_tokens = tokens_of(body) if (tokens_of is not None and max_tokens is not None) else 0
        full = lines and (
            len(lines) >= limits.requests
            or size + len(line) > limits.file_bytes
            or (max_tokens is not None and tokens + n_tokens > max_tokens)
        )
        if full:
            yield PartData(b"".join(lines), keys, slots, tokens)
            lines, keys, slots, size, tokens = [], [], [], 0, 0
        lines.append(line)
        keys.append(key)
        slots.append(slot)
        size += len(line)
        tokens += n_tokens
    if lines:
        yield PartData(b"".join(lines), keys, slots, tokens)


def parse_line(
    raw: bytes,
    *,
    cost: Callable[[Any], float | None],
    model: str | None,
    endpoint: str,
    tools: bool = False,
    answer: Any = None,
) -> tuple[bytes | None, Record | None, str | None]:
    """``(key, record, unanswered)`` for one output / error line.

    ``record`` is what to write to the cache (an answer, or a failed request with its
    error); ``unanswered`` is ``"expired"`` / ``"cancelled"`` for a line the API never ran
    (no record then). ``key`` is None for a line that is not ours. ``tools``: the requests
    asked for tools, so ``finish_reason="tool_calls"`` is a finished answer.
    """
    try:
        line = orjson.loads(raw)
        key = bytes.fromhex(line["custom_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None, None, None
    if len(key) != 32:
        return None, None, None
    response = line.get("response") or None
    error = line.get("error") or None
    if response is not None and response.get("status_code") == 200:
        try:  # judged as a realtime 200 is: an error object or a body that is no answer is no answer
            c = (answer or judge)(response.get("body"), None, endpoint=endpoint, model=model)
            if c.outputs is not None and len(c.outputs) != 1:
                raise BadRequestError(f"{len(c.outputs)} results for one input", code="bad_response")
        except APIError as exc:
            return key, _refused(key, exc, model, cost), None
        if c.outputs is not None:  # a list-input endpoint (endpoints.py): one input per line
            return key, Record(key, "ok", c.outputs[0], None, c.prompt_tokens, 0, 0, cost(c), None, 1, model), None
        return key, completion_record(key, c, cost(c), 1, model, tools=tools), None
    if error is not None and response is None:
        code = error.get("code") if isinstance(error, dict) else None
        if code in UNANSWERED_CODES:
            return key, None, UNANSWERED_CODES[code]
        message = error.get("message") if isinstance(error, dict) else str(error)
        return key, Record(key, "failed", error=f"batch error {code}: {message}", model=model), None
    status = (response or {}).get("status_code") or 500
    refused = error_for_status(status, (response or {}).get("body"), None, endpoint=endpoint, model=model)
    return key, _refused(key, refused, model, cost), None


def _refused(key: bytes, exc: APIError, model: str | None, cost: Callable[[Any], float | None]) -> Record:
    """A batch line's error as its row's record: retryable -> "failed" (sent again on the
    next run), a 400 -> its row status, anything else -> "error". The tokens its body
    reported (``exc.usage``) were billed: they are on the record, with their cost."""
    if isinstance(exc, RetryableError):
        kind = "failed"
    elif isinstance(exc, BadRequestError):
        kind = row_status(exc)
    else:
        kind = "error"
    u = exc.usage
    if u is None:
        return Record(key, kind, error=f"{exc} (in a batch)", model=model)
    return Record(key, kind, None, None, u.prompt_tokens, u.completion_tokens, u.cached_tokens, cost(u),
                  f"{exc} (in a batch)", 1, model)  # fmt: skip
