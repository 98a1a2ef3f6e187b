"""When a run stops early: errors that will not clear by retrying or by sending more rows.

- The same refusal of the request's shape on the first answers of a run (``ShapeWatch``):
  an unsupported parameter or value, or the ``json_schema`` response format, is the same
  for every row (they share their parameters), so the run stops at the first such answer
  (OpenAI's ``unsupported_parameter`` / ``unsupported_value`` codes, a ``json_schema``
  refusal) or when the first ``SAME`` refusals with no answer between them are identical
  (any other 400). A refusal that names the row's own content (too long for the context)
  never counts: it stays that row's error. The error says what to change.
- A 429 (or a 503) whose ``retry-after`` asks for a wait the run will not make
  (``quota_stop``): longer than ``MAX_RETRY_AFTER`` (10 min) when the run has no
  ``deadline``. With a ``deadline`` the engine stops sending when a 429's wait ends after
  it (rows not sent: status ``deadline``). Quotas the body names (402, a limit of 0, a
  daily quota) are decided where errors are mapped: backends/errors.py.

    >>> from pandas_llm._errors import BadRequestError
    >>> w = ShapeWatch()
    >>> e = BadRequestError("HTTP 400: Unsupported parameter: 'max_tokens'", status=400,
    ...                  code="unsupported_parameter", param="max_tokens")
    >>> type(w.refused(e, b"{}")).__name__
    'RequestShapeError'
"""

from __future__ import annotations

import re
import time
from collections import Counter

from .._errors import (
    BadRequestError,
    FatalAPIError,
    QuotaError,
    RateLimitError,
    RequestShapeError,
    RetryableError,
    sentence,
)

__all__ = ["ShapeWatch", "quota_stop", "come_back", "row_status", "MAX_RETRY_AFTER"]

#: The longest retry-after a run without a ``deadline`` waits for (seconds): a longer one
#: is a quota, not a rate limit, and stops the run (QuotaError).
MAX_RETRY_AFTER = 600.0

#: Identical refusals, with no answer before them, that stop a run.
SAME = 3

_SHAPE_CODES = {"unsupported_parameter", "unsupported_value", "unsupported_response_format"}
_ROW_SPECIFIC = re.compile(r"context|too long|too large|maximum.*tokens|tokens.*maximum|string_above_max_length", re.I)
_CONTENT = {"content_filter", "context_length_exceeded", "string_above_max_length"}
_CONTENT_MESSAGE = re.compile(r"content (?:management |filter|policy)|usage polic|flagged|safety system|"
                              r"ResponsibleAIPolicyViolation|\bprompt\b.*\b(?:triggering|violat)", re.I)  # fmt: skip
_SAMPLING = {"temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
             "logit_bias", "n", "stop", "seed", "parallel_tool_calls"}  # fmt: skip


class ShapeWatch:
    """Watches the first answers of a run for the same refusal of the request's shape."""

    def __init__(self, same: int = SAME):
        self.same = same
        self.answered = False  # an answer arrived: the request's shape is fine
        self._seen: Counter[str] = Counter()

    def refused(self, exc: BadRequestError, body: bytes) -> RequestShapeError | None:
        """The error that stops the run after ``exc`` (a row's refusal), or None."""
        if self.answered:
            return None
        message = str(exc)
        immediate = exc.code in _SHAPE_CODES or (exc.param == "response_format" and b'"json_schema"' in body)
        if exc.code in _CONTENT or _CONTENT_MESSAGE.search(message):
            return None  # a refusal of this row's content (a content filter): never the request's shape
        if not immediate and (exc.code == "context_length_exceeded" or _ROW_SPECIFIC.search(message)):
            return None  # the row's own content: that row's error
        self._seen[message] += 1
        if not immediate and self._seen[message] < self.same:
            return None
        count = self._seen[message]
        first = "the first request of this run" if count == 1 else f"the first {count} requests of this run alike"
        return RequestShapeError(
            f"The endpoint refused {first}, as it would refuse every other row (they share their "
            f"parameters), so nothing more was sent: {message} To fix: {advice(exc, body)}. "
            "Answered rows are kept in the cache.",
            status=exc.status,
            code=exc.code,
        )


def row_status(exc: BadRequestError) -> str:
    """A refused row's status: ``content_filter`` when a content filter refused it (as for
    ``finish_reason="content_filter"``), else ``error``."""
    return "content_filter" if exc.code == "content_filter" else "error"


def advice(exc: BadRequestError, body: bytes) -> str:
    """What to change in the call for a refusal of the request's shape."""
    param, text = exc.param or "", str(exc)
    if param == "response_format" or "json_schema" in text or "response_format" in text:
        if b'"json_schema"' in body:
            return ('pass structured="json_object" (the schema then goes in the instruction, and in '
                    '{"type": "json_object", "schema": ...}, which llama.cpp enforces)')  # fmt: skip
        return "this endpoint refuses the response format too; drop schema= (use map without a schema)"
    if param == "max_tokens" or "max_completion_tokens" in text:
        return ("pass max_completion_tokens= instead of max_tokens= (reasoning models take only that; "
                "pandas-llm renames it by itself for the model names it knows: o1, o3, o4, gpt-5)")  # fmt: skip
    if param in _SAMPLING:
        return f"drop {param}= (this model accepts only its default value)"
    if param.startswith("messages") and "system" in text:
        return "drop system= (this model takes no system message; put the instruction in the template)"
    if param:
        return f"change or drop {param}= (or the value it names)"
    return "change the parameters the message names"


def quota_stop(exc: RetryableError, wait: float, deadline: float | None) -> FatalAPIError | None:
    """The error that stops the run when the server asks (``retry-after``) for a wait beyond
    ``MAX_RETRY_AFTER`` and the run has no ``deadline`` (with one, the engine stops sending
    at the deadline instead): a QuotaError for a 429, a FatalAPIError for a 503 and the like."""
    if deadline is not None or exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER:
        return None
    limit = isinstance(exc, RateLimitError)
    message = (
        f"{sentence(str(exc))} The provider asks to wait {come_back(exc.retry_after)}, longer than the "
        f"{MAX_RETRY_AFTER / 60:g} min a run without deadline= waits"
        + (": this is a quota, not a passing rate limit." if limit else ".")
        + " Run the same call again then (answered rows come from the cache), or pass deadline= to "
        "return with what is answered by then."
    )
    if limit:
        return QuotaError(message, status=exc.status, code=exc.code, retry_after=exc.retry_after)
    return FatalAPIError(message, status=exc.status, code=exc.code)


def come_back(seconds: float, *, now: float | None = None) -> str:
    """``"1 h 30 min (retry-after 5400 s, at about 14:05 UTC)"``: when a limit clears.

    >>> come_back(5400, now=0)
    '1 h 30 min (retry-after 5400 s, at about 01:30 UTC)'
    """
    s = int(round(seconds))
    h, m = divmod(-(-s // 60), 60)
    span = f"{h} h {m} min" if h else (f"{m} min" if m > 1 or s >= 60 else f"{s} s")
    at = time.strftime("%H:%M UTC", time.gmtime((time.time() if now is None else now) + seconds))
    if seconds >= 86400:
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((time.time() if now is None else now) + seconds))
    return f"{span} (retry-after {s} s, at about {at})"
