"""One exception tree for pandas-llm.

Foreign exceptions (aiohttp, openai, sqlite3) are mapped to these at the backend
or cache boundary only, with ``raise ... from exc`` so the original stays visible.

    PandasLLMError
    ├── ConfigError            bad arguments; raised before any request is sent
    │   └── TemplateError      a template names an unknown column, or uses a forbidden field
    ├── APIError               a request failed (``status`` holds the HTTP status, if any)
    │   ├── RetryableError     408 / 409 / 429 / 5xx, timeouts, connection errors
    │   │   └── RateLimitError 429: every worker pauses, not only the one that got it
    │   ├── BadRequestError    400 and other answers that are that row's own fault
    │   │                      (``RequestError``: its old name, deprecated)
    │   └── FatalAPIError      401 / 403 / 404: the whole run stops at once
    │       ├── QuotaError     402, insufficient_quota, a daily quota or a limit of 0, a
    │       │                  retry-after too long to wait: ``retry_after`` says when to come back
    │       └── RequestShapeError  the endpoint refuses the request's shape (a parameter, a
    │                          value, the response format) on every row: change the call
    ├── LocalServerError       pandas_llm.local: the local model server is missing or did not start
    └── StoreError             the cache file cannot be written (locked, read-only, I/O error)

Example:
    >>> from pandas_llm._errors import RateLimitError, RetryableError
    >>> issubclass(RateLimitError, RetryableError)
    True
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Iterable
from typing import Any

__all__ = [
    "PandasLLMError",
    "ConfigError",
    "TemplateError",
    "APIError",
    "RetryableError",
    "RateLimitError",
    "BadRequestError",
    "FatalAPIError",
    "QuotaError",
    "RequestShapeError",
    "LocalServerError",
    "redact",
    "StoreError",
]


class PandasLLMError(Exception):
    """Base of every error pandas-llm raises on purpose."""


#: Credentials in error texts: bearer tokens, OpenAI-style keys (sk-..., sk-proj-...), and
#: key headers or fields (Azure's ``api-key``, ``x-api-key``, ``"api_key": "..."``).
_SECRET_PATTERNS = re.compile(
    r"""(?ix)
    (?P<bearer>\bbearer\s+)(?!\[redacted\])[^\s'",;}\]]+
    | \bsk-[a-z0-9_\-]{6,}
    | (?P<header>\b(?:x-)?api[-_]?key\b['"]?\s*[:=]\s*['"]?)(?!\[redacted\])[^\s'",;}\]]{8,}
    """
)
#: Keys this process was given (api_key=, a client's key): masked wherever they appear.
_KNOWN_SECRETS: set[str] = set()
_ENV_KEYS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
REDACTED = "[redacted]"
_MIN_SECRET = 8  # shorter "keys" (api_key="x" for a local server) are placeholders, not secrets


def remember_secret(key: Any) -> None:
    """Mask ``key`` in every error text from now on (called where a backend takes a key)."""
    if isinstance(key, str) and len(key) >= _MIN_SECRET:
        _KNOWN_SECRETS.add(key)


def redact(text: Any, secrets: Iterable[str] = ()) -> Any:
    """``text`` with API keys masked: the keys given to this process, ``Bearer ...``,
    ``sk-...`` keys and ``api-key: ...`` headers. Applied where an error becomes a message
    or a stored record, so a key echoed by a server never reaches the cache or the screen.

        >>> redact("401: Incorrect API key provided: sk-proj-abc123XYZ. Authorization: Bearer tok-1")
        '401: Incorrect API key provided: [redacted]. Authorization: Bearer [redacted]'
    """
    if not isinstance(text, str) or not text:
        return text
    known = [*_KNOWN_SECRETS, *secrets, *(os.environ.get(name) for name in _ENV_KEYS)]
    keys = {k for k in known if k and len(k) >= _MIN_SECRET}
    forms = keys | {f(k) for k in keys for f in (urllib.parse.quote, urllib.parse.quote_plus, _quote_all)}
    for key in sorted(forms, key=len, reverse=True):  # the key as is and URL-encoded (in a query string)
        if key in text:
            text = text.replace(key, REDACTED)
    return _SECRET_PATTERNS.sub(_mask, text)


def _quote_all(key: str) -> str:
    return urllib.parse.quote(key, safe="")


def _mask(m: re.Match) -> str:
    prefix = m.group("bearer") or m.group("header") or ""
    return prefix + REDACTED


class ConfigError(PandasLLMError, ValueError):
    """An argument is wrong; nothing has been sent or paid for."""


class TemplateError(ConfigError):
    """A prompt template cannot be rendered against this frame."""


class APIError(PandasLLMError):
    """A request to the model endpoint failed.

    ``usage``: the tokens the endpoint reported for it (billed although no answer came: a
    200 with ``choices: []``, an error object with ``usage``), a ``Completion`` with no
    text, or None; the run counts them in its tokens, cost and ``max_cost``.
    """

    usage: Any = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, param: str | None = None):
        super().__init__(redact(message))
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
    """A transient failure: the request may succeed if sent again later.

    ``maybe_billed`` is True when the request was sent and its answer lost (a timeout, a
    connection dropped after sending, a gateway's 504): the provider may bill it, so
    ``max_cost`` counts it at its worst case.
    """

    maybe_billed = False

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


class BadRequestError(APIError):
    """The endpoint refused this one request (HTTP 400 and the like); not retried.

    OpenAI's name for a 400. Its old name ``RequestError`` is a deprecated alias: it read as
    httpx's ``RequestError``, which means the opposite (the request never got an answer)."""


#: Old names still importable, with a DeprecationWarning: ``{old: (new name, object)}``.
DEPRECATED = {"RequestError": ("BadRequestError", BadRequestError)}


def deprecated_name(module: str, name: str) -> Any:
    """The object a deprecated name stands for, with a DeprecationWarning (a module's ``__getattr__``)."""
    if name not in DEPRECATED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    import warnings

    new, obj = DEPRECATED[name]
    if sys._getframe(2).f_code.co_name == "_handle_fromlist":
        return obj  # ``from pandas_llm import X`` asks twice (hasattr, then the import): warn once
    warnings.warn(
        f"{module}.{name} is deprecated: use {module}.{new} (the endpoint refused this one request, HTTP 400)",
        DeprecationWarning,
        stacklevel=3,
    )
    return obj


def sentence(text: str) -> str:
    """``text`` ended as a sentence (a period added unless it ends in ``.``, ``!`` or ``?``), so
    that the sentence after it does not run into it.

    >>> sentence("Used 200 of 200 requests per day"), sentence("Too many requests.")
    ('Used 200 of 200 requests per day.', 'Too many requests.')
    """
    text = text.rstrip()
    return text if not text or text[-1] in ".!?" else text + "."


def __getattr__(name: str) -> Any:
    return deprecated_name(__name__, name)


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


class StoreError(PandasLLMError):
    """The SQLite sidecar could not be written; ``path`` names it, ``busy`` is True when
    another process held its lock. Answers already received are kept in the result."""

    def __init__(self, message: str, *, path: str | None = None, busy: bool = False):
        super().__init__(message)
        self.path = path
        self.busy = busy


def find_stack_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside pandas_llm, so a
    notebook shows it for the user's cell whatever the depth of our own call chain (as pandas'
    ``find_stack_level``). A coroutine verb (``await df.llm.amap(...)``) resumes under the
    event loop, not under its caller: asyncio's own frames are skipped too, up to the line that
    runs the loop (``asyncio.run(...)``)."""
    import asyncio
    import sys

    ours = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(asyncio.__file__) + os.sep)
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None:
        if not frame.f_code.co_filename.startswith(ours):
            break
        frame, level = frame.f_back, level + 1
    return level
