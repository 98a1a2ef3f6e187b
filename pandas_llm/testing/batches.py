"""The Batch API on the loopback server: ``/v1/files`` and ``/v1/batches``.

Every ``LLMServer`` serves it as ``srv.batches``; each line of a batch is answered by
``srv.chat_body`` and so equals what ``POST /v1/chat/completions`` gives for the same
body (and counts in ``srv.prompt_counts``)::

    >>> import io, json, openai
    >>> from pandas_llm.testing import LLMServer
    >>> line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
    ...         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
    >>> with LLMServer() as srv:
    ...     client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
    ...     f = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
    ...     b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    ...     b = client.batches.retrieve(b.id)          # delay=0: done at the first look
    ...     out = client.files.content(b.output_file_id).text
    ...     client.close()
    >>> b.status, json.loads(out)["response"]["body"]["choices"][0]["message"]["content"]
    ('completed', 'echo: hi')
    >>> srv.batches.files_uploaded, srv.batches.batches_created, srv.batches.lines_answered
    (1, 1, 1)

States: ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed`` over ``delay``
seconds (10% / 80% / 10%); ``hold()`` freezes progress until ``release()``. A batch that
fails validation (bad lines, duplicate ``custom_id``, several models, over ``max_requests``
or ``max_bytes``, over the ``enqueued_tokens`` budget) is ``failed`` with ``errors``.
``expire_next(fraction=)`` makes the next batch ``expired`` having answered only that
fraction of its lines; ``cancel`` gives ``cancelling`` then ``cancelled`` with the lines
answered so far. Unanswered lines of expired / cancelled batches go to the error file
with ``batch_expired`` / ``batch_cancelled``, as the real API does. ``fail_lines(match)``
sends matching lines to the error file with an HTTP error. Output order is shuffled
(``shuffle=False`` keeps the input order).

Counters (``files_uploaded``, ``batches_created``, ``lines_answered``, ...) let a test
prove nothing was submitted twice; ``deleted_files`` lists the file ids deleted and
``uploads`` every input file uploaded (deleted ones included, to read what was sent).

``without_batch_api(status)`` makes the server one with no Batch API, as vLLM, llama.cpp
and many gateways are: every ``/v1/files`` and ``/v1/batches`` request answers 404
(FastAPI's ``{"detail": "Not Found"}``), 405 or 501 (an OpenAI-shaped error).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from typing import Any

import orjson

from .._errors import ConfigError
from ._http import Request, Response, default_error, error_response, json_response
from .answers import estimate_tokens, prompt_tokens
from .batch_timeline import ACTIVE, ENDPOINTS, Batch, LineFault, Timeline, batch_error, batch_object
from .files import FileStore

__all__ = ["BatchEndpoints"]


class BatchEndpoints(Timeline):
    """Files and batches for one ``LLMServer`` (its ``srv.batches``). See the module docstring.

    Options: ``delay`` seconds from creation to completion; ``shuffle`` the output order;
    ``max_requests`` / ``max_bytes`` per batch file (the API's 50,000 and 200 MB);
    ``enqueued_tokens``: a budget of prompt tokens (the server's estimate) in batches not
    finished yet, above which a new batch fails with ``token_limit_exceeded``.
    """

    def __init__(
        self,
        server: Any,  # the LLMServer serving these (check_auth, chat_body, endpoints, routes)
        *,
        delay: float = 0.0,
        shuffle: bool = True,
        seed: int | None = 0,
        max_requests: int = 50_000,
        max_bytes: int = 200 * 1024 * 1024,
        enqueued_tokens: int | None = None,
    ) -> None:
        self.server = server
        self.delay, self.shuffle = delay, shuffle
        self.max_requests, self.max_bytes, self.enqueued_tokens = max_requests, max_bytes, enqueued_tokens
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.file_store = FileStore(server.check_auth, self._lock, self._ids)
        #: Every file by id (uploads, outputs and error files).
        self.files = self.file_store.files
        self.batches: dict[str, Batch] = {}
        self._line_faults: list[LineFault] = []
        self._expire: list[float] = []
        self._create_faults = 0
        self._stall_after: int | None = None
        self._request_faults: list[tuple[int, float | None]] = []
        self._held = False
        self.missing: int | str | None = None  # an HTTP status: serve no Batch API (without_batch_api)
        self.reset_counters()
        routes = {
            **self.file_store.routes(),
            ("POST", "/v1/batches"): self._create,
            ("GET", "/v1/batches"): self._list,
            ("GET", "/v1/batches/*"): self._retrieve,
            ("POST", "/v1/batches/*"): self._cancel,
        }
        server.routes.update({route: self._faulty(handler) for route, handler in routes.items()})

    # -- knobs for tests ----------------------------------------------------------------
    def reset_counters(self) -> None:
        """Zero the counters (not the stored files and batches)."""
        with self._lock:
            self.file_store.uploaded = self.file_store.deleted = 0
            self.file_store.deleted_ids.clear()
            self.file_store.uploads.clear()
            self.batches_created = self.batches_cancelled = self.batches_listed = self.batches_retrieved = 0
            self.lines_answered = self.lines_failed = 0
            self.peak_active = 0

    @property
    def files_uploaded(self) -> int:
        return self.file_store.uploaded

    @property
    def files_deleted(self) -> int:
        return self.file_store.deleted

    @property
    def uploads(self) -> list[Any]:
        """Every batch input file uploaded since the counters were reset, deleted ones included."""
        with self._lock:
            return [f for f in self.file_store.uploads if f.purpose == "batch"]

    @property
    def deleted_files(self) -> list[str]:
        """The ids of the files deleted, in order."""
        with self._lock:
            return list(self.file_store.deleted_ids)

    def without_batch_api(self, status: int | str | None = 404) -> None:
        """Serve no Batch API: ``/v1/files`` and ``/v1/batches`` answer ``status`` (404 as
        vLLM, 405, 501, a gateway's 400 "Invalid URL", or ``"html"``: a 200 web page, as a
        gateway's web UI answers any path); ``None`` serves it again."""
        if status not in (None, 400, 404, 405, 501, "html"):
            raise ConfigError(f"status must be 400, 404, 405, 501, 'html' or None, got {status!r}")
        with self._lock:
            self.missing = status

    def hold(self) -> None:
        """Freeze every batch's progress (they stay ``in_progress``) until :meth:`release`."""
        with self._lock:
            now = time.monotonic()
            self._held = True
            for b in self.batches.values():
                if b.held_since is None:
                    b.held_since = now

    def release(self, count: int | None = None) -> None:
        """Resume progress; the time spent held does not count towards ``delay``. ``count``:
        resume only the first ``count`` batches held (in creation order); the others, and
        batches created later, stay held."""
        with self._lock:
            now = time.monotonic()
            if count is None:
                self._held = False
            held = [b for b in self.batches.values() if b.held_since is not None]
            for b in held[:count]:
                if b.held_since is not None:
                    b.t0 += now - b.held_since
                    b.held_since = None

    def fail_lines(self, match: str | None = None, *, status: int = 500, message: str | None = None,
                   times: int | None = None) -> None:  # fmt: skip
        """Lines whose last user message contains ``match`` (every line if None) go to the
        error file with HTTP ``status`` instead of an answer; ``times`` bounds how many."""
        with self._lock:
            self._line_faults.append(LineFault(match, status, message or f"Injected error {status}.", times))

    def fail_requests(self, status: int = 503, *, times: int = 1, retry_after: float | None = None) -> None:
        """The next ``times`` requests to ``/v1/files`` or ``/v1/batches`` answer ``status``
        (with ``retry-after`` if given) without doing anything."""
        with self._lock:
            self._request_faults.extend([(status, retry_after)] * times)

    def _faulty(self, handler: Any) -> Any:
        def route(request: Request) -> Any:
            missing = self.missing
            if missing == 404:
                return json_response(404, {"detail": "Not Found"})
            if missing == "html":
                return Response(200, "<!doctype html><html><body>Gateway UI</body></html>", content_type="text/html")
            if missing == 400:
                return error_response(400, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
            if isinstance(missing, int):
                return error_response(missing, f"{request.method} {request.path} is not supported by this server.",
                                      "invalid_request_error" if missing == 405 else "NotImplementedError")  # fmt: skip
            with self._lock:
                fault = self._request_faults.pop(0) if self._request_faults else None
            if fault is None:
                return handler(request)
            status, retry_after = fault
            return default_error(status, [("retry-after", str(retry_after))] if retry_after is not None else [])

        return route

    def stall_creates_after(self, count: int) -> None:
        """Every ``POST /v1/batches`` after the next ``count`` creates its batch and then never
        answers (as if the client died while waiting), until :meth:`clear_faults`."""
        with self._lock:
            self._stall_after = self.batches_created + count

    def clear_faults(self) -> None:
        """Drop the line faults, expiries, create faults and stalls not consumed yet."""
        with self._lock:
            self._line_faults.clear()
            self._expire.clear()
            self._create_faults = 0
            self._stall_after = None
            self._request_faults.clear()

    def expire_next(self, fraction: float = 0.0, *, count: int = 1) -> None:
        """The next ``count`` batches created expire after answering ``fraction`` of their lines."""
        if not 0 <= fraction < 1:
            raise ConfigError(f"fraction must be in [0, 1), got {fraction!r}")
        with self._lock:
            self._expire.extend([fraction] * count)

    def fail_next_create(self, count: int = 1) -> None:
        """The next ``count`` ``POST /v1/batches`` create the batch, then answer 500 as if the
        connection broke after the server acted (a client must not create it twice)."""
        with self._lock:
            self._create_faults += count

    def active(self) -> int:
        """Batches not finished yet."""
        with self._lock:
            return sum(1 for b in self.batches.values() if self._advance(b) in ACTIVE)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):08d}"

    # -- batches ------------------------------------------------------------------------
    def _create(self, request: Request) -> Response | asyncio.Future[Response]:
        denied = self.server.check_auth(request)
        if denied is not None:
            return denied
        try:
            body = request.json()
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"Invalid JSON body: {exc}")
        if body.get("endpoint") not in ENDPOINTS:
            return error_response(400, f"Unsupported endpoint {body.get('endpoint')!r}; use one of {ENDPOINTS}.",
                                  param="endpoint")  # fmt: skip
        if body.get("completion_window") != "24h":
            return error_response(400, "completion_window must be '24h'.", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict) or len(metadata) > 16
            or any(len(str(k)) > 64 or not isinstance(v, str) or len(v) > 512 for k, v in metadata.items())
        ):  # fmt: skip
            return error_response(400, "metadata: at most 16 string pairs, keys <= 64 and values <= 512 chars.",
                                  param="metadata")  # fmt: skip
        with self._lock:
            f = self.file_store.get(body.get("input_file_id"))
            if f is None:
                return error_response(
                    400, f"Invalid input_file_id {body.get('input_file_id')!r}.", param="input_file_id"
                )
            if f.purpose != "batch":
                return error_response(
                    400, "The input file must be uploaded with purpose 'batch'.", param="input_file_id"
                )
            b = Batch(self._new_id("batch"), f.id, metadata, int(time.time()), time.monotonic(),
                       endpoint=body["endpoint"])  # fmt: skip
            b.times["created_at"] = b.created_at
            if self._held:
                b.held_since = b.t0
            for other in self.batches.values():
                self._advance(other)
            b.errors = self._validate(b, f.data)
            if self._expire:
                b.expire_fraction = self._expire.pop(0)
            self.batches[b.id] = b
            self.batches_created += 1
            active = sum(1 for x in self.batches.values() if x.status in ACTIVE)
            self.peak_active = max(self.peak_active, active)
            if self._create_faults:
                self._create_faults -= 1
                return error_response(500, "The server had an error processing your request.", "server_error")
            if self._stall_after is not None and self.batches_created > self._stall_after:
                return asyncio.get_running_loop().create_future()  # never answered
            return json_response(200, batch_object(b))

    def _validate(self, b: Batch, data: bytes) -> list[dict[str, Any]] | None:
        if len(data) > self.max_bytes:
            return [batch_error("file_too_large", f"The input file is larger than {self.max_bytes} bytes.")]
        seen: set[str] = set()
        models: set[str] = set()
        for n, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                custom_id, body = line["custom_id"], line["body"]
                ok = line.get("method") == "POST" and line.get("url") == b.endpoint and isinstance(body, dict)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return [batch_error("invalid_json_line", "This line is not valid JSON or lacks custom_id / body.", n)]
            if not ok:
                return [batch_error("invalid_request", f"Each line needs method POST, url {b.endpoint} and a body.", n)]
            if custom_id in seen:
                return [batch_error("duplicate_custom_id", f"The custom_id {custom_id!r} is used more than once.", n)]
            seen.add(custom_id)
            models.add(str(body.get("model")))
            b.lines.append((custom_id, body))
            if isinstance(body.get("messages"), list):
                b.tokens += prompt_tokens([m for m in body["messages"] if isinstance(m, dict)])
            elif isinstance(body.get("input"), str):
                b.tokens += estimate_tokens(body["input"])
        if not b.lines:
            return [batch_error("empty_file", "The input file has no requests.")]
        if len(b.lines) > self.max_requests:
            return [
                batch_error(
                    "too_many_requests", f"A batch holds at most {self.max_requests} requests, got {len(b.lines)}."
                )
            ]
        if len(models) > 1:
            return [batch_error("mixed_models", f"All requests of a batch must use one model, got {sorted(models)}.")]
        b.model = models.pop()
        if self.enqueued_tokens is not None:
            queued = sum(x.tokens for x in self.batches.values() if x.status in ACTIVE)
            if queued + b.tokens > self.enqueued_tokens:
                return [batch_error("token_limit_exceeded",
                             f"Enqueued token limit reached for {b.model}: Limit {self.enqueued_tokens}, "
                             f"enqueued {queued}, this batch {b.tokens}.")]  # fmt: skip
        return None

    def _retrieve(self, request: Request) -> Response:
        denied = self.server.check_auth(request)
        if denied is not None:
            return denied
        batch_id = request.path[len("/v1/batches/") :]
        with self._lock:
            self.batches_retrieved += 1
            b = self.batches.get(batch_id)
            if b is None:
                return error_response(404, f"No batch found with id {batch_id!r}.", code="not_found")
            self._advance(b)
            return json_response(200, batch_object(b))

    def _cancel(self, request: Request) -> Response:
        denied = self.server.check_auth(request)
        if denied is not None:
            return denied
        batch_id, _, action = request.path[len("/v1/batches/") :].partition("/")
        if action != "cancel":
            return error_response(404, f"Unknown request URL: POST {request.path}", code="unknown_url")
        with self._lock:
            b = self.batches.get(batch_id)
            if b is None:
                return error_response(404, f"No batch found with id {batch_id!r}.", code="not_found")
            status = self._advance(b)
            if status not in ("validating", "in_progress", "finalizing"):
                return error_response(400, f"Cannot cancel a batch with status {status!r}.")
            b.cancel_at = time.monotonic()
            b.status = "cancelling"
            b.times["cancelling_at"] = int(time.time())
            self.batches_cancelled += 1
            return json_response(200, batch_object(b))

    def _list(self, request: Request) -> Response:
        denied = self.server.check_auth(request)
        if denied is not None:
            return denied
        query = dict(p.partition("=")[::2] for p in request.query.split("&") if p)
        limit = max(1, min(100, int(query.get("limit") or 20)))
        with self._lock:
            self.batches_listed += 1
            ordered = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)  # newest first
            if query.get("after"):
                ordered = [b for b in ordered if b.id < query["after"]]
            page = ordered[:limit]
            for b in page:
                self._advance(b)
            data = [batch_object(b) for b in page]
        return json_response(
            200,
            {
                "object": "list", "data": data, "has_more": len(ordered) > limit,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
            },
        )  # fmt: skip
