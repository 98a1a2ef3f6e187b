"""The loopback OpenAI-compatible server: shape, counters, faults, limits, lifecycle."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from typing import Any

import openai
import orjson
import pytest

import pandas_llm.testing
from pandas_llm.testing import LLMServer, answer_for
from pandas_llm.testing.answers import estimate_tokens
from pandas_llm.testing.limits import RateLimiter, format_duration, rate_limit_response

RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def request(
    server: LLMServer,
    body: Any = None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection: (status, lower-cased headers, parsed JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, orjson.loads(raw) if raw else None
    finally:
        conn.close()


def client(server: LLMServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=kw.pop("api_key", "x"), max_retries=0, **kw)


# -- shape ------------------------------------------------------------------------------
def test_public_names():
    assert pandas_llm.testing.__all__ == ["LLMServer", "MockBackend", "answer_for"]


def test_openai_sdk_parses_the_answer(server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate: cat"}]
    with client(server) as c:
        r = c.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert r.object == "chat.completion" and r.model == "gpt-4o-mini" and r.id
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == answer_for(messages, "gpt-4o-mini") == "echo: Translate: cat"
    prompt = estimate_tokens("Be brief.") + estimate_tokens("Translate: cat")
    assert r.usage.prompt_tokens == prompt
    assert r.usage.completion_tokens == estimate_tokens("echo: Translate: cat")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_raw_body_is_exactly_openai_shaped(server):
    status, _, body = request(server, chat("hi"))
    assert status == 200
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "echo: hi"}, "finish_reason": "stop"}
    ]
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}


def test_distinct_prompts_get_distinct_answers_and_custom_answer():
    assert answer_for([{"role": "user", "content": "a"}], "m") != answer_for([{"role": "user", "content": "b"}], "m")
    with LLMServer(answer=lambda messages, model: f"{model}:{messages[-1]['content'].upper()}") as s:
        _, _, body = request(s, chat("abc"))
    assert body["choices"][0]["message"]["content"] == "gpt-4o-mini:ABC"


def test_models_endpoint_and_strict_models(server):
    status, _, body = request(server, method="GET", path="/v1/models")
    assert status == 200 and "gpt-4o-mini" in [m["id"] for m in body["data"]]
    with LLMServer(models=["tiny"]) as s:
        with client(s) as c:
            assert [m.id for m in c.models.list()] == ["tiny"]
            with pytest.raises(openai.NotFoundError):
                c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert s.requests == 1 and s.completed == 0


# -- counters ---------------------------------------------------------------------------
def test_counters(server):
    with client(server) as c:
        for text in ["row 1", "row 2", "row 1"]:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    server.inject(500)
    assert request(server, chat("row 3"))[0] == 500
    assert (server.requests, server.completed, server.injected, server.rate_limited) == (4, 3, 1, 0)
    assert server.prompt_counts == {"row 1": 2, "row 2": 1}
    assert server.count("row 1") == 2 and server.count("row") == 3 and server.count("row 3") == 0
    server.reset_counters()
    assert (server.requests, server.completed, server.injected, server.prompt_counts) == (0, 0, 0, {})


def test_chat_body_seam_counts_like_a_paid_answer(server):
    body = server.chat_body(chat("batch row"))
    assert body["choices"][0]["message"]["content"] == "echo: batch row"
    assert server.completed == 1 and server.count("batch row") == 1 and server.requests == 0


# -- answers ----------------------------------------------------------------------------
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_length_truncation(server, param):
    text = "a long prompt " * 10
    with client(server) as c:
        r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **{param: 3})
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == answer_for([{"role": "user", "content": text}], "m")[:12]
    assert r.usage.completion_tokens == 3


def test_content_filter(server):
    with client(server) as c:
        r = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "bad [[content_filter]] row"}]
        )
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content is None
    assert r.usage.completion_tokens == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat("x", stream=True), "stream"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (chat("x", max_tokens=0), "max_tokens"),
        (b"{not json", None),
    ],
)
def test_bad_requests_are_openai_shaped_400s(server, body, param):
    status, headers, err = request(server, body)
    assert status == 400
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param
    assert all(h in headers for h in RATE_HEADERS)
    assert server.requests == 1 and server.completed == 0


# -- faults -----------------------------------------------------------------------------
def test_inject_429_with_retry_after_headers(server):
    server.inject(429, retry_after=2, retry_after_ms=1500)
    status, headers, err = request(server, chat("x"))
    assert status == 429
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "1500"
    assert err["error"]["type"] == "requests" and err["error"]["code"] == "rate_limit_exceeded"
    assert all(h in headers for h in RATE_HEADERS)
    assert request(server, chat("x"))[0] == 200
    assert (server.injected, server.rate_limited, server.completed) == (1, 0, 1)


def test_inject_via_sdk_and_match(server):
    server.inject(500, times=2, match="row 2")
    with client(server) as c:

        def ask(text: str) -> str | None:
            return (
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
                .choices[0]
                .message.content
            )

        assert ask("row 1") == "echo: row 1"
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as info:
                ask("row 2")
            assert info.value.status_code == 500
        assert ask("row 2") == "echo: row 2"
        server.inject(429)
        with pytest.raises(openai.RateLimitError):
            ask("row 3")
    assert server.prompt_counts == {"row 1": 1, "row 2": 1}


def test_inject_custom_body(server):
    server.inject(200, body=b"not json at all")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=orjson.dumps(chat("x")))
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"not json at all")
    finally:
        conn.close()
    with pytest.raises(ValueError):
        server.inject(200)


def test_inject_hang_until_client_timeout(server):
    server.inject(hang=True)
    with client(server, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "echo: x"
    assert (server.requests, server.completed, server.injected) == (2, 1, 1)


def test_stop_closes_a_hung_connection():
    server = LLMServer().start()
    server.inject(hang=True)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        body = orjson.dumps(chat("x"))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 10
        while server.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        server.stop()
        assert sock.recv(100) == b""  # closed by the server, no answer
    finally:
        sock.close()


def test_api_key(server):
    with LLMServer(api_key="sk-right") as s:
        with client(s, api_key="sk-wrong") as c:
            with pytest.raises(openai.AuthenticationError) as info:
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "invalid_api_key"
        with client(s, api_key="sk-right") as c:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert request(s, chat("x"))[0] == 401  # no Authorization header at all
        assert (s.requests, s.completed) == (3, 1)


def test_error_rate_is_deterministic_with_a_seed():
    def statuses(seed: int) -> list[int]:
        with LLMServer(error_rate={500: 0.3, 429: 0.2}, seed=seed) as s:
            return [request(s, chat(f"row {i}"))[0] for i in range(30)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 500, 429} <= set(first)
    with pytest.raises(ValueError):
        LLMServer(error_rate={500: 0.8, 429: 0.5})


def test_latency_still_answers():
    with LLMServer(latency=0.01) as s:
        assert request(s, chat("slow"))[2]["choices"][0]["message"]["content"] == "echo: slow"


# -- rate limits ------------------------------------------------------------------------
def test_rpm_limit_gives_429_with_headers():
    with LLMServer(rpm=3) as s:
        results = [request(s, chat(f"row {i}")) for i in range(5)]
        assert [r[0] for r in results] == [200, 200, 200, 429, 429]
        assert [r[1]["x-ratelimit-remaining-requests"] for r in results] == ["2", "1", "0", "0", "0"]
        status, headers, err = results[3]
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
        assert err["error"]["type"] == "requests" and err["error"]["code"] == "rate_limit_exceeded"
        assert (s.rate_limited, s.injected, s.completed, s.requests) == (2, 0, 3, 5)


def test_tpm_counts_prompt_plus_max_tokens():
    with LLMServer(tpm=100) as s:
        assert request(s, chat("x", max_tokens=60))[0] == 200  # 1 + 60 tokens
        status, headers, err = request(s, chat("x", max_tokens=60))
        assert status == 429 and err["error"]["type"] == "tokens"
        assert headers["x-ratelimit-remaining-tokens"] == "39"
        assert request(s, chat("x", max_tokens=30))[0] == 200
        status, headers, err = request(s, chat("x", max_tokens=500))  # larger than the limit
        assert status == 429 and "retry-after" not in headers and "too large" in err["error"]["message"]


def test_headers_on_every_chat_response():
    with LLMServer(rpm=2, api_key="k") as s:
        auth = {"authorization": "Bearer k"}
        s.inject(503)
        responses = [
            request(s, chat("a"), headers=auth),  # injected 503
            request(s, chat("a"), headers=auth),  # 200
            request(s, chat("a")),  # 401
            request(s, b"{", headers=auth),  # 400
            request(s, chat("a"), headers=auth),  # 200
            request(s, chat("a"), headers=auth),  # 429
        ]
        assert [r[0] for r in responses] == [503, 200, 401, 400, 200, 429]
        for _, headers, _ in responses:
            assert all(h in headers for h in RATE_HEADERS), headers
    with LLMServer() as s:
        _, headers, _ = request(s, chat("a"))
        assert int(headers["x-ratelimit-limit-requests"]) >= 1_000_000
        assert headers["x-ratelimit-remaining-tokens"] == headers["x-ratelimit-limit-tokens"]


def test_limiter_window_with_a_fake_clock():
    now = [100.0]
    lim = RateLimiter(rpm=6000, tpm=600_000, window=1, clock=lambda: now[0])  # 100 req, 10k tokens / s
    assert all(lim.acquire(10).allowed for _ in range(100))
    refused = lim.acquire(10)
    assert not refused.allowed and refused.kind == "requests"
    assert refused.retry_after == pytest.approx(1.0)
    headers = dict(refused.headers)
    assert headers["x-ratelimit-limit-requests"] == "6000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == str((10_000 - 1000) * 60)
    assert headers["x-ratelimit-reset-requests"] == "1s"
    now[0] += 0.5
    assert lim.acquire(10).allowed is False
    now[0] += 0.5
    assert lim.acquire(9_000).allowed  # the first 100 left the window
    tokens = lim.acquire(2_000)
    assert tokens.kind == "tokens" and tokens.retry_after == pytest.approx(1.0)
    assert dict(tokens.headers)["x-ratelimit-reset-tokens"] == "1s"


def test_format_duration():
    assert [format_duration(s) for s in (0, 0.869, 0.0001, 1, 1.5, 59.999, 60, 360, 3725.5)] == [
        "0s", "869ms", "1ms", "1s", "1.5s", "59.999s", "1m0s", "6m0s", "1h2m5.5s",
    ]  # fmt: skip


# -- HTTP -------------------------------------------------------------------------------
def test_unknown_path_and_wrong_method(server):
    status, _, err = request(server, method="GET", path="/v1/nope")
    assert status == 404 and "error" in err
    status, headers, err = request(server, method="GET", path="/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST" and "error" in err


def test_keep_alive_chunked_and_connection_close(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for i in range(3):
            conn.request("POST", "/v1/chat/completions", body=orjson.dumps(chat(f"k{i}")))
            assert orjson.loads(conn.getresponse().read())["choices"][0]["message"]["content"] == f"echo: k{i}"
        chunks = iter([orjson.dumps(chat("chunked"))[:10], orjson.dumps(chat("chunked"))[10:]])
        conn.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True)
        assert orjson.loads(conn.getresponse().read())["choices"][0]["message"]["content"] == "echo: chunked"
        conn.request("POST", "/v1/chat/completions", body=orjson.dumps(chat("bye")), headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.getheader("connection") == "close" and resp.read()
    finally:
        conn.close()
    assert server.completed == 5


def test_route_table_seam(server):
    seen = []

    def upload(req):
        seen.append(req)
        return pandas_llm.testing._http.json_response(200, {"id": "file-1", "bytes": len(req.body)})

    async def content(req):
        return pandas_llm.testing._http.Response(200, req.path.encode(), content_type="application/octet-stream")

    server.routes[("POST", "/v1/files")] = upload
    server.routes[("GET", "/v1/files/*")] = content
    multipart = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{"x":1}\r\n--b--\r\n'
    status, _, body = request(
        server, multipart, path="/v1/files", headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert status == 200 and body == {"id": "file-1", "bytes": len(multipart)}
    assert seen[0].body == multipart and seen[0].headers["content-type"].startswith("multipart/form-data")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/v1/files/file-1/content?x=1")
        assert conn.getresponse().read() == b"/v1/files/file-1/content"
    finally:
        conn.close()
    assert request(server, method="PUT", path="/v1/files/file-1")[0] == 405  # GET and DELETE are routed


# -- lifecycle --------------------------------------------------------------------------
def test_lifecycle_and_fixed_port():
    server = LLMServer()
    server.start()
    try:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1" and server.url + "/v1" == server.base_url
        with pytest.raises(RuntimeError):
            server.start()
        with pytest.raises(OSError):
            LLMServer(port=server.port).start()  # port taken: the bind error reaches the caller
    finally:
        server.stop()
    server.stop()  # idempotent


def test_pytest_fixture(llm_server):
    assert request(llm_server, chat("fixture"))[0] == 200
    assert llm_server.count("fixture") == 1


def test_module_runs_as_a_process():
    proc = subprocess.Popen(
        [sys.executable, "-m", "pandas_llm.testing", "--port", "0", "--rpm", "100", "--api-key", "k"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0) as c:
            r = c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "from a process"}]
            )
        assert r.headers["x-ratelimit-limit-requests"] == "100"
        assert r.parse().choices[0].message.content == "echo: from a process"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0


def test_explicit_window_scales_the_per_minute_figures():
    with LLMServer(rpm=6, window=30) as s:  # 3 requests per 30 s window, reported per minute
        results = [request(s, chat(f"row {i}")) for i in range(4)]
    assert [r[0] for r in results] == [200, 200, 200, 429]
    assert [r[1]["x-ratelimit-remaining-requests"] for r in results] == ["4", "2", "0", "0"]
    assert all(r[1]["x-ratelimit-limit-requests"] == "6" for r in results)
    assert 1 <= int(results[3][1]["retry-after"]) <= 30


def test_quantized_slots_refuse_with_room_left_in_the_minute():
    now = [10.2]
    lim = RateLimiter(rpm=600, window=1, clock=lambda: now[0], kind="quantized")  # 10 per wall-clock second
    assert all(lim.acquire(1).allowed for _ in range(10))
    refused = lim.acquire(1)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.8)  # the next slot
    assert dict(refused.headers)["x-ratelimit-remaining-requests"] == "590"  # per minute: plenty left
    assert "Limit 600, Used 600" in rate_limit_response("m", refused).body.decode()
    now[0] = 11.0
    assert lim.acquire(1).allowed


def test_token_bucket_refills_continuously():
    now = [0.0]
    lim = RateLimiter(rpm=60, clock=lambda: now[0], kind="bucket")  # 60 at once, then 1 per second
    assert all(lim.acquire(1).allowed for _ in range(60))
    refused = lim.acquire(1)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
    now[0] = 1.0
    ok = lim.acquire(1)
    assert ok.allowed and dict(ok.headers)["x-ratelimit-remaining-requests"] == "0"
    assert dict(ok.headers)["x-ratelimit-reset-requests"] == "1m0s"


def test_refill_reset_on_a_plain_minute_reads_like_a_short_window():
    lim = RateLimiter(rpm=1200, clock=lambda: 0.0, reset="refill")
    h = dict(lim.acquire(1).headers)
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"], h["x-ratelimit-reset-requests"]) == (
        "1200",
        "1199",
        "50ms",
    )


def test_per_day_request_headers_like_groq():
    with LLMServer(rpm=60, rpd=14_400, rpd_used=29) as s:
        _, h, _ = request(s, chat("a"))
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("14400", "14370")
        assert h["x-ratelimit-reset-requests"] == "3m0s"
    lim = RateLimiter(rpd=2, clock=lambda: 0.0)
    assert lim.acquire(1).allowed and lim.acquire(1).allowed
    refused = lim.acquire(1)
    assert "requests per day (RPD): Limit 2, Used 2" in rate_limit_response("m", refused).body.decode()


def test_tokens_option_counts_with_the_given_tokenizer():
    words = lambda text: len(text.split())  # noqa: E731
    with LLMServer(tokens=words) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}])
        client.close()
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 4)  # "echo: one two three"


def test_prompt_cache_bills_a_repeated_prefix_of_1024_tokens_or_more_as_cached():
    fixed = "x" * 5000  # ~1,250 tokens at len // 4
    with LLMServer(prompt_cache=True) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)

        def ask(system, user):
            r = client.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "system", "content": system}, {"role": "user", "content": user}])  # fmt: skip
            return r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens

        first = ask(fixed, "row one")
        second = ask(fixed, "row two")
        short = [ask("y" * 2000, "a"), ask("y" * 2000, "b")]  # a shared prefix under 1,024 tokens
        client.close()
    assert first[1] == 0
    assert second[1] % 128 == 0 and 1024 <= second[1] <= second[0]
    assert [c for _, c in short] == [0, 0]
    assert server.cached_tokens == second[1]


def test_chunked_bodies_with_extensions_and_trailers_sent_in_pieces(server):
    """The server reads chunked bodies itself (not with the wire client's code it tests)."""
    body = orjson.dumps(chat("pieces"))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (7, body[:7], len(body) - 7, body[7:])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for i in range(0, len(data), 5):  # the body arrives in small pieces
            sock.sendall(data[i : i + 5])
            time.sleep(0.001)
        sock.sendall(head + b"zz\r\n{}\r\n0\r\n\r\n")  # a malformed chunk size on the kept-alive connection
        got = b""
        while got.count(b"HTTP/1.1") < 2:
            piece = sock.recv(65536)
            if not piece:
                break
            got += piece
    assert b"echo: pieces" in got and b"HTTP/1.1 400" in got and b"malformed chunk size" in got


@pytest.mark.parametrize(
    "data",
    [b"5\r\nhello\r\n0\r\n\r\n", b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nA: b\r\nC: d\r\n\r\nNEXT", b"5\r\nhel",
     b"0\r\n\r\n", b"0\r\nA: b\r\n", b"a\r\n0123456789\r\n0\r\n"],
)  # fmt: skip
def test_the_server_and_the_wire_client_read_chunked_bodies_alike(data):
    from pandas_llm._backends.wire import dechunk
    from pandas_llm.testing._http import _dechunk

    assert _dechunk(bytearray(data), 0) == dechunk(bytearray(data), 0)
