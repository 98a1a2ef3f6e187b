"""Deterministic answers and token estimates for the loopback server.

Every distinct prompt gets a distinct, predictable answer, so a test can compute the
expected value of each row without the server::

    >>> from pandas_llm.testing import answer_for
    >>> answer_for([{"role": "user", "content": "Translate to French: cat"}], "gpt-4o-mini")
    'echo: Translate to French: cat'

Token counts are a cheap estimate (``len(text) // 4 + 1`` per message), not tiktoken:
the server must stay fast, and tests only need the numbers to be deterministic.

:func:`complete` is the single entry point the server calls with the whole request
body; request features that change the answer (``response_format`` / JSON schemas,
say) belong there.

Reasoning models (OpenAI's o-series and gpt-5 family, by name) behave as the real API
does: ``max_tokens`` and a ``temperature`` other than 1 are refused with OpenAI's 400
bodies (``unsupported_parameter`` / ``unsupported_value``), and each answer bills hidden
reasoning tokens (``usage.completion_tokens_details.reasoning_tokens``, included in
``completion_tokens``): :data:`REASONING_PER_ANSWER_TOKEN` per visible answer token at
``reasoning_effort="medium"`` (the default), fewer at ``low``/``minimal``, more at ``high``;
``max_completion_tokens`` bounds reasoning and answer together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTENT_FILTER_MARKER",
    "REASONING_PER_ANSWER_TOKEN",
    "AnswerFn",
    "Completion",
    "InvalidRequest",
    "answer_for",
    "cached_tokens",
    "complete",
    "estimate_tokens",
    "is_reasoning_model",
    "last_user_content",
    "message_text",
    "prompt_tokens",
]

#: A last user message containing this marker is "refused": ``finish_reason`` is
#: ``"content_filter"`` and the content is ``null``.
CONTENT_FILTER_MARKER = "[[content_filter]]"

#: ``answer(messages, model) -> str``: the signature of ``LLMServer(answer=...)``.
AnswerFn = Callable[[list[dict[str, Any]], str], str]

#: Reasoning tokens billed per visible answer token, by ``reasoning_effort``.
REASONING_PER_ANSWER_TOKEN = {"minimal": 0, "low": 1, "medium": 2, "high": 4}

_REASONING = re.compile(r"^(?:ft:)?(?:[\w.-]+/)?(?:o\d+(?:-|$)|gpt-5)", re.I)


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models by name: o1, o3-mini, o4-mini, gpt-5, gpt-5-mini...

    >>> is_reasoning_model("o3-mini"), is_reasoning_model("gpt-4o-mini")
    (True, False)
    """
    return bool(_REASONING.match(model))


class InvalidRequest(ValueError):
    """The request body is not a valid chat completion request (the server sends 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the ``text`` parts of a list.

    >>> message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    'ab'
    """
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content)


def last_user_content(messages: list[dict[str, Any]]) -> str:
    """The text of the last ``role == "user"`` message ("" if there is none).

    This is the key of ``LLMServer.prompt_counts``.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def answer_for(messages: list[dict[str, Any]], model: str) -> str:
    """The server's default answer: ``"echo: "`` + the last user message's text.

    ``model`` is accepted so a custom ``answer=`` callable can use it; the default
    answer does not depend on it.

    >>> answer_for([{"role": "system", "content": "Be brief."},
    ...             {"role": "user", "content": "Label: great movie"}], "gpt-4o")
    'echo: Label: great movie'
    """
    return "echo: " + last_user_content(messages)


def estimate_tokens(text: str) -> int:
    """A cheap deterministic token estimate: ``len(text) // 4 + 1``.

    >>> estimate_tokens("abcdefgh")
    3
    """
    return len(text) // 4 + 1


def prompt_tokens(messages: list[dict[str, Any]], tokens: Callable[[str], int] = estimate_tokens) -> int:
    """The prompt token estimate: ``tokens`` (:func:`estimate_tokens`) of each message, summed."""
    return sum(tokens(message_text(m.get("content"))) for m in messages)


@dataclass(frozen=True, slots=True)
class Completion:
    """What :func:`complete` decided for one request."""

    content: str | None
    finish_reason: str  # "stop" | "length" | "content_filter"
    prompt: str  # the last user message's text
    prompt_tokens: int
    completion_tokens: int
    #: tokens the rate limiter charges: prompt + max_tokens (or the completion estimate)
    rate_tokens: int
    #: of ``completion_tokens``, the hidden reasoning ones (reasoning models only)
    reasoning_tokens: int = 0


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"Invalid '{name}': expected an integer >= 1, got {value!r}.", name)
        return value
    return None


def complete(
    body: Mapping[str, Any], answer: AnswerFn = answer_for, structured: Any = None,
    tokens: Callable[[str], int] = estimate_tokens,
) -> Completion:  # fmt: skip
    """Validate a chat completion request body and compute its (non-streamed) answer.

    - the answer is ``answer(messages, model)``; with the default ``answer`` and a JSON
      ``response_format``, ``structured.answer(body, messages)`` (see structured.py), and
      the schema counts as prompt tokens, as providers bill it;
    - a last user message containing :data:`CONTENT_FILTER_MARKER` gives
      ``finish_reason="content_filter"`` and ``content=None``;
    - ``max_completion_tokens`` / ``max_tokens`` below the answer's estimate cut the
      answer to ``4 * max_tokens`` characters with ``finish_reason="length"`` and
      ``completion_tokens == max_tokens``;
    - ``tokens(text) -> int`` counts the tokens of each message, the schema and the answer
      (default :func:`estimate_tokens`; ``LLMServer(tokens=...)`` passes a real tokenizer).

    >>> c = complete({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    >>> (c.content, c.finish_reason, c.prompt_tokens, c.completion_tokens)
    ('echo: hi', 'stop', 1, 3)
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("'messages' must be a non-empty array of message objects.", "messages")
    reasoning = is_reasoning_model(model)
    if reasoning:
        _check_reasoning_request(body)
    limit = _max_tokens(body)
    prompt = last_user_content(messages)
    n_prompt = prompt_tokens(messages, tokens)
    n_reasoning = 0
    if CONTENT_FILTER_MARKER in prompt:
        content, reason, n_completion = None, "content_filter", 0
    else:
        if structured is not None and answer is answer_for and structured.handles(body):
            content = structured.answer(body, messages)
            n_prompt += tokens(str(body["response_format"]))
        else:
            content = answer(messages, model)
        reason, n_completion = "stop", tokens(content)
        if reasoning:
            n_reasoning = REASONING_PER_ANSWER_TOKEN[body.get("reasoning_effort") or "medium"] * n_completion
            if limit is not None and limit <= n_reasoning:  # the limit went on thinking: no answer at all
                content, reason, n_completion, n_reasoning = "", "length", 0, limit
            elif limit is not None:
                limit -= n_reasoning  # what is left for the visible answer
        if limit is not None and limit < n_completion:
            content, reason, n_completion = content[: 4 * limit], "length", limit
        n_completion += n_reasoning
    reserved = (_max_tokens(body) or 0) if limit is not None else n_completion
    return Completion(content, reason, prompt, n_prompt, n_completion, n_prompt + reserved, n_reasoning)


def _check_reasoning_request(body: Mapping[str, Any]) -> None:
    """What OpenAI's reasoning models refuse, with the API's own messages."""
    if "max_tokens" in body:
        raise InvalidRequest(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter",
        )  # fmt: skip
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise InvalidRequest(
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.", "temperature", "unsupported_value",
        )  # fmt: skip
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_PER_ANSWER_TOKEN:
        raise InvalidRequest(
            f"Invalid value: '{effort}'. Supported values are: 'minimal', 'low', 'medium', and 'high'.",
            "reasoning_effort", "invalid_value",
        )  # fmt: skip


#: Characters between two prompt prefixes compared by ``prompt_cache``.
_CACHE_STEP = 256


def cached_tokens(text: str, n_prompt: int, seen: set[bytes], lock: Any, tokens: Callable[[str], int]) -> int:
    """Tokens of the longest prefix of ``text`` sent before (>= 1,024, in steps of 128), as
    OpenAI's automatic prompt caching bills them; ``seen`` (prefix hashes) learns ``text``'s."""
    h, hit, step = hashlib.blake2b(digest_size=16), 0, _CACHE_STEP
    found: list[bytes] = []
    for end in range(step, len(text) + 1, step):
        h.update(text[end - step : end].encode())
        digest = h.copy().digest()
        found.append(digest)
        if digest in seen:
            hit = end
    with lock:
        seen.update(found)
    if not hit:
        return 0
    n = tokens(text[:hit])
    return min(n_prompt, n - n % 128) if n >= 1024 else 0
