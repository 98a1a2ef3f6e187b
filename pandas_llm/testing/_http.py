"""A minimal HTTP/1.1 server on ``asyncio.Protocol``: just enough for loopback tests.

Why not aiohttp.web or FastAPI: their per-request CPU (routing, middleware, header
objects) is several times what a benchmark client spends, so a benchmark against them
measures the server. This one parses the request line and headers with ``bytes``
methods, hands a :class:`Request` to a handler from a route table, and writes one
pre-joined response.

Supported: keep-alive, ``Content-Length`` and ``Transfer-Encoding: chunked`` request
bodies, ``Expect: 100-continue``, ``Connection: close``, 404 for unknown paths and 405
(with ``Allow``) for a known path with the wrong method. Requests on one connection are
answered in order; a request that arrives while the previous one is still pending waits
in the buffer (pipelining works but is not optimised).

A handler is ``handler(request) -> Response`` or ``-> Awaitable[Response]``. An awaitable
that never completes leaves the connection open without an answer (a "hang"); it is
cancelled when the client disconnects or the server stops. A handler that returns
``RESET`` drops the connection with a TCP reset and no answer, as a crashed server or a
proxy cutting the line does.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

__all__ = [
    "Request",
    "Response",
    "Handler",
    "HTTPProtocol",
    "RESET",
    "default_error",
    "error_response",
    "json_response",
    "later",
]

#: Returned by a handler: reset the connection instead of answering.
RESET: Any = object()

MAX_HEADER_BYTES = 64 * 1024


@dataclass(slots=True)
class Request:
    """One parsed HTTP request. ``headers`` has lower-case names; ``body`` is raw bytes
    (multipart uploads included: parse them with ``headers["content-type"]``)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ``orjson.JSONDecodeError``)."""
        return orjson.loads(self.body)


@dataclass(slots=True)
class Response:
    """An HTTP response; ``body`` is sent as is (``str`` is encoded UTF-8)."""

    status: int = 200
    body: bytes | str = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def json_response(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON ``Response`` serialised with orjson."""
    return Response(status, orjson.dumps(obj), headers if headers is not None else [])


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode("latin-1")
        _STATUS_LINES[status] = line
    return line


def encode_response(resp: Response, close: bool) -> bytes:
    body = resp.body.encode() if isinstance(resp.body, str) else resp.body
    head = [f"content-type: {resp.content_type}\r\ncontent-length: {len(body)}\r\n"]
    for name, value in resp.headers:
        head.append(f"{name}: {value}\r\n")
    if close:
        head.append("connection: close\r\n")
    head.append("\r\n")
    return b"".join((_status_line(resp.status), "".join(head).encode("latin-1"), body))


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",  # noqa: A002 - the name of the field in the body
    code: str | None = None,
    param: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return json_response(status, body, headers)


_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    402: ("Insufficient Balance", "unknown_error", "invalid_request_error"),  # DeepSeek's body
    403: ("You are not allowed to access this resource.", "invalid_request_error", "permission_denied"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "timeout", None),
    409: ("Conflict.", "invalid_request_error", None),
    429: ("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def default_error(status: int, headers: list[tuple[str, str]] | None = None) -> Response:
    """The OpenAI-style error the real API sends for ``status`` (a generic one otherwise)."""
    message, type_, code = _DEFAULT_ERRORS.get(
        status, (f"Injected error {status}.", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    return error_response(status, message, type_, code, headers=headers)


_error = error_response


class _BadRequest(Exception):
    pass


class HTTPProtocol(asyncio.Protocol):
    """One connection. ``routes`` maps ``(METHOD, path)`` to a handler; ``conns`` is the
    server's set of live protocols, so that stopping can close them."""

    __slots__ = ("routes", "conns", "transport", "buf", "need", "pending", "closing", "continued")

    def __init__(self, routes: dict[tuple[str, str], Handler], conns: set[HTTPProtocol]) -> None:
        self.routes = routes
        self.conns = conns
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # += is amortised O(1), so large uploads stay linear
        self.need = 0  # do not re-parse before the buffer holds this many bytes
        self.pending: asyncio.Future[Response] | None = None
        self.closing = False
        self.continued = False  # "100 Continue" already sent for the request in the buffer

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        self.closing = True
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.pending is None and len(self.buf) >= self.need:
            self._process()

    def close(self) -> None:
        self.closing = True
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.transport is not None:
            self.transport.close()

    # -- parsing ----------------------------------------------------------------------
    def _process(self) -> None:
        while self.buf and not self.closing and self.pending is None:
            try:
                parsed = self._parse()
            except _BadRequest as exc:
                self._write(_error(400, str(exc)), close=True)
                return
            if parsed is None:
                return
            request, close = parsed
            self._dispatch(request, close)

    def _parse(self) -> tuple[Request, bool] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise _BadRequest("request headers too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest("malformed header line")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoded = _dechunk(buf, start)
            if decoded is None:
                return None
            body, start = decoded
        else:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                raise _BadRequest("malformed content-length") from None
            if len(buf) - start < length:
                expect = headers.get("expect", "").lower() == "100-continue"
                if expect and not self.continued and self.transport is not None:
                    self.continued = True
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.need = start + length
                return None
            body = bytes(buf[start : start + length])
            start += length
        del buf[:start]
        self.need = 0
        self.continued = False
        path, _, query = target.partition("?")
        conn = headers.get("connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        return Request(method, path, query, headers, body), close

    # -- dispatch ---------------------------------------------------------------------
    def _dispatch(self, request: Request, close: bool) -> None:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            handler, allowed = _lookup(self.routes, request.method, request.path)
        if handler is None:
            if allowed:
                resp = _error(405, f"Method {request.method} not allowed for {request.path}")
                resp.headers.append(("allow", ", ".join(allowed)))
            else:
                resp = _error(404, f"Unknown request URL: {request.method} {request.path}", code="unknown_url")
            self._write(resp, close)
            return
        try:
            result = handler(request)
        except Exception as exc:  # a bug in a handler must not kill the connection silently
            self._write(_error(500, f"handler error: {exc!r}", "server_error"), close)
            return
        if isinstance(result, Response):
            self._write(result, close)
            return
        if result is RESET:
            self._reset()
            return
        fut = asyncio.ensure_future(result)
        self.pending = fut
        fut.add_done_callback(lambda f: self._deferred_done(f, close))

    def _deferred_done(self, fut: asyncio.Future[Response], close: bool) -> None:
        if fut is not self.pending:
            return  # cancelled by connection_lost / close
        self.pending = None
        if fut.cancelled():
            return
        exc = fut.exception()
        resp = _error(500, f"handler error: {exc!r}", "server_error") if exc else fut.result()
        self._write(resp, close)
        if self.buf and not self.closing:
            self._process()

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees ECONNRESET, not an orderly end."""
        transport = self.transport
        self.closing = True
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _write(self, resp: Response, close: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(encode_response(resp, close))
        if close:
            self.closing = True
            transport.close()


def _lookup(routes: dict[tuple[str, str], Handler], method: str, path: str) -> tuple[Handler | None, list[str]]:
    """Slow path: match ``"/prefix/*"`` routes; else the methods allowed on ``path``."""
    allowed = set()
    for (m, p), handler in routes.items():
        if p == path or (p.endswith("/*") and path.startswith(p[:-1]) and len(path) > len(p) - 1):
            if m == method:
                return handler, []
            allowed.add(m)
    return None, sorted(allowed)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """``(body, end)`` of a chunked body starting at ``pos`` (RFC 9112 7.1: ``size[;ext]CRLF
    data CRLF`` ... ``0 CRLF [trailer lines] CRLF``); None if it is not complete yet.

    The server's own reading, not the wire client's (pandas_llm._backends.wire), so that a
    bug in one is caught by loopback tests of the other."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_field = bytes(buf[pos:eol]).partition(b";")[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise _BadRequest("malformed chunk size") from None
        if size < 0:
            raise _BadRequest("malformed chunk size")
        if size == 0:  # the last chunk: trailer lines (ignored) up to an empty line
            end = buf.find(b"\r\n\r\n", eol)
            return None if end < 0 else (bytes(body), end + 4)
        data = eol + 2
        if len(buf) < data + size + 2:
            return None
        body += buf[data : data + size]
        pos = data + size + 2


def later(delay: float, resp: Response) -> asyncio.Future[Response]:
    """A future that resolves to ``resp`` after ``delay`` seconds (a slow server's answer)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Response] = loop.create_future()

    def fire() -> None:
        if not fut.done():  # the client may have gone away meanwhile
            fut.set_result(resp)

    loop.call_later(delay, fire)
    return fut
