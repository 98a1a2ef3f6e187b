"""Judging an answer: the Record a completion makes, the same for every backend and the Batch API."""

from __future__ import annotations

from .._backends import Completion
from .._store.store import Record

__all__ = ["completion_record"]

#: finish_reason values of a finished answer: "stop", and the natural ends of Hugging Face TGI.
_DONE_FINISH = frozenset({"stop", "eos_token", "stop_sequence"})
#: finish_reason values that are failures with a status of their own, never a value.
_FAILED_FINISH: dict[str | None, str] = {
    "length": "length",
    "model_length": "length",
    "content_filter": "content_filter",
}
#: finish_reason values of a tool call: an answer only when the request asked for tools.
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})


def completion_record(
    key: bytes, c: Completion, cost: float | None, attempts: int, model: str | None, *, tools: bool = False
) -> Record:
    """The Record for an answer, judged the same for every backend and the Batch API.

    Only a finished answer with content is ``ok``: finish_reason ``stop`` (TGI's
    ``eos_token`` / ``stop_sequence``), or ``tool_calls`` when the request asked for
    ``tools``. A cut-off (``length``), filtered or refused answer is a failure with its own
    status; an error the server put in the choice, any other finish_reason (a gateway's
    ``"error"``, vLLM's ``"abort"``, none at all) or no content is that row's ``error``,
    with the server's message: never a value, and sent again by the next run. Its tokens
    and cost are kept (it may have been billed). An empty string (``""``) is the failure
    ``empty``; whitespace-only text is kept as the model's answer. Content that is not a
    str (a list with parts other than text, a number) is that row's ``error``: the output
    of a Record is always ``str | None``.
    """
    reason = c.finish_reason
    status = _FAILED_FINISH.get(reason)
    error = None
    text = c.text
    if text is not None and not isinstance(text, str):  # never bind a foreign type in the store
        from .._backends import describe_content

        status, error, text = "error", f"finish_reason={reason}: {describe_content(text)}", None
    elif c.error is not None:
        status, error = "error", f"finish_reason={reason}: the server answered with an error: {c.error}"
    elif status is not None:
        error = f"finish_reason={reason}: the answer was cut off or withheld"
        if status == "length":
            error = f"finish_reason={reason}: the answer hit max_tokens and was cut off; raise max_tokens"
    elif reason not in _DONE_FINISH and not (tools and reason in _TOOL_FINISH):
        status = "error"
        if reason in _TOOL_FINISH:
            error = f"finish_reason={reason}: the model called a tool, but the request asked for no tools"
        elif reason is None:
            error = "the answer has no finish_reason, so it may be incomplete: not counted as an answer"
        else:
            error = f"finish_reason={reason!r}: the server ended the answer abnormally (no message given)"
    elif c.refusal:
        status, error = "refused", f"the model refused: {c.refusal}"
    elif text is None:
        status, error = "error", "the answer had no content" + (" (it called a tool)" if reason in _TOOL_FINISH else "")
    elif text == "":
        status, error = "empty", f"finish_reason={reason}: the answer was an empty string"
    return Record(
        key, status or "ok", text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.cached_tokens,
        cost, error, attempts, model,
    )  # fmt: skip
