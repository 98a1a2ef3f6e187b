"""The Batch API as four verbs over the openai SDK: submit, retrieve, cancel, download.

``BatchAPI`` is an async context manager that holds one SDK client for one operation
(it is closed at the end, so a job can be driven from any event loop). The client is
built with ``max_retries=0``; transient failures (408/409/429/5xx, timeouts, connection
errors) are retried here with the realtime runs' policy (_run/retry.py), honouring ``retry-after``.
Errors are mapped to pandas_llm._errors at this boundary, as for the realtime backends.

Creating a batch is not idempotent, so ``submit`` never blindly retries it: after a
transient failure it first looks for a batch carrying the part's id in its metadata
(the server may have created it before the connection broke).

An endpoint without the Batch API (vLLM, llama.cpp, many gateways: ``/files`` or
``/batches`` answer 404, 405 or 501) raises ``NoBatchAPIError`` at the first call, never
retried; ``available()`` asks once (``GET /batches?limit=1``) so ``mode="auto"`` can
choose realtime instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple, TypeVar

import orjson

from .._backends.errors import map_errors
from .._backends.openai_client import timeout_options
from .._errors import APIError, BadRequestError, ConfigError, FatalAPIError, remember_secret, sentence
from .._run.retry import RetryPolicy, retrying

__all__ = ["BatchAPI", "BatchInfo", "ENDPOINT", "PART_KEY", "JOB_KEY", "NoBatchAPIError"]

T = TypeVar("T")
log = logging.getLogger("pandas_llm")

ENDPOINT = "/v1/chat/completions"
#: Metadata keys pandas-llm puts on every batch it creates.
JOB_KEY, PART_KEY = "pandas_llm_job", "pandas_llm_part"
#: How many of the most recent batches ``find`` looks through.
FIND_WINDOW = 1000
_OPENAI_HOST = "api.openai.com"
_TRANSFER_TIMEOUT = 600.0  # uploads and downloads of files up to 200 MB


#: What a server without the Batch API answers on /files and /batches.
_ABSENT = frozenset({404, 405, 501})
#: A gateway's 400 for a path it does not route ("Invalid URL (POST /v1/files)").
_UNKNOWN_PATH = re.compile(r"invalid url|unknown (url|path|route|endpoint)|no route|not found", re.I)


class NoBatchAPIError(FatalAPIError):
    """The endpoint has no Batch API (``/files`` or ``/batches`` answer 404, 405 or 501)."""

    reason: str | None = None  # what the server answered instead, when it answered something else


class BatchInfo(NamedTuple):
    """What the API says about one batch."""

    id: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    errors: str | None  # the batch's own errors (validation), joined
    metadata: dict[str, str]


def _info(batch: Any) -> BatchInfo:
    counts = batch.request_counts
    errors = None
    if batch.errors is not None and batch.errors.data:
        errors = "; ".join(
            f"{e.code}: {e.message}" + (f" (line {e.line})" if getattr(e, "line", None) else "")
            for e in batch.errors.data
        )
    return BatchInfo(
        batch.id,
        batch.status,
        batch.input_file_id,
        batch.output_file_id,
        batch.error_file_id,
        counts.total if counts else 0,
        counts.completed if counts else 0,
        counts.failed if counts else 0,
        errors,
        dict(batch.metadata or {}),
    )


class BatchAPI:
    """``async with BatchAPI(settings) as api:`` upload / create / retrieve / cancel / lines."""

    def __init__(
        self,
        settings: Any,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self.settings = settings
        self.endpoint = settings.endpoint
        self.model = settings.model
        self.retry = retry or RetryPolicy(max_attempts=settings.max_attempts)
        self.sleep = sleep
        self._client: Any = None
        self._own = False
        self._async = True
        client = settings.client
        if client is not None and not (hasattr(client, "batches") and hasattr(client, "files")):
            raise ConfigError(
                "mode='batch' needs the OpenAI Batch API: use base_url=/api_key= or client=openai.OpenAI(...) / "
                "openai.AsyncOpenAI(...), not a plain function client or a Backend object (pandas_llm.testing.MockBackend)"
            )
        api_key = settings.effective_api_key
        if client is None and not api_key and _OPENAI_HOST in self.endpoint:
            raise ConfigError(
                "no API key: pass api_key='sk-...' or set OPENAI_API_KEY "
                f"(batches would go to {self.endpoint}); for a local server pass base_url="
            )
        self._api_key = api_key or "unused"
        remember_secret(api_key)
        remember_secret(getattr(client, "api_key", None))

    def __repr__(self) -> str:  # never the key its headers hold
        return f"<{type(self).__name__} {self.endpoint}>"

    async def __aenter__(self) -> BatchAPI:
        import openai

        self._openai = openai
        client = self.settings.client
        if client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.endpoint, api_key=self._api_key, max_retries=0, timeout=self.settings.request_timeout
            )
            self._own = True
        else:
            self._client = client.with_options(max_retries=0, **timeout_options(self.settings.timeout))
            self._async = inspect.iscoroutinefunction(self._client.batches.retrieve)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own and self._client is not None:
            await self._client.close()
        self._client = None

    # -- plumbing -------------------------------------------------------------------------
    async def _sdk(self, fn: Callable[..., Any], *args: Any, what: str = "the Batch API",
                   expect: str | None = "id", **kwargs: Any) -> Any:  # fmt: skip
        """One SDK call, its foreign errors mapped to ours (no retry).

        A reply that is not a Batch API reply (not JSON, e.g. a gateway's web page, which the
        SDK hands back as a str or fails to read; or an object without ``expect``) raises
        NoBatchAPIError naming ``what`` was asked and what the server answered."""
        try:
            with map_errors("openai", self.endpoint, self.model):
                if self._async:
                    result = await fn(*args, **kwargs)
                else:
                    result = await asyncio.to_thread(fn, *args, **kwargs)
        except self._openai.OpenAIError as exc:  # one the mapping leaves as it is
            if getattr(exc, "status_code", None) is None and not isinstance(exc, self._openai.APIConnectionError):
                raise self._not_batch(what, f"a reply the SDK could not read ({exc})") from exc
            raise
        except APIError as exc:  # mapped from the SDK's: say which call of the Batch API it was
            if not getattr(exc, "__notes__", None):
                exc.add_note(f"(the Batch API's {what} at {self.endpoint})")
            raise
        except (AttributeError, TypeError, ValueError) as exc:  # the SDK could not build its object
            raise self._not_batch(
                what, f"a reply that is not a Batch API object ({type(exc).__name__}: {exc})"
            ) from exc
        if isinstance(result, (str, bytes)) or result is None:
            text = result.decode("utf-8", "replace") if isinstance(result, bytes) else str(result)
            raise self._not_batch(what, f"{text[:120]!r}")
        if expect is not None and not isinstance(getattr(result, expect, None), (str, list)):
            raise self._not_batch(what, f"an object without {expect!r}: {str(result)[:120]!r}")
        return result

    def _not_batch(self, what: str, answered: str) -> NoBatchAPIError:
        reason = f"{what} at {self.endpoint} answered {answered}, not a Batch API reply"
        exc = NoBatchAPIError(
            f"this endpoint has no Batch API ({reason}); use mode='realtime' (or check base_url).",
            status=200,
            code="no_batch_api",
        )
        exc.reason = reason
        return exc

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        return await retrying(call, self.retry, sleep=self.sleep)

    def _absent(self, exc: APIError, what: str) -> APIError:
        """``exc`` as a NoBatchAPIError when its status says the endpoint lacks ``what`` (404,
        405, 501, or a gateway's 400 naming the path as unknown); any other 400 on the upload
        or the create refuses the whole job, never one row: a FatalAPIError saying so."""
        if exc.status == 400 and not _UNKNOWN_PATH.search(str(exc)):
            refused = FatalAPIError(
                f"the Batch API refused the job ({what} at {self.endpoint}): {sentence(str(exc))} Nothing was "
                "submitted, so nothing is billed; fix what it names, or use mode='realtime'.",
                status=400,
                code=exc.code or "batch_refused",
            )
            return refused
        if exc.status not in _ABSENT and exc.status != 400:
            return exc
        return NoBatchAPIError(
            f"this endpoint has no Batch API (HTTP {exc.status} on {what} at {self.endpoint}); use mode='realtime' "
            "(or check base_url).",
            status=exc.status,
            code="no_batch_api",
        )

    # -- the verbs ------------------------------------------------------------------------
    async def available(self) -> str | None:
        """None if the endpoint serves the Batch API, else why not (one ``GET /batches``)."""
        batches = self._client.batches
        try:
            raw = await self._retrying(lambda: self._sdk(batches.with_raw_response.list, limit=1, what="GET /batches",
                                                         expect=None))  # fmt: skip
            try:
                page = orjson.loads(raw.content)
            except orjson.JSONDecodeError:
                page = None
            if not (isinstance(page, dict) and isinstance(page.get("data"), list)):
                raise self._not_batch("GET /batches", repr(raw.content[:120].decode("utf-8", "replace")))
        except NoBatchAPIError as exc:
            return getattr(exc, "reason", None) or str(exc)
        except APIError as exc:
            if exc.status in _ABSENT:
                return f"HTTP {exc.status} on GET /batches"
            if exc.status == 400:  # a gateway that knows no such path ("Invalid URL")
                return f"HTTP 400 on GET /batches: {str(exc)[:200]}"
            raise
        return None

    async def upload(self, filename: str, data: bytes) -> str:
        """Upload a JSONL batch input file; returns its file id."""
        files = self._client.files
        try:
            f = await self._retrying(
                lambda: self._sdk(
                    files.create,
                    file=(filename, data, "application/jsonl"),
                    purpose="batch",
                    what="POST /files",
                    timeout=max(self.settings.request_timeout, _TRANSFER_TIMEOUT),
                )  # fmt: skip
            )
        except APIError as exc:
            absent = self._absent(exc, "POST /files")
            if absent is exc:
                raise
            raise absent from exc
        return f.id

    async def create(self, file_id: str, metadata: dict[str, str], endpoint: str = ENDPOINT) -> BatchInfo:
        """Create the batch for ``file_id`` exactly once, even when the answer to the create is lost."""
        batches = self._client.batches

        async def create() -> BatchInfo:
            try:
                batch = await self._sdk(
                    batches.create,
                    what="POST /batches",
                    input_file_id=file_id,
                    endpoint=endpoint,
                    completion_window="24h",
                    metadata=metadata,
                )
            except (FatalAPIError, BadRequestError) as exc:
                absent = self._absent(exc, "POST /batches")
                if absent is exc:
                    raise
                raise absent from exc
            return _info(batch)

        # after a failure, the batch may exist already (created before the answer was lost)
        return await retrying(
            create,
            self.retry,
            sleep=self.sleep,
            recover=lambda: self.find(part=metadata.get(PART_KEY), file_id=file_id),
        )

    async def retrieve(self, batch_id: str) -> BatchInfo:
        batches = self._client.batches
        return _info(await self._retrying(lambda: self._sdk(batches.retrieve, batch_id, what="GET /batches/{id}")))

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the API to cancel; a batch that already finished is returned as it is."""
        batches = self._client.batches
        try:
            return _info(
                await self._retrying(lambda: self._sdk(batches.cancel, batch_id, what="POST /batches/{id}/cancel"))
            )
        except APIError as exc:
            if exc.status != 400:
                raise
            return await self.retrieve(batch_id)  # not cancellable any more: it finished meanwhile

    async def find(self, *, part: str | None, file_id: str | None) -> BatchInfo | None:
        """The batch created for ``part`` (by metadata) or from ``file_id``, among the recent ones."""
        batches = self._client.batches
        after: str | None = None
        seen = 0
        while seen < FIND_WINDOW:
            kwargs: dict[str, Any] = {"limit": 100}
            if after:
                kwargs["after"] = after
            page: Any = await self._retrying(
                partial(self._sdk, batches.list, what="GET /batches", expect="data", **kwargs)
            )
            data = list(page.data)
            for batch in data:
                meta = batch.metadata or {}
                if (part is not None and meta.get(PART_KEY) == part) or (file_id and batch.input_file_id == file_id):
                    return _info(batch)
            seen += len(data)
            if not data or not getattr(page, "has_more", False):
                return None
            after = data[-1].id
        return None

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The non-empty lines of an output or error file (downloaded whole, then split;
        a broken download is retried before any line is given out)."""
        files = self._client.files
        data: bytes = await self._retrying(lambda: self._read(files, file_id))
        for line in data.splitlines():
            if line.strip():
                yield line

    async def _read(self, files: Any, file_id: str) -> bytes:
        content = await self._sdk(
            files.content,
            file_id,
            what="GET /files/{id}/content",
            expect=None,
            timeout=max(self.settings.request_timeout, _TRANSFER_TIMEOUT),
        )
        return content.content

    async def delete_file(self, file_id: str) -> None:
        files = self._client.files
        await self._retrying(lambda: self._sdk(files.delete, file_id, what="DELETE /files/{id}"))

    async def discard(self, file_id: str | None) -> None:
        """Delete an uploaded input file whose batch has ended (or was never created); a
        failure is logged, never raised: the results are already safe."""
        if not file_id:
            return
        try:
            await self.delete_file(file_id)
        except APIError as exc:
            log.info("pandas-llm: could not delete input file %s: %s", file_id, exc)
