"""One exception tree for pandas-llm.

Foreign exceptions (aiohttp, openai, sqlite3) are mapped to these at the backend
or cache boundary only, with ``raise ... from exc`` so the original stays visible.

    PandasLLMError
    ├── ConfigError            bad arguments; raised before any request is sent
    │   └── TemplateError      a template names an unknown column, or uses a forbidden field
    ├── APIError               a request failed (``status`` holds the HTTP status, if any)
    │   ├── RetryableError     408 / 409 / 429 / 5xx, timeouts, connection errors
    │   │   └── RateLimitError 429: every worker pauses, not only the one that got it
    │   ├── RequestError       400 and other answers that are that row's own fault
    │   └── FatalAPIError      401 / 403 / 404: the whole run stops at once
    │       ├── QuotaError     402, insufficient_quota, a daily quota or a limit of 0, a
    │       │                  retry-after too long to wait: ``retry_after`` says when to come back
    │       └── RequestShapeError  the endpoint refuses the request's shape (a parameter, a
    │                          value, the response format) on every row: change the call
    └── LocalServerError       pandas_llm.local: the local model server is missing or did not start

Example:
    >>> from pandas_llm.errors import RateLimitError, RetryableError
    >>> issubclass(RateLimitError, RetryableError)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PandasLLMError",
    "ConfigError",
    "TemplateError",
    "APIError",
    "RetryableError",
    "RateLimitError",
    "RequestError",
    "FatalAPIError",
    "QuotaError",
    "RequestShapeError",
    "LocalServerError",
]


class PandasLLMError(Exception):
    """Base of every error pandas-llm raises on purpose."""


class ConfigError(PandasLLMError, ValueError):
    """An argument is wrong; nothing has been sent or paid for."""


class TemplateError(ConfigError):
    """A prompt template cannot be rendered against this frame."""


class APIError(PandasLLMError):
    """A request to the model endpoint failed."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param  # the request parameter the endpoint named, if it did (OpenAI's error.param)

    @property
    def kind(self) -> str:
        """Short label used to count failures by kind ('http_500', 'timeout', ...)."""
        if self.status is not None:
            return f"http_{self.status}"
        return self.code or type(self).__name__


class RetryableError(APIError):
    """A transient failure: the request may succeed if sent again later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: Any = None,
        param: str | None = None,
    ):
        super().__init__(message, status=status, code=code, param=param)
        self.retry_after = retry_after
        self.headers = headers  # the answer's headers, if any (x-ratelimit-* on a 429)


class RateLimitError(RetryableError):
    """HTTP 429: the account's rate limit was hit."""


class RequestError(APIError):
    """The endpoint refused this one request (HTTP 400 and the like); not retried."""


class FatalAPIError(APIError):
    """Authentication, permission, wrong URL or model, or no quota: nothing else can succeed."""


class QuotaError(FatalAPIError):
    """Out of credit or quota (HTTP 402, ``insufficient_quota``, a daily quota, a limit of 0),
    or a ``retry-after`` longer than the run may wait: no retry within the run can succeed.

    ``retry_after`` is the seconds the provider asked to wait (None when it did not say);
    answered rows are in the cache, so running the same call after that resumes the run.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None):  # fmt: skip
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class RequestShapeError(FatalAPIError):
    """The endpoint refuses the request itself (an unsupported parameter or value, the
    ``json_schema`` response format) the same way on the first rows of a run, so every
    other row would be refused too; the message says what to change."""


class LocalServerError(PandasLLMError, RuntimeError):
    """The local model server (``pandas_llm.local``) is not installed, or did not start."""
