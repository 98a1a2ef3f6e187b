"""Mapping HTTP failures to pandas_llm._errors, shared by the HTTP and openai-client backends.

Besides the status, the body decides a few cases that would not clear by retrying:
HTTP 402 (out of credit, as DeepSeek sends) and ``insufficient_quota`` are a QuotaError;
so is a 429 whose body says the limit is 0 (Gemini's free tier for a model it excludes),
or names a daily quota without saying when to retry. A 5xx whose message names
``response_format`` / ``json_schema`` (llama.cpp answers 500 to ``json_schema``) is the
request's fault: a BadRequestError, not retried. An HTTP 200 carrying an error object is
the error it names (``error_in_answer``).

Every backend gives a failure without an HTTP answer one of two codes, which the engine
counts alike: ``code="connection"`` (refused, reset, unreachable, DNS, the connection
closed before a whole answer) and ``code="timeout"`` (no answer within ``timeout``).

``map_errors(via, endpoint, model)`` is the one place a foreign failure becomes ours: every
backend (and the Batch API client) runs its call inside it, naming the library it speaks
(``via``: "aiohttp", "wire", "openai", "function" or "transport"); the table of that library maps each
foreign exception to pandas_llm's, ``raise ... from`` the original. pandas_llm's own errors
pass through, and an exception its table does not name propagates unchanged.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .._errors import APIError, BadRequestError, FatalAPIError, QuotaError, RateLimitError, RetryableError, sentence
from .base import billed_usage
from .headers import hinted_wait, retry_after

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600)) - {501}  # 501: not implemented, ever
FATAL_STATUS = frozenset({401, 403, 404})
#: A gateway's timeout (504, Cloudflare's 524): it gave up waiting while the model behind it
#: may still be generating, and billing. Other 5xx say the server failed: not billed.
BILLED_STATUS = frozenset({504, 524})


_CONNECTION_KINDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}


def connection_error_text(endpoint: str, exc: BaseException) -> str:
    """``connection error to URL: <kind>: <exc>``, the kind named the same on every event loop
    and backend (asyncio says "Connect call failed", uvloop "Connection refused")."""
    kind = None
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; never loop on a cycle
        if seen is None or kind is not None:
            break
        if isinstance(seen, socket.gaierror):
            kind = "host name not resolved (DNS)"
        elif isinstance(seen, OSError):
            kind = _CONNECTION_KINDS.get(seen.errno or 0)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "os_error", None)
    return f"connection error to {endpoint}: {kind + ': ' if kind else ''}{exc}"


def lost(message: str, code: str) -> RetryableError:
    """A request sent whose answer was lost (timed out, dropped): retryable, possibly billed."""
    exc = RetryableError(message, code=code)
    exc.maybe_billed = True
    return exc


def error_for_status(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None,
    *,
    endpoint: str,
    model: str | None,
) -> APIError:
    """The pandas-llm error for an HTTP error answer; the tokens its body reports billed, if
    any, in its ``usage``."""
    exc = _for_status(status, body, headers, endpoint=endpoint, model=model)
    exc.usage = billed_usage(body, headers)
    return exc


def _for_status(
    status: int, body: Any, headers: Mapping[str, str] | None, *, endpoint: str, model: str | None
) -> APIError:
    detail, code, param = _error_detail(body)
    where = f"{endpoint} (model {model!r})" if model else endpoint
    if status == 402 or (status == 429 and code == "insufficient_quota"):
        return QuotaError(
            f"HTTP {status}{' insufficient_quota' if code == 'insufficient_quota' else ''} from {where}: the "
            f"account has no credit left ({detail}). Add credit, then run the same call again: answered rows "
            "come from the cache.",
            status=status,
            code=code,
        )
    if status == 429 and detail.startswith("Request too large"):
        # larger than the whole per-minute budget: no wait makes it fit
        return BadRequestError(
            f"HTTP 429 from {where}: {sentence(detail)} Shorten the prompt or lower max_tokens.",
            status=status,
            code=code,
        )
    if status == 429:
        wait = retry_after(headers)
        if wait is None:
            wait = hinted_wait(detail)
        if _LIMIT_ZERO.search(detail):
            return QuotaError(
                f"HTTP 429 from {where}: {sentence(detail)} The limit is 0: this key, plan or model has no quota "
                "for these requests, so no wait clears it; use another model or plan.",
                status=status,
                code=code,
            )
        if wait is None and _PER_DAY.search(detail):
            return QuotaError(
                f"HTTP 429 from {where}: {sentence(detail)} A daily quota is spent and the provider did not say when it "
                "resets: run the same call again after the reset (answered rows come from the cache).",
                status=status,
                code=code,
            )
        return RateLimitError(
            f"HTTP 429 rate limited by {where}: {detail}",
            status=status,
            code=code,
            retry_after=wait,
            headers=headers,
        )
    if status >= 500 and _RESPONSE_FORMAT.search(detail):
        # llama.cpp answers a json_schema it does not support with 500: every row would get it
        return BadRequestError(
            f"HTTP {status} from {where}: {detail}", status=status, code="unsupported_response_format",
            param="response_format",
        )  # fmt: skip
    if status == 501:
        return FatalAPIError(
            f"HTTP 501 from {where}: the server does not implement this endpoint; retrying cannot help. {detail}",
            status=status,
            code=code,
        )
    if status in RETRYABLE_STATUS:
        exc = RetryableError(
            f"HTTP {status} from {where}: {detail}", status=status, code=code, retry_after=retry_after(headers)
        )
        exc.maybe_billed = status in BILLED_STATUS
        return exc
    if status in (400, 422) and content_refusal(body, code, detail):
        return BadRequestError(
            f"HTTP {status} from {where}: the provider refused this row's content: {detail}",
            status=status, code="content_filter", param=param,
        )  # fmt: skip
    if status == 401:
        return FatalAPIError(
            f"HTTP 401 from {where}: the API key was refused. Check api_key= or OPENAI_API_KEY "
            f"for base_url {endpoint}. {detail}",
            status=status,
            code=code,
        )
    if status == 403:
        return FatalAPIError(
            f"HTTP 403 from {where}: this key may not use this model or endpoint. {detail}",
            status=status,
            code=code,
        )
    if status == 404:
        return FatalAPIError(
            f"HTTP 404 from {where}: wrong base_url or unknown model. Check base_url={endpoint!r} "
            f"(it usually ends in /v1) and model={model!r}. {detail}",
            status=status,
            code=code,
        )
    if param is None and _RESPONSE_FORMAT.search(detail):
        param = "response_format"
    return BadRequestError(f"HTTP {status} from {where}: {detail}", status=status, code=code, param=param)


#: Error codes and types that say which HTTP status an error object stands for (an error
#: object in an HTTP 200, as some gateways send, is judged as that status).
_CODE_STATUS = {
    "rate_limit_exceeded": 429, "insufficient_quota": 429, "requests": 429, "tokens": 429,
    "server_error": 500, "internal_server_error": 500, "internal_error": 500, "api_error": 500,
    "bad_gateway": 502, "overloaded_error": 503, "overloaded": 503, "service_unavailable": 503,
    "timeout": 408, "invalid_api_key": 401, "authentication_error": 401, "permission_denied": 403,
    "permission_error": 403, "model_not_found": 404, "not_found_error": 404,
    "invalid_request_error": 400, "context_length_exceeded": 400,
}  # fmt: skip


#: Error codes (OpenAI, Azure OpenAI and gateways) that refuse a request for its content:
#: that row's refusal (status ``content_filter``), never a fault of the request's shape.
CONTENT_CODES = frozenset({
    "content_filter", "content_policy_violation", "responsibleaipolicyviolation", "invalid_prompt",
    "content_management_policy", "jailbreak", "prompt_blocked", "moderation_blocked", "safety",
    "content_filtered", "blocked_by_content_filter", "responsible_ai_policy_violation",
})  # fmt: skip
_CONTENT_MESSAGE = re.compile(
    r"content (?:management |filter|policy)|content_filter|usage polic|flagged as potentially|"
    r"safety system|ResponsibleAIPolicyViolation",
    re.I,
)


def content_refusal(body: Any, code: str | None, detail: str) -> bool:
    """True if an error answer refuses the request for its content (Azure's ``content_filter``
    with ``innererror.code = ResponsibleAIPolicyViolation``, OpenAI's ``invalid_prompt`` /
    ``content_policy_violation``, or a message naming a content policy)."""
    codes = {code}
    err = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(err, Mapping):
        inner = err.get("innererror") or err.get("inner_error")
        codes |= {err.get("code"), err.get("type"), inner.get("code") if isinstance(inner, Mapping) else None}
    if any(isinstance(c, str) and c.lower() in CONTENT_CODES for c in codes):
        return True
    return bool(_CONTENT_MESSAGE.search(detail))


def error_in_answer(body: Mapping[str, Any], headers: Mapping[str, str] | None, *, endpoint: str,
                    model: str | None) -> APIError:  # fmt: skip
    """The error an HTTP 200 body carries instead of a completion (``{"error": {...}}``,
    or vLLM's ``{"object": "error", ...}``).

    It is judged as the HTTP status its ``code`` (or ``status``) is, or the status its
    ``code`` / ``type`` names (``server_error``: 500, ``rate_limit_exceeded``: 429, ...):
    retried if that status is, fatal if that status is. Without such evidence it is that
    row's error (BadRequestError, with the server's message), not retried within the run.
    """
    err = body.get("error")
    err = err if isinstance(err, Mapping) else body
    status = None
    for field in ("code", "status", "status_code"):
        value = err.get(field)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and 400 <= value <= 599:
            status = value
            break
    if status is None:
        for field in ("code", "type"):
            value = err.get(field)
            if isinstance(value, str) and value.lower() in _CODE_STATUS:
                status = _CODE_STATUS[value.lower()]
                break
    if status is None:
        detail, code, param = _error_detail(body)
        where = f"{endpoint} (model {model!r})" if model else endpoint
        refused = BadRequestError(
            f"HTTP 200 from {where} carried an error instead of an answer: {detail}",
            code=code if isinstance(code, str) else "error_in_answer", param=param,
        )  # fmt: skip
        refused.usage = billed_usage(body, headers)
        return refused
    exc = error_for_status(status, body, headers, endpoint=endpoint, model=model)
    message = str(exc).replace(f"HTTP {status}", f"HTTP 200 with an error object (code {status})", 1)
    exc.args = (message,)
    return exc


_RESPONSE_FORMAT = re.compile(r"response_format|json_schema|response format", re.I)
_LIMIT_ZERO = re.compile(r"\blimit:?\s*0(?![\d.])", re.I)  # "limit: 0", "Limit 0"
_PER_DAY = re.compile(r"per day|\bdaily\b|\bRPD\b|\bTPD\b|PerDay", re.I)


def _error_detail(body: Any) -> tuple[str, str | None, str | None]:
    """``(message, code, param)`` of an error body."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            code = err.get("code") or err.get("type")
            param = err.get("param")
            return (
                str(err.get("message") or err),
                code if isinstance(code, str) else None,
                param if isinstance(param, str) else None,
            )
        if isinstance(err, str):
            return err, None, None
        if body.get("object") == "error" and body.get("message"):  # vLLM
            kind = body.get("type")
            return str(body["message"]), kind if isinstance(kind, str) else None, None
        return str(body)[:500], None, None
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    return str(body)[:500], None, None


def from_openai(exc: Exception, *, endpoint: str, model: str | None) -> APIError | None:
    """Our error for an exception the openai SDK raised (None if it is not the SDK's)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        try:
            body: Any = exc.response.json()
        except Exception:
            body = exc.message
        return error_for_status(exc.status_code, body, exc.response.headers, endpoint=endpoint, model=model)
    # Only a failure to connect proves the request was never sent; any other lost answer may be billed.
    unsent = type(exc.__cause__).__name__ in ("ConnectError", "ConnectTimeout")
    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        message = f"no answer within the timeout from {endpoint}"
        return RetryableError(message, code="timeout") if unsent else lost(message, "timeout")
    if isinstance(exc, openai.APIConnectionError):
        message = connection_error_text(endpoint, exc)
        return RetryableError(message, code="connection") if unsent else lost(message, "connection")
    return None


class AnswerLost(Exception):
    """Raised by a transport when the request was written and its answer did not (all) come."""


#: How a foreign exception becomes ours: ``(exc, endpoint, model) -> APIError`` (None: leave it).
Rule = Callable[[Any, str, "str | None"], "APIError | None"]
Via = Literal["aiohttp", "wire", "openai", "function", "transport"]


def _unsent(exc: BaseException, endpoint: str, model: str | None) -> APIError:
    """Could not connect: nothing was sent, so nothing can be billed."""
    return RetryableError(connection_error_text(endpoint, exc), code="connection")


def _dropped(exc: BaseException, endpoint: str, model: str | None) -> APIError:
    """Dropped after sending: the server may have run (and billed) the request."""
    return lost(connection_error_text(endpoint, exc), "connection")


def _timed_out(exc: BaseException, endpoint: str, model: str | None) -> APIError:
    return lost(f"no answer within the timeout from {endpoint}", "timeout")


def _openai(exc: Exception, endpoint: str, model: str | None) -> APIError | None:
    return from_openai(exc, endpoint=endpoint, model=model)


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_FUNCTION: dict[type[BaseException], Rule] = {
    TimeoutError: lambda exc, e, m: lost(_named(exc), "timeout"),  # it may have paid for a call it did not finish
    ConnectionError: lambda exc, e, m: RetryableError(_named(exc), code="connection"),
    Exception: lambda exc, e, m: BadRequestError(_named(exc), code=type(exc).__name__),  # that row's error
}
#: A transport that answers in process (a mock): its TimeoutError is a lost answer, its
#: ConnectionError a refused connection; anything else is a bug of its own and propagates.
_TRANSPORT: dict[type[BaseException], Rule] = {TimeoutError: _timed_out, ConnectionError: _unsent}
#: wire: ``OSError`` comes from connecting only (a request written and lost is AnswerLost).
_WIRE: dict[type[BaseException], Rule] = {AnswerLost: _dropped, OSError: _unsent}


def _aiohttp() -> dict[type[BaseException], Rule]:
    import aiohttp

    return {aiohttp.ClientConnectorError: _unsent, TimeoutError: _timed_out, aiohttp.ClientError: _dropped}


def _openai_sdk() -> dict[type[BaseException], Rule]:
    import openai

    return {openai.OpenAIError: _openai}


#: The rules of each library, most specific first (a library is imported only when a failure needs its rules).
_TABLES: dict[str, Callable[[], dict[type[BaseException], Rule]]] = {
    "wire": lambda: _WIRE,
    "function": lambda: _FUNCTION,
    "transport": lambda: _TRANSPORT,
    "aiohttp": _aiohttp,
    "openai": _openai_sdk,
}


class map_errors:  # noqa: N801 - used as a function: ``with map_errors(...)``
    """Run a backend's call, turning the failures of the library ``via`` into pandas_llm's errors.

    A class, not a generator-based context manager: it wraps every request, and entering and
    leaving it costs a few attribute look-ups instead of a generator's frames.

    >>> with map_errors("function", "http://localhost:8000/v1"):
    ...     raise KeyError("choices")
    Traceback (most recent call last):
    pandas_llm._errors.BadRequestError: KeyError: 'choices'
    """

    __slots__ = ("via", "endpoint", "model")

    def __init__(self, via: Via, endpoint: str, model: str | None = None):
        self.via, self.endpoint, self.model = via, endpoint, model

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, APIError):
            return  # no failure, a cancellation or interrupt, or already ours: it propagates as is
        for cls, rule in _TABLES[self.via]().items():
            if isinstance(exc, cls):
                mapped = rule(exc, self.endpoint, self.model)
                if mapped is None:
                    break
                raise mapped from exc
