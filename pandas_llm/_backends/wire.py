"""A lean HTTP/1.1 client for plain ``http://`` endpoints: local vLLM, llama.cpp, Ollama,
the loopback test server.

There the client's CPU sets the pace, and aiohttp spends ~75 µs of it per request
(uvloop; ~96 µs on asyncio's loop). A POST on a kept-alive connection needs much less:
this writes one pre-built header block and the body, and parses the status line, the
headers and a ``Content-Length`` or chunked body: ~13 µs per request on uvloop, ~25 µs
on asyncio's loop (20,000 requests, 50 connections, loopback server on another core).

``https://`` endpoints (remote APIs: TLS, and rate limits rather than CPU set the pace)
keep aiohttp (http.py); so does ``PANDAS_LLM_HTTP=aiohttp``. No proxies, no redirects,
no compression asked for (a gzip/deflate answer is still read).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import orjson

from .._errors import ConfigError
from .answers import read_answer
from .base import Completion
from .errors import AnswerLost, error_for_status, lost, map_errors

__all__ = ["WireBackend"]

MAX_HEAD = 64 * 1024


class _Broken(AnswerLost):
    """The connection failed; ``answered`` is False when nothing of the answer had arrived."""

    def __init__(self, message: str, answered: bool):
        super().__init__(message)
        self.answered = answered


class _Conn(asyncio.Protocol):
    """One kept-alive connection answering one request at a time."""

    __slots__ = ("transport", "buf", "waiter", "closed", "got", "reused", "keep")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.got = False  # some of the current answer arrived
        self.reused = False
        self.keep = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.got = True
        if self.waiter is not None:
            self._parse(eof=False)

    def eof_received(self) -> bool:
        self.closed = True
        if self.waiter is not None:
            self._parse(eof=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Broken(f"connection closed ({exc or 'by the server'})", self.got))

    def send(self, data: bytes) -> asyncio.Future:
        self.waiter = fut = asyncio.get_running_loop().create_future()
        self.got = False
        self.transport.write(data)  # type: ignore[union-attr]
        return fut

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self, eof: bool) -> None:
        try:
            done = _answer(self.buf, eof)
        except ValueError as exc:
            done = exc
        if done is None:
            if eof:
                self._fail("the connection closed in the middle of an answer")
            return
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():  # cancelled (the run stopped) before its answer came: nobody reads it
            self.keep = False
            return
        if isinstance(done, Exception):
            self.keep = False
            waiter.set_exception(_Broken(f"unreadable HTTP answer: {done}", True))
            return
        status, headers, body, used, keep = done
        del self.buf[:used]
        self.keep = keep and not eof
        waiter.set_result((status, headers, body))

    def _fail(self, message: str) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Broken(message, self.got))


def _answer(buf: bytearray, eof: bool):
    """``(status, headers, body, bytes used, keep-alive)`` once ``buf`` holds a whole answer."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise ValueError("headers too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest[:3])
        if 100 <= status < 200:  # 100 Continue and friends: skip, the real answer follows
            del buf[: end + 4]
            continue
        break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    conn = headers.get("connection", "").lower()
    keep = conn != "close" and (version != "HTTP/1.0" or conn == "keep-alive")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        got = dechunk(buf, start)
        if got is None:
            return None
        body, used = got
    elif "content-length" in headers:
        used = start + int(headers["content-length"])
        if len(buf) < used:
            return None
        body = bytes(buf[start:used])
    elif status in (204, 304):
        body, used = b"", start
    else:  # delimited by the end of the connection
        if not eof:
            return None
        body, used, keep = bytes(buf[start:]), len(buf), False
    coding = headers.get("content-encoding", "identity").lower()
    if coding in ("gzip", "deflate"):
        body = zlib.decompress(body, zlib.MAX_WBITS | 32)
    elif coding not in ("identity", ""):
        raise ValueError(f"content-encoding {coding} is not supported")
    return status, headers, body, used, keep


def dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``: ``(body, end)``, or None while it is
    incomplete; ValueError on a malformed chunk size. The loopback server reads chunked
    bodies with its own code (testing/_http.py), never with this one."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n", pos)
            while end > pos:  # trailers
                pos = end + 2
                end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            return b"".join(parts), end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class WireBackend:
    """POST /chat/completions over plain HTTP/1.1 keep-alive connections."""

    def __init__(self, settings: Any, *, path: str = "/chat/completions", read: Any = read_answer):

        self.endpoint = settings.endpoint
        self.model = settings.model
        self._read = read
        url = urlsplit(self.endpoint + path)
        if url.scheme != "http" or not url.hostname:
            raise ConfigError(f"the plain-HTTP backend needs an http:// base_url, got {self.endpoint!r}")
        self._host, self._port = url.hostname, url.port or 80
        api_key = settings.effective_api_key
        head = (
            f"POST {url.path}{'?' + url.query if url.query else ''} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nUser-Agent: pandas-llm\r\nAccept: application/json\r\n"
            "Content-Type: application/json\r\n"
        )
        if api_key:
            head += f"Authorization: Bearer {api_key}\r\n"
        self._head = (head + "Content-Length: ").encode("latin-1")
        self._timeout = settings.request_timeout
        self._idle: deque[_Conn] = deque()
        self._busy: set[_Conn] = set()

    def __repr__(self) -> str:  # never the key its headers hold
        return f"<{type(self).__name__} {self.endpoint}>"

    async def complete(self, body: bytes) -> Completion:
        data = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        with map_errors("wire", self.endpoint, self.model):  # _Broken: written, answer lost; OSError: unsent
            status, headers, raw = await self._exchange(data)
        if status == 200:
            return self._read(raw, headers, endpoint=self.endpoint, model=self.model)
        try:
            err: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            err = raw
        raise error_for_status(status, err, headers, endpoint=self.endpoint, model=self.model)

    async def _exchange(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            conn = await self._connection(loop)
            self._busy.add(conn)
            timer = loop.call_later(self._timeout, self._time_out, conn)
            try:
                result = await conn.send(data)
            except _Broken as exc:
                conn.close()
                if conn.reused and not exc.answered:
                    continue  # the server closed an idle connection as we wrote: once more, fresh
                raise
            except BaseException:
                conn.close()  # cancelled or timed out: the answer may still come; not on this one
                raise
            finally:
                timer.cancel()
                self._busy.discard(conn)
            if conn.keep and not conn.closed:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()
            return result
        raise _Broken("the connection closed before an answer, twice", False)

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        _, conn = await loop.create_connection(_Conn, self._host, self._port)
        return conn

    def _time_out(self, conn: _Conn) -> None:
        waiter = conn.waiter
        if waiter is not None and not waiter.done():
            conn.waiter = None
            waiter.set_exception(
                lost(f"no answer within the timeout ({self._timeout} s) from {self.endpoint}", "timeout")
            )
        conn.close()

    async def aclose(self) -> None:
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports close
