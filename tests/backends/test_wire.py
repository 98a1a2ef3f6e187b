"""The plain-HTTP client (backends/wire.py) against a scripted server: framing, reuse, failures."""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest

from pandas_llm._backends import make_backend
from pandas_llm._backends.wire import WireBackend, _Conn
from pandas_llm._config import Settings
from pandas_llm._errors import RateLimitError, RetryableError

ANSWER = orjson.dumps(
    {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
)


def ok(body: bytes = ANSWER, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


class Scripted:
    """A server whose ``reply(n)`` gives what to send for the n-th request: bytes, or a list
    of bytes and the words "close" (hang up) and "hang" (never answer)."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[bytes] = []
        self.heads: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.heads.append(head)
                self.requests.append(await reader.readexactly(length))
                action = self.reply(len(self.requests))
                for part in action if isinstance(action, list) else [action]:
                    if part == "hang":
                        await asyncio.sleep(3600)
                    if part == "close":
                        return
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def backend(port: int, timeout: float = 5.0) -> WireBackend:
    return WireBackend(Settings(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", timeout=timeout))


async def test_requests_reuse_one_kept_alive_connection():
    async with Scripted(lambda n: ok()) as srv:
        b = backend(srv.port)
        for _ in range(3):
            c = await b.complete(b'{"x":1}')
            assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) == ("hi", "stop", 3, 1)
        await b.aclose()
    assert srv.connections == 1 and srv.requests == [b'{"x":1}'] * 3
    head = srv.heads[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "Authorization: Bearer k" in head and "Content-Type: application/json" in head


async def test_chunked_gzip_and_split_answers_are_read():
    chunked = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\n" + ANSWER[:5] + b"\r\n",
        hex(len(ANSWER) - 5)[2:].encode() + b";ext=1\r\n" + ANSWER[5:] + b"\r\n0\r\nx-trailer: 1\r\n\r\n",
    ]
    zipped = gzip.compress(ANSWER)
    replies = {1: chunked, 2: ok(zipped, "content-encoding: gzip\r\n"), 3: [ok()[:20], ok()[20:]]}
    async with Scripted(lambda n: replies[n]) as srv:
        b = backend(srv.port)
        for _ in range(3):
            assert (await b.complete(b"{}")).text == "hi"
        await b.aclose()
    assert srv.connections == 1


async def test_interim_100_answer_is_skipped():
    async with Scripted(lambda n: [b"HTTP/1.1 100 Continue\r\n\r\n", ok()]) as srv:
        b = backend(srv.port)
        assert (await b.complete(b"{}")).text == "hi"
        await b.aclose()


async def test_connection_close_and_http10_bodies_end_the_connection():
    replies = {
        1: [ok(extra="connection: close\r\n"), "close"],
        2: [b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + ANSWER, "close"],  # ends at EOF
        3: ok(),
    }
    async with Scripted(lambda n: replies[n]) as srv:
        b = backend(srv.port)
        for _ in range(3):
            assert (await b.complete(b"{}")).text == "hi"
        await b.aclose()
    assert srv.connections == 3


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_at_once():
    # 1: answered, connection kept; 2: the server hangs up without answering (an idle
    # timeout racing our write); the client sends again on a fresh connection: 3
    replies = {1: ok(), 2: ["close"], 3: ok()}
    async with Scripted(lambda n: replies[n]) as srv:
        b = backend(srv.port)
        assert (await b.complete(b"{}")).text == "hi"
        assert (await b.complete(b"{}")).text == "hi"
        await b.aclose()
    assert len(srv.requests) == 3 and srv.connections == 2


async def test_a_connection_lost_mid_answer_is_a_retryable_error_not_resent():
    async with Scripted(lambda n: [ok()[:30], "close"]) as srv:
        b = backend(srv.port)
        with pytest.raises(RetryableError) as err:
            await b.complete(b"{}")
        assert err.value.code == "connection"
        await b.aclose()
    assert len(srv.requests) == 1  # part of an answer came: the engine decides on a retry


async def test_a_fresh_connection_dropped_before_an_answer_is_not_resent_here():
    async with Scripted(lambda n: ["close"]) as srv:
        b = backend(srv.port)
        with pytest.raises(RetryableError):
            await b.complete(b"{}")
        await b.aclose()
    assert len(srv.requests) == 1


async def test_no_answer_within_the_timeout():
    async with Scripted(lambda n: ["hang"]) as srv:
        b = backend(srv.port, timeout=0.2)
        with pytest.raises(RetryableError) as err:
            await b.complete(b"{}")
        assert err.value.code == "timeout"
        await b.aclose()


async def test_error_statuses_map_to_the_error_tree_with_headers():
    body = orjson.dumps({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})
    head = (
        f"HTTP/1.1 429 Too Many Requests\r\ncontent-length: {len(body)}\r\nretry-after: 1\r\n"
        "retry-after-ms: 250\r\nx-ratelimit-limit-requests: 60\r\nX-RateLimit-Remaining-Requests: 0\r\n\r\n"
    )
    async with Scripted(lambda n: head.encode() + body) as srv:
        b = backend(srv.port)
        with pytest.raises(RateLimitError) as err:
            await b.complete(b"{}")
        assert err.value.retry_after == 0.25
        assert err.value.headers["x-ratelimit-remaining-requests"] == "0"
        await b.aclose()


async def test_nothing_listening_is_a_retryable_connection_error():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    b = backend(port)
    with pytest.raises(RetryableError) as err:
        await b.complete(b"{}")
    assert err.value.code == "connection"


def test_http_endpoints_get_the_lean_client_https_keeps_aiohttp(monkeypatch):
    plain = Settings(model="m", base_url="http://127.0.0.1:1/v1", api_key="k")
    secure = Settings(model="m", base_url="https://example.invalid/v1", api_key="k")
    assert type(make_backend(plain)).__name__ == "WireBackend"
    assert type(make_backend(secure)).__name__ == "HTTPBackend"
    monkeypatch.setenv("PANDAS_LLM_HTTP", "aiohttp")
    assert type(make_backend(plain)).__name__ == "HTTPBackend"


async def test_an_answer_arriving_for_a_cancelled_request_is_dropped_quietly():
    """A run that stops cancels its requests in flight; an answer already on its way must not
    raise InvalidStateError inside the transport (a 'Fatal error on transport' traceback)."""
    conn = _Conn()
    conn.waiter = asyncio.get_running_loop().create_future()
    conn.waiter.cancel()
    conn.data_received(ok())
    assert conn.waiter is None and not conn.keep
