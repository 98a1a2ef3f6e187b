"""Faults of the loopback chat endpoint: injected ones (``inject``) and random ones
(``error_rate``), and the 200 shapes of a server that streams although asked not to."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .._errors import ConfigError
from ._http import Response, default_error

__all__ = ["Fault", "Faults", "SHAPES"]


@dataclass(slots=True)
class Fault:
    status: int
    times: int
    match: str | None
    retry_after: float | str | None  # a str is sent as given (an HTTP date)
    retry_after_ms: float | None
    hang: bool
    body: Any
    shape: str | None = None
    reset: bool = False


class Faults:
    """``inject`` / ``clear_faults`` and the draws the chat endpoint makes; mixed into
    ``LLMServer``, which holds the state they read and count (``error_rate``, ``injected``)."""

    error_rate: dict[int, float]
    injected: int
    _lock: threading.Lock
    _faults: list[Fault]
    _rng: Any

    def inject(
        self,
        status: int = 500,
        *,
        times: int = 1,
        match: str | None = None,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        hang: bool = False,
        body: Any = None,
        shape: str | None = None,
        reset: bool = False,
    ) -> None:
        """Make the next ``times`` chat requests whose last user message contains ``match``
        (any request if None) fail with ``status`` and an OpenAI-style error body.

        ``retry_after`` / ``retry_after_ms`` add those headers (a str ``retry_after`` is sent
        as given, e.g. an HTTP date); ``body`` (dict, str or bytes)
        replaces the error body (with a 2xx status, it replaces the answer: a gateway's
        ``{"error": {...}}``, a ``finish_reason: "error"``); ``hang=True`` never answers:
        the connection stays open until the client gives up. ``shape`` answers with status
        200 and the request's real answer (counted as answered), written as a server that
        ignores ``stream: false`` writes it: ``"sse"`` an event stream of chunks (usage in
        the last, then ``data: [DONE]``), ``"sse_cut"`` the same stream cut before its
        ``finish_reason``, ``"json+done"`` the JSON answer followed by ``data: [DONE]``.
        ``reset=True`` answers nothing and resets the connection (TCP RST), as a server that
        crashed or a proxy cutting the line does (``status`` is then unused).
        Faults are consumed in the order they were injected.
        """
        if times < 1:
            raise ConfigError(f"times must be >= 1, got {times!r}")
        if shape is not None and (shape not in SHAPES or status != 200 or body is not None or hang):
            raise ConfigError(f"shape= is one of {sorted(SHAPES)}, with status 200 and no body= or hang=")
        if 200 <= status < 300 and body is None and not (hang or reset) and shape is None:
            raise ConfigError("a 2xx fault needs body= or shape=")
        with self._lock:
            self._faults.append(Fault(status, times, match, retry_after, retry_after_ms, hang, body, shape, reset))

    def clear_faults(self) -> None:
        """Drop faults not consumed yet."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, prompt: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match is None or fault.match in prompt:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    self.injected += 1
                    return fault
        return None

    def _random_fault(self, headers: Any) -> Response | None:
        """One draw against ``error_rate``: the injected error's response, or None (answer)."""
        draw, acc = self._rng.random(), 0.0
        for status, p in self.error_rate.items():
            acc += p
            if draw < acc:
                with self._lock:
                    self.injected += 1
                return default_error(status, headers)
        return None

    def _fault_response(self, fault: Fault, headers: list[tuple[str, str]]) -> Response:
        if fault.retry_after is not None:
            headers.append(("retry-after", _number(fault.retry_after)))
        if fault.retry_after_ms is not None:
            headers.append(("retry-after-ms", _number(fault.retry_after_ms)))
        if fault.body is None:
            return default_error(fault.status, headers)
        body = fault.body if isinstance(fault.body, bytes | str) else orjson.dumps(fault.body)
        return Response(fault.status, body, headers)


def _sse(answer: dict[str, Any], *, cut: bool = False) -> bytes:
    """``answer`` as the event stream a streaming server writes: a role chunk, the content in
    pieces, a chunk with the finish_reason and the usage, then ``data: [DONE]``."""
    head = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = answer["choices"][0]
    content = choice["message"]["content"] or ""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": content[i : i + 8]} for i in range(0, len(content), 8)]
    chunks = [head | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    if not cut:
        end = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        chunks.append(head | {"choices": [end], "usage": answer["usage"]})
    events = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return events if cut else events + b"data: [DONE]\n\n"


#: What ``inject(shape=...)`` writes for a 200: answer dict -> body bytes.
SHAPES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "sse": _sse,
    "sse_cut": lambda answer: _sse(answer, cut=True),
    "json+done": lambda answer: orjson.dumps(answer) + b"\n\ndata: [DONE]\n\n",
}


def _number(value: float | str) -> str:
    if isinstance(value, str):  # sent as given: an HTTP date
        return value
    return str(int(value)) if float(value).is_integer() else str(value)
