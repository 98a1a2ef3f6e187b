"""One batch of the loopback Batch API (testing/batches.py): its record, its timeline
(``validating`` -> ``in_progress`` -> ``finalizing`` -> a final status, over ``delay``
seconds), the lines it answers and the batch object the API returns."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .answers import InvalidRequest, last_user_content
from .endpoints import InvalidInput, input_texts

__all__ = ["Batch", "LineFault", "Timeline", "batch_object", "batch_error", "ACTIVE", "ENDPOINT", "ENDPOINTS"]

ENDPOINT = "/v1/chat/completions"
#: The endpoints batches accept (embeddings lines are answered by testing/endpoints.py).
ENDPOINTS = (ENDPOINT, "/v1/embeddings")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class LineFault:
    match: str | None
    status: int
    message: str
    times: int | None


@dataclass
class Batch:
    id: str
    input_file_id: str
    metadata: dict[str, Any] | None
    created_at: int
    t0: float
    lines: list[tuple[str, Any]] = field(default_factory=list)
    model: str | None = None
    tokens: int = 0
    status: str = "validating"
    errors: list[dict[str, Any]] | None = None
    expire_fraction: float | None = None
    progress: float = 0.0  # 0..1: the share of lines answered so far
    held_since: float | None = None
    cancel_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)
    fault_after_create: bool = False
    endpoint: str = "/v1/chat/completions"


class Timeline:
    """How batches move along their timeline and answer their lines; mixed into
    ``BatchEndpoints``, which holds what it reads (``delay``, ``shuffle``, the faults, the
    counters, the file store and the server answering each line)."""

    delay: float
    shuffle: bool
    lines_answered: int
    lines_failed: int
    _rng: Any
    _line_faults: list[LineFault]
    file_store: Any
    server: Any

    def _advance(self, b: Batch) -> str:
        """Move ``b`` along its timeline; returns its status."""
        if b.status in TERMINAL:
            return b.status
        now = time.monotonic()
        if b.status == "validating" and b.errors is not None:
            self._finish_failed(b)
            return b.status
        if b.status == "cancelling":
            self._finish(b, "cancelled")
            return b.status
        elapsed = (b.held_since if b.held_since is not None else now) - b.t0
        progress = 1.0 if self.delay <= 0 else elapsed / self.delay
        if b.held_since is not None:
            progress = min(progress, 0.5)
        stamp = int(time.time())
        if progress >= 0.1 and "in_progress_at" not in b.times:
            b.times["in_progress_at"] = stamp
        b.progress = min(1.0, max(0.0, (progress - 0.1) / 0.8))
        if progress >= 1.0 and b.expire_fraction is not None:
            b.progress = b.expire_fraction
            self._finish(b, "expired")
        elif progress >= 1.0:
            b.times.setdefault("finalizing_at", stamp)
            self._finish(b, "completed")
        elif progress >= 0.9:
            b.status = "finalizing"
            b.times.setdefault("finalizing_at", stamp)
        elif progress >= 0.1 or b.held_since is not None:
            b.status = "in_progress"
            b.times.setdefault("in_progress_at", stamp)
        if b.status in ("in_progress", "finalizing"):
            b.completed = int(len(b.lines) * b.progress)
        return b.status

    def _finish_failed(self, b: Batch) -> None:
        b.status = "failed"
        b.times["failed_at"] = int(time.time())

    def _finish(self, b: Batch, status: str) -> None:
        """Answer the lines (all, or the share reached), write the output and error files."""
        n_answer = len(b.lines) if status == "completed" else int(len(b.lines) * b.progress)
        order = list(range(len(b.lines)))
        if self.shuffle:
            self._rng.shuffle(order)
        answered = set(order[:n_answer]) if status != "completed" else None
        out, err = [], []
        unanswered_code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        for i in order:
            custom_id, body = b.lines[i]
            if answered is not None and i not in answered:
                message = ("This request could not be executed before the completion window expired."
                           if status == "expired" else "This request was not executed because the batch was cancelled.")  # fmt: skip
                err.append(output_line(b, custom_id, None, {"code": unanswered_code, "message": message}))
                continue
            fault = self._take_line_fault(body)
            if fault is not None:
                err.append(output_line(b, custom_id, line_error(fault.status, fault.message), None))
                continue
            try:
                answer = self._answer(b, body)
            except InvalidRequest as exc:
                err.append(output_line(b, custom_id, line_error(400, str(exc), exc.param), None))
                continue
            out.append(
                output_line(b, custom_id, {"status_code": 200, "request_id": f"req_{b.id}_{i}", "body": answer}, None)
            )
        b.completed, b.failed = len(out), len(err) - (len(b.lines) - n_answer if answered is not None else 0)
        self.lines_answered += len(out)
        self.lines_failed += b.failed
        if out:
            b.output_file_id = self.file_store.add(f"{b.id}_output.jsonl", "batch_output", b"".join(out)).id
        if err:
            b.error_file_id = self.file_store.add(f"{b.id}_error.jsonl", "batch_output", b"".join(err)).id
        b.status = status
        b.times[f"{status}_at"] = int(time.time())

    def _answer(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        """One line's 200 body, as the realtime endpoint answers it (raises InvalidRequest)."""
        if b.endpoint == ENDPOINT:
            return self.server.chat_body(body)
        try:
            answer, tokens = self.server.endpoints.embeddings_body(body, input_texts(body))
        except InvalidInput as exc:
            raise InvalidRequest(str(exc), exc.param) from exc
        with self.server._lock:
            self.server.prompt_tokens += tokens
            for text in input_texts(body):
                self.server._counts[text] += 1
        return answer

    def _take_line_fault(self, body: Mapping[str, Any]) -> LineFault | None:
        if not self._line_faults:
            return None
        messages = body.get("messages")
        prompt = last_user_content(messages) if isinstance(messages, list) else str(body.get("input", ""))
        for fault in self._line_faults:
            if fault.match is None or fault.match in prompt:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._line_faults.remove(fault)
                return fault
        return None


def batch_object(b: Batch) -> dict[str, Any]:
    total = len(b.lines) if b.errors is None else 0
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.errors} if b.errors and b.status == "failed" else None,
        "input_file_id": b.input_file_id,
        "completion_window": "24h",
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "in_progress_at": b.times.get("in_progress_at"),
        "expires_at": b.created_at + 86400,
        "finalizing_at": b.times.get("finalizing_at"),
        "completed_at": b.times.get("completed_at"),
        "failed_at": b.times.get("failed_at"),
        "expired_at": b.times.get("expired_at"),
        "cancelling_at": b.times.get("cancelling_at"),
        "cancelled_at": b.times.get("cancelled_at"),
        "request_counts": {"total": total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata,
        "model": b.model,
    }


def batch_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def line_error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"status_code": status, "request_id": "req_error",
            "body": {"error": {"message": message, "type": kind, "param": param, "code": None}}}  # fmt: skip


def output_line(b: Batch, custom_id: str, response: Any, error: Any) -> bytes:
    return orjson.dumps({"id": f"batch_req_{b.id}_{custom_id}", "custom_id": custom_id, "response": response,
                         "error": error}) + b"\n"  # fmt: skip
