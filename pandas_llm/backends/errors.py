"""Mapping HTTP failures to pandas_llm.errors, shared by the HTTP and openai-client backends."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import APIError, FatalAPIError, RateLimitError, RequestError, RetryableError

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
FATAL_STATUS = frozenset({401, 403, 404})


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds), if present."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date; fall back to our own backoff
    return None


def error_for_status(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None,
    *,
    endpoint: str,
    model: str | None,
) -> APIError:
    """The pandas-llm error for an HTTP error answer."""
    detail, code = _error_detail(body)
    where = f"{endpoint} (model {model!r})" if model else endpoint
    if status == 429 and code == "insufficient_quota":
        return FatalAPIError(
            f"HTTP 429 insufficient_quota from {where}: the account has no credit left. {detail}",
            status=status,
            code=code,
        )
    if status == 429 and detail.startswith("Request too large"):
        # larger than the whole per-minute budget: no wait makes it fit
        return RequestError(f"HTTP 429 from {where}: {detail} Shorten the prompt or lower max_tokens.", status=status, code=code)
    if status == 429:
        return RateLimitError(
            f"HTTP 429 rate limited by {where}: {detail}",
            status=status,
            code=code,
            retry_after=retry_after(headers),
            headers=headers,
        )
    if status in RETRYABLE_STATUS:
        return RetryableError(
            f"HTTP {status} from {where}: {detail}", status=status, code=code, retry_after=retry_after(headers)
        )
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
    return RequestError(f"HTTP {status} from {where}: {detail}", status=status, code=code)


def _error_detail(body: Any) -> tuple[str, str | None]:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            return str(err.get("message") or err), err.get("code") or err.get("type")
        if isinstance(err, str):
            return err, None
        return str(body)[:500], None
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    return str(body)[:500], None


def from_openai(exc: Exception, *, endpoint: str, model: str | None) -> APIError | None:
    """Our error for an exception the openai SDK raised (None if it is not the SDK's)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        try:
            body: Any = exc.response.json()
        except Exception:
            body = exc.message
        return error_for_status(exc.status_code, body, exc.response.headers, endpoint=endpoint, model=model)
    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return RetryableError(f"no answer within the timeout from {endpoint}", code="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"connection error to {endpoint}: {exc}", code="connection")
    return None
