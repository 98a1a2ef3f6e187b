"""``LLMServer``: an OpenAI-compatible chat completions server on 127.0.0.1
(with ``/v1/embeddings`` and ``/v1/moderations``: testing/endpoints.py).

For loopback tests, demos, benchmarks and users' own CI::

    >>> import openai
    >>> from pandas_llm.testing import LLMServer
    >>> with LLMServer() as srv:
    ...     client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
    ...     r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    ...     client.close()
    >>> r.choices[0].message.content, srv.completed, srv.count("hi")
    ('echo: hi', 1, 1)

Speed: the server's own CPU is 25-40 µs per chat completion request with 16 keep-alive
connections and 50-75 µs with one (no pipelining, so one epoll wake-up and two syscalls
per request), of which ~11 µs is this package's Python and the rest asyncio and the
kernel. Measured as the server process's ``time.process_time()`` delta (read via
``GET /_testing/stats``) over 20,000 requests from a lean aiohttp client in another
process; Python 3.11, stdlib asyncio loop, 2-core Linux VM. A benchmark thus measures
the client, not this.

Order of checks for ``POST /v1/chat/completions``: API key (401) -> JSON body and
parameters (400, ``stream: true`` is 400) -> injected faults (``inject``) -> random
faults (``error_rate``) -> rate limits (429) -> the answer (200). ``latency`` delays every
response. Counters are updated when the answer is decided (as billing is), not when the
bytes reach the client.

Extension seams: ``srv.routes[("POST", "/v1/files")] = handler`` adds an endpoint (see
``_http`` for ``Request``/``Response`` and ``/*`` prefix routes); ``srv.chat_body(body)``
answers one chat request body as the realtime endpoint would; ``srv.batches`` (batches.py)
serves the Batch API through both.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from .._errors import ConfigError, PandasLLMError
from ._http import RESET, HTTPProtocol, Request, Response, error_response, json_response, later
from .answers import (
    AnswerFn,
    Completion,
    InvalidRequest,
    answer_for,
    cached_tokens,
    complete,
    estimate_tokens,
    message_text,
)
from .batches import BatchEndpoints
from .endpoints import ListEndpoints
from .faults import SHAPES, Fault, Faults
from .limits import RateLimiter, rate_limit_response
from .structured import StructuredAnswers

__all__ = ["LLMServer", "DEFAULT_MODELS"]


class ServerStateError(PandasLLMError, RuntimeError):
    """The server was asked to do something its state does not allow (start twice)."""


#: ``GET /v1/models`` lists these unless ``models=`` is given.
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5", "gpt-5-mini", "o3-mini")


class LLMServer(Faults):
    """An OpenAI-compatible server on a background thread. See the module docstring.

    Options (all keyword-only):
      port: 0 picks a free port. latency: seconds added to every chat response.
      rpm, tpm, window: sliding-window rate limits (``limits.RateLimiter``);
        limit_kind ("sliding", "quantized", "bucket"), limit_reset ("window", "refill"),
        rpd and rpd_used shape them like other providers (see ``limits.RateLimiter``).
      api_key: if set, other ``Authorization: Bearer`` values get 401.
      error_rate: ``{500: 0.1, 429: 0.05}`` random faults (no retry-after; the rate-limit
        headers are honest, so a random 429 shows the limit is not reached), drawn from
        ``random.Random(seed)``: the same seed and request order give the same faults.
      answer: ``(messages, model) -> str`` replacing :func:`answers.answer_for`.
      models: names for ``GET /v1/models``; when given, other models get 404.
      tokens: ``text -> int`` counting prompt and answer tokens (default ``len // 4 + 1``
        per message; pass a tiktoken encoding's ``len(enc.encode(text))`` for real counts).
      prompt_cache: simulate OpenAI's automatic prompt caching: a prompt whose beginning
        (the schema, then the messages in order) was sent before is billed with
        ``usage.prompt_tokens_details.cached_tokens`` = that prefix's tokens, from 1,024
        tokens on, in steps of 128 (prefixes are compared every 256 characters).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        limit_kind: str = "sliding",
        limit_reset: str = "window",
        rpd: int | None = None,
        rpd_used: int = 0,
        api_key: str | None = None,
        error_rate: Mapping[int, float] | None = None,
        seed: int | None = 0,
        answer: AnswerFn | None = None,
        models: Iterable[str] | None = None,
        tokens: Callable[[str], int] | None = None,
        prompt_cache: bool = False,
    ) -> None:
        if latency < 0:
            raise ConfigError(f"latency must be >= 0 seconds, got {latency!r}")
        self.error_rate = dict(error_rate or {})
        if any(not 0 <= p <= 1 for p in self.error_rate.values()) or sum(self.error_rate.values()) > 1:
            raise ConfigError(f"error_rate probabilities must be in [0, 1] and sum to <= 1: {error_rate!r}")
        self.host, self.port, self.latency, self.api_key = host, port, latency, api_key
        self.limiter = RateLimiter(rpm, tpm, window, kind=limit_kind, reset=limit_reset, rpd=rpd, rpd_used=rpd_used)
        self.answer: AnswerFn = answer or answer_for
        self.tokens: Callable[[str], int] = tokens or estimate_tokens
        #: prefix hashes seen, for ``prompt_cache`` (None: off)
        self._prefixes: set[bytes] | None = set() if prompt_cache else None
        #: JSON answers for ``response_format`` requests, their faults and item counters.
        self.structured = StructuredAnswers()
        self.strict_models = models is not None
        self.models = tuple(models) if models is not None else DEFAULT_MODELS
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._counts: Counter[str] = Counter()
        self.requests = self.completed = self.rate_limited = self.injected = 0
        #: usage billed in the answers sent (``usage.prompt_tokens`` / ``completion_tokens`` summed)
        self.prompt_tokens = self.completion_tokens = 0
        #: of those prompt tokens, the ones billed as served from the prompt cache (``prompt_cache=True``)
        self.cached_tokens = 0
        #: ``{(METHOD, path): handler}``; add routes before or after ``start()``.
        self.routes: dict[tuple[str, str], Callable[[Request], Any]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._list_models,
            ("GET", "/_testing/stats"): self._stats,
        }
        #: The Batch API (``/v1/files``, ``/v1/batches``); its options and counters (testing/batches.py).
        self.batches = BatchEndpoints(self)
        #: ``/v1/embeddings`` and ``/v1/moderations`` (testing/endpoints.py): ``refuse_input(match)``.
        self.endpoints = ListEndpoints(self)
        self._conns: set[HTTPProtocol] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what an OpenAI client's ``base_url`` wants."""
        return self.url + "/v1"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The server's event loop while it runs (route handlers run on it)."""
        return self._loop

    def start(self) -> LLMServer:
        """Bind and serve on a daemon thread; returns once the port accepts connections."""
        if self._thread is not None:
            raise ServerStateError("LLMServer already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="LLMServer", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every connection (hung ones included) and stop the thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None

    def __enter__(self) -> LLMServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, on_ready: Callable[[LLMServer], None] | None = None) -> None:
        """Serve on the calling thread until SIGINT/SIGTERM (for ``python -m``)."""
        import signal

        def ready(loop: asyncio.AbstractEventLoop) -> None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, loop.stop)
            if on_ready is not None:
                on_ready(self)

        self._serve(ready)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        def on_ready(loop: asyncio.AbstractEventLoop) -> None:
            ready.set()

        try:
            self._serve(on_ready)
        except BaseException as exc:  # reported to start() in the calling thread
            failure.append(exc)
            ready.set()

    def _serve(self, on_ready: Callable[[asyncio.AbstractEventLoop], None]) -> None:
        loop = asyncio.new_event_loop()
        try:
            # backlog: a client opening hundreds of connections at once (concurrency=200)
            # overflows asyncio's default of 100; the dropped SYNs wait a 1 s retransmission.
            server = loop.run_until_complete(
                loop.create_server(lambda: HTTPProtocol(self.routes, self._conns), self.host, self.port, backlog=4096)
            )
            self.port = server.sockets[0].getsockname()[1]
            self._loop = loop
            on_ready(loop)
            try:
                loop.run_forever()
            finally:
                server.close()
                for conn in list(self._conns):
                    conn.close()
                loop.run_until_complete(server.wait_closed())
                for _ in range(3):  # let connection_lost callbacks close the sockets
                    loop.run_until_complete(asyncio.sleep(0))
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._loop = None
            loop.close()

    # -- counters -----------------------------------------------------------------------
    @property
    def prompt_counts(self) -> Counter[str]:
        """A copy of ``{last user message: successful answers}``."""
        with self._lock:
            return Counter(self._counts)

    def count(self, prompt: str) -> int:
        """Successful answers whose last user message contains ``prompt`` (or equals it)."""
        with self._lock:
            return sum(n for key, n in self._counts.items() if prompt in key)

    def reset_counters(self) -> None:
        """Zero ``requests``, ``completed``, ``rate_limited``, ``injected``, the token totals and ``prompt_counts``."""
        with self._lock:
            self._counts.clear()
            self.requests = self.completed = self.rate_limited = self.injected = 0
            self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.structured.reset()

    # -- endpoints ----------------------------------------------------------------------
    def check_auth(self, request: Request) -> Response | None:
        """The 401 response if ``api_key`` is set and the request's bearer differs."""
        if self.api_key is None or request.headers.get("authorization") == "Bearer " + self.api_key:
            return None
        return error_response(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key",
            headers=self.limiter.headers(),
        )  # fmt: skip

    def _chat(self, request: Request) -> Response | asyncio.Future[Response]:
        with self._lock:
            self.requests += 1
        resp = self._chat_response(request)
        if resp is None:  # hang
            return asyncio.get_running_loop().create_future()
        if resp is RESET:
            return resp
        if self.latency > 0:
            return later(self.latency, resp)
        return resp

    def _chat_response(self, request: Request) -> Response | None:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(request.body)
            if not isinstance(body, dict):
                raise InvalidRequest("The request body must be a JSON object.")
            if body.get("stream"):
                raise InvalidRequest("stream=true is not supported by the pandas-llm test server.", "stream")
            if self.strict_models and body.get("model") not in self.models:
                return error_response(
                    404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                    "invalid_request_error", "model_not_found", "model", self.limiter.headers(),
                )  # fmt: skip
            done = complete(body, self.answer, self.structured, self.tokens)
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"Invalid JSON body: {exc}", headers=self.limiter.headers())
        except InvalidRequest as exc:
            return error_response(400, str(exc), code=exc.code, param=exc.param, headers=self.limiter.headers())
        if self._faults:
            fault = self._take_fault(done.prompt)
            if fault is not None and fault.shape is not None:
                answer = self._record(body["model"], done, body)
                return Response(200, SHAPES[fault.shape](answer), self.limiter.headers(), "text/event-stream")
            if fault is not None:
                if fault.reset:
                    return RESET
                return None if fault.hang else self._fault_response(fault, self.limiter.headers())
        if self.error_rate:
            random_fault = self._random_fault(self.limiter.headers())
            if random_fault is not None:
                return random_fault
        decision = self.limiter.acquire(done.rate_tokens)
        if not decision.allowed:
            with self._lock:
                self.rate_limited += 1
            return rate_limit_response(body["model"], decision)
        return Response(200, orjson.dumps(self._record(body["model"], done, body)), decision.headers)

    def chat_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The 200 response body for one chat request body, counted as a successful answer
        (no limits, faults or latency): the seam for a Batch API. Raises ``InvalidRequest``."""
        done = complete(body, self.answer, self.structured, self.tokens)
        return self._record(body["model"], done, body)

    def _cached(self, body: Mapping[str, Any], n_prompt: int) -> int:
        """Tokens of the longest prompt prefix sent before (>= 1,024, in steps of 128)."""
        parts = [str(body["response_format"])] if self.structured.handles(body) else []
        parts += [f"{m.get('role')}:{message_text(m.get('content'))}" for m in body["messages"]]
        assert self._prefixes is not None
        return cached_tokens("\n".join(parts), n_prompt, self._prefixes, self._lock, self.tokens)

    def _record(self, model: str, done: Completion, body: Mapping[str, Any]) -> dict[str, Any]:
        cached = self._cached(body, done.prompt_tokens) if self._prefixes is not None else 0
        with self._lock:
            self.completed += 1
            self._counts[done.prompt] += 1
            self.prompt_tokens += done.prompt_tokens
            self.completion_tokens += done.completion_tokens
            self.cached_tokens += cached
        usage = {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        if done.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": done.reasoning_tokens}
        return {
            "id": f"chatcmpl-{next(self._ids):012d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.content},
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": usage,
        }

    def _list_models(self, request: Request) -> Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "pandas-llm"} for m in self.models]
        return json_response(200, {"object": "list", "data": data})

    def _stats(self, request: Request) -> Response:
        with self._lock:
            stats: dict[str, float] = {
                "requests": self.requests,
                "completed": self.completed,
                "rate_limited": self.rate_limited,
                "injected": self.injected,
            }
        stats["cpu_seconds"] = time.process_time()
        return json_response(200, stats)
