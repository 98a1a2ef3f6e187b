"""The backend protocol: a Completion (one answer and what billing and limits need) and a
Backend (what sends one request), and reading a chat completion's body into a Completion.
Every backend module imports these from here; the package's face re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

__all__ = ["Backend", "Completion", "billed_usage", "content_text", "describe_content", "parse_completion"]


class Completion(NamedTuple):
    """One answer, with what billing and rate limiting need to know.

    ``completion_tokens`` counts every output token billed, ``reasoning_tokens`` (a
    reasoning model's hidden ones) included; ``error`` is the message of an error the
    server put in the answer's choice (a gateway's ``finish_reason="error"``)."""

    text: str | None
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    headers: Mapping[str, str] | None = None
    refusal: str | None = None
    reasoning_tokens: int = 0
    error: str | None = None
    outputs: Any = None  # a list-input endpoint's per-input values, in input order (endpoints.py)


class Backend(Protocol):
    """What ``client=`` accepts besides an openai client or a function: any object with these.

    ``complete(body)`` sends one request, ``body`` being the canonical JSON bytes of the
    chat request (``model``, ``messages``, the generation parameters, ``response_format``),
    and returns its :class:`Completion`; the engine judges it (only ``finish_reason`` "stop"
    with content is an answer). It raises pandas_llm's errors: ``RetryableError`` (retried;
    ``RateLimitError`` pauses every worker), ``BadRequestError`` (that row's error) or
    ``FatalAPIError`` (the run stops); any other exception fails the run. It may be called
    concurrently (``concurrency`` at once), and from another event loop on each run.
    ``aclose()`` is never called by pandas-llm on a Backend given as ``client=``: it is
    yours. ``endpoint`` (optional, a str) names it in the cache key.
    """

    async def complete(self, body: bytes) -> Completion: ...

    async def aclose(self) -> None: ...


def content_text(content: Any) -> Any:
    """A message's ``content`` as text: a str or None as is; a list of content parts (some
    gateways send ``[{"type": "text", "text": "..."}]``) as its text parts joined in order.

    Anything else (a part of another kind, a number, a dict) is returned unchanged, for
    ``scheduler.completion_record`` to make that row's error (``bad_content``)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") in ("text", "output_text") and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return content


def describe_content(content: Any) -> str:
    """Why ``content`` is not text, for that row's error."""
    if isinstance(content, list):
        kinds = sorted({str(p.get("type")) if isinstance(p, Mapping) else type(p).__name__ for p in content})
        return (f"message.content is a list of parts of type {', '.join(kinds)}; only text parts "
                "(type 'text' with a str 'text') are read as an answer")  # fmt: skip
    return f"message.content is a {type(content).__name__} ({str(content)[:80]!r}), not text"


_REASONS = {r: r for r in ("stop", "length", "content_filter", "tool_calls", "function_call")}


def first_choice(choices: list[Any]) -> Any:
    """The choice with ``index`` 0 (the answer), wherever the list puts it; ``choices[0]`` when
    the choices carry no index. None when none is index 0 (``answers.judge``: not a completion).

    >>> first_choice([{"index": 1, "message": "b"}, {"index": 0, "message": "a"}])["message"]
    'a'
    """
    for choice in choices:
        if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
            return choice
    return None


def parse_completion(data: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Completion:
    """Read an OpenAI-shaped chat.completion body (judging it is ``answers.judge``'s job);
    its usage as :func:`_usage` reads it."""
    choice: Any = first_choice(data["choices"]) or {}  # judge refuses a body without one first
    message = choice.get("message") or {}
    prompt, completion, cached, reasoning = _usage(data.get("usage") or {})
    reason = choice.get("finish_reason")
    if reason is not None and not isinstance(reason, str):  # judged as the unknown reason it is
        reason = str(reason)[:80]
    error = choice.get("error")
    if error is not None:
        error = str(error.get("message") or error) if isinstance(error, Mapping) else str(error)
    return Completion(
        content_text(message.get("content")),
        _REASONS.get(reason, reason),  # one shared str, not one per answer (53 bytes a row at 1M rows)
        prompt,
        completion,
        cached,
        headers,
        _text(message.get("refusal")),
        reasoning,
        error,
    )


def billed_usage(body: Any, headers: Mapping[str, str] | None = None) -> Completion | None:
    """The usage a body without an answer reports (a 200 with ``choices: []``, an error
    object with ``usage``), as a Completion with no text; None if it reports no tokens.
    Those tokens were billed: the engine counts them (stats, the row's record, ``max_cost``).

    >>> billed_usage({"choices": [], "usage": {"prompt_tokens": 5000, "completion_tokens": 0}}).prompt_tokens
    5000
    >>> billed_usage({"error": {"message": "no"}}) is None
    True
    """
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    try:
        prompt, completion, cached, reasoning = _usage(usage)
    except AttributeError:  # a details field that is not an object
        return None
    if not (prompt or completion):
        return None
    return Completion(None, None, prompt, completion, cached, headers, reasoning_tokens=reasoning)


def _usage(usage: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(prompt, completion, cached, reasoning) tokens of a usage object.

    Reasoning tokens (``usage.completion_tokens_details.reasoning_tokens``) are part of
    ``completion_tokens`` in OpenAI's usage; a provider whose ``total_tokens`` shows it
    counted them apart (total = prompt + completion + reasoning) has them added, so they
    are priced as the output tokens they are, once."""
    details = usage.get("prompt_tokens_details") or {}
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    reasoning = _count((usage.get("completion_tokens_details") or {}).get("reasoning_tokens"))
    if reasoning and _count(usage.get("total_tokens")) >= prompt + completion + reasoning:
        completion += reasoning
    return prompt, completion, _count(details.get("cached_tokens")), reasoning


def _count(value: Any) -> int:
    """A token count from a usage object: a non-negative int (0 for anything else)."""
    if type(value) is int:  # what every server sends (not a bool): four of these per answer
        return value if value >= 0 else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return 0
    return int(value)


def _text(value: Any) -> str | None:
    """A text field (``refusal``) as str or None, whatever the server sent."""
    return value if value is None or isinstance(value, str) else str(value)
