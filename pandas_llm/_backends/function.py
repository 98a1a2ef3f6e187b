"""Any function as the backend: ``client=lambda messages, **params: "..."``.

For providers without an OpenAI-compatible endpoint. An async function runs on the
event loop; a sync one in a pool of ``concurrency`` threads. It returns the answer text
(or a Completion, to report usage; it is judged like any answer: only finish_reason
"stop" with content is one). Caching, dedup, retries and progress work the same.
Exceptions it raises are that row's error, except pandas_llm's RetryableError / FatalAPIError
and the usual transient ones (TimeoutError, ConnectionError), which are retried or stop the run
(connection errors in a row with no answer between stop it as a dead endpoint, as for HTTP).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from .._errors import BadRequestError, RetryableError
from .base import Completion
from .errors import map_errors

__all__ = ["FunctionBackend"]


class FunctionBackend:
    def __init__(self, fn: Callable[..., Any], *, concurrency: int, timeout: float):
        self._fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        self._pool = None if self._async else ThreadPoolExecutor(concurrency, thread_name_prefix="pandas-llm-fn")
        self._timeout = timeout

    async def complete(self, body: bytes) -> Completion:
        params = orjson.loads(body)
        messages = params.pop("messages")
        started = self._async  # a sync function starts only when a thread of the pool is free

        def call() -> Any:
            nonlocal started
            started = True
            return self._fn(messages, **params)

        with map_errors("function", "the client function"):  # the codes every backend uses
            try:
                async with asyncio.timeout(self._timeout):
                    if self._async:
                        out = await self._fn(messages, **params)
                    else:
                        out = await asyncio.get_running_loop().run_in_executor(self._pool, call)
            except TimeoutError as exc:
                if not started:  # timed out waiting for a free thread: never handed to the function, not billed
                    raise RetryableError(f"no free thread within the timeout ({self._timeout:g} s): the function "
                                         "was not called", code="timeout") from exc  # fmt: skip
                raise
        if isinstance(out, Completion):
            return out
        if out is not None and not isinstance(out, str):
            raise BadRequestError(f"the client function returned {type(out).__name__}, expected str", code="bad_return")
        return Completion(out, "stop")

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
