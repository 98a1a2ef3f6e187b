"""``POST /v1/embeddings`` and ``POST /v1/moderations`` for the loopback server.

Answers are deterministic functions of each input text, so a test can compute them:

- an embedding is a unit float32 vector drawn from ``shake_256(text)``: identical texts
  give identical vectors, different texts different ones. ``dimensions`` shortens it
  (default 1536; 3072 for ``*-large``); ``encoding_format="base64"`` sends float32 bytes.
- a moderation flags the categories of the keywords in the text (:data:`KEYWORDS`),
  score 0.9 for those and below 0.05 for the others.

Limits as OpenAI's: at most 2,048 inputs, 8,191 tokens per input and 300,000 per request
for embeddings (400 otherwise, the whole request); an empty text is a 400 naming it
(``Invalid 'input[3]'``). The server's faults apply: ``srv.inject(..., match=)`` matches
any input of the request; ``srv.refuse_input(match)`` makes requests holding a matching
text fail with a 400 naming its index; rate limits count the inputs' tokens.

    >>> from pandas_llm.testing import LLMServer
    >>> import openai
    >>> with LLMServer() as srv:
    ...     client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
    ...     r = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=4)
    ...     m = client.moderations.create(model="omni-moderation-latest", input="I will kill you")
    ...     client.close()
    >>> len(r.data[1].embedding), m.results[0].flagged, srv.count("a")
    (4, True, 1)
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import numpy as np
import orjson

from ._http import Request, Response, error_response, later
from .answers import estimate_tokens

__all__ = ["KEYWORDS", "embedding_for", "moderation_for", "ListEndpoints"]

CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)  # fmt: skip

#: A text containing a keyword (any case) is flagged for its categories.
KEYWORDS = {
    "kill": ("violence", "harassment", "harassment/threatening"),
    "hate": ("hate",),
    "suicide": ("self-harm", "self-harm/intent"),
    "bomb": ("illicit", "illicit/violent", "violence"),
    "steal": ("illicit",),
    "nsfw": ("sexual",),
    "gore": ("violence", "violence/graphic"),
}

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8191
MAX_REQUEST_TOKENS = 300_000


def _dims(model: str) -> int:
    return 3072 if "large" in model else 1536


def embedding_for(text: str, dimensions: int) -> np.ndarray:
    """The server's vector for ``text``: float32, unit length, ``(dimensions,)``."""
    raw = np.frombuffer(hashlib.shake_256(text.encode()).digest(4 * dimensions), dtype=np.int32)
    v = raw.astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def moderation_for(text: str) -> dict[str, Any]:
    """The server's moderation result for ``text``."""
    low = text.lower()
    hit = {c for word, cats in KEYWORDS.items() if word in low for c in cats}
    seed = hashlib.sha256(text.encode()).digest()
    scores = {c: (0.9 if c in hit else seed[i] / 255 * 0.05) for i, c in enumerate(CATEGORIES)}
    return {
        "flagged": bool(hit),
        "categories": {c: c in hit for c in CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
    }


class ListEndpoints:
    """The two list-input endpoints of one ``LLMServer`` (its faults, limits and counters)."""

    def __init__(self, server: Any):
        self.server = server
        self._refuse: list[list[Any]] = []  # [match, times]
        server.routes[("POST", "/v1/embeddings")] = lambda r: self._handle(r, self.embeddings_body)
        server.routes[("POST", "/v1/moderations")] = lambda r: self._handle(r, self.moderations_body)

    def refuse_input(self, match: str, *, times: int = 1_000_000) -> None:
        """Requests holding a text that contains ``match`` get a 400 naming its index, as
        OpenAI refuses a whole list for one bad input (the next ``times`` such requests)."""
        with self.server._lock:
            self._refuse.append([match, times])

    def _handle(self, request: Request, answer: Any) -> Any:
        srv = self.server
        with srv._lock:
            srv.requests += 1
        resp = self._response(request, answer)
        if resp is None:
            import asyncio

            return asyncio.get_running_loop().create_future()
        if srv.latency > 0:
            return later(srv.latency, resp)
        return resp

    def _response(self, request: Request, answer: Any) -> Response | None:
        srv = self.server
        headers = srv.limiter.headers()
        denied = srv.check_auth(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(request.body)
            texts = input_texts(body)
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"Invalid JSON body: {exc}", headers=headers)
        except InvalidInput as exc:
            return error_response(400, str(exc), param=exc.param, headers=headers)
        if srv.strict_models and body.get("model") not in srv.models:
            return error_response(
                404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                "invalid_request_error", "model_not_found", "model", headers,
            )  # fmt: skip
        refused = self._refused(texts)
        if refused is not None:
            return error_response(400, f"Invalid 'input[{refused}]': the test server refuses this input.",
                                  param=f"input[{refused}]", headers=headers)  # fmt: skip
        if srv._faults:
            for text in texts:
                fault = srv._take_fault(text)
                if fault is not None:
                    return None if fault.hang else srv._fault_response(fault, headers)
        if srv.error_rate:
            random_fault = srv._random_fault(headers)
            if random_fault is not None:
                return random_fault
        try:
            data, tokens = answer(body, texts)
        except InvalidInput as exc:
            return error_response(400, str(exc), param=exc.param, headers=headers)
        decision = srv.limiter.acquire(tokens)
        if not decision.allowed:
            with srv._lock:
                srv.rate_limited += 1
            from .limits import rate_limit_response

            return rate_limit_response(body["model"], decision)
        with srv._lock:
            srv.completed += 1
            srv.prompt_tokens += tokens
            for text in texts:
                srv._counts[text] += 1
        return Response(200, orjson.dumps(data), decision.headers)

    def _refused(self, texts: list[str]) -> int | None:
        if not self._refuse:
            return None
        with self.server._lock:
            for rule in self._refuse:
                for i, text in enumerate(texts):
                    if rule[0] in text:
                        rule[1] -= 1
                        if rule[1] <= 0:
                            self._refuse.remove(rule)
                        return i
        return None

    def embeddings_body(self, body: dict[str, Any], texts: list[str]) -> tuple[dict[str, Any], int]:
        """The 200 body of an embeddings request and its prompt tokens (raises InvalidInput)."""
        model = body["model"]
        dims = body.get("dimensions")
        full = _dims(model)
        if dims is None:
            dims = full
        elif isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= full:
            raise InvalidInput(f"Invalid 'dimensions': expected an integer in [1, {full}], got {dims!r}.", "dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise InvalidInput(f"Invalid 'encoding_format': {fmt!r}.", "encoding_format")
        counts = [estimate_tokens(t) for t in texts]
        for n in counts:
            if n > MAX_INPUT_TOKENS:
                raise InvalidInput(
                    f"This model's maximum context length is {MAX_INPUT_TOKENS + 1} tokens, however you "
                    f"requested {n} tokens ({n} in your prompt; 0 for the completion). Please reduce your prompt."
                )
        total = sum(counts)
        if total > MAX_REQUEST_TOKENS:
            raise InvalidInput(f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request", "input")
        data = []
        for i, text in enumerate(texts):
            v = embedding_for(text, dims)
            value: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": total, "total_tokens": total}
        return {"object": "list", "data": data, "model": model, "usage": usage}, total

    def moderations_body(self, body: dict[str, Any], texts: list[str]) -> tuple[dict[str, Any], int]:
        """The 200 body of a moderations request and its tokens (for the rate limiter)."""
        results = [moderation_for(t) for t in texts]
        answer = {"id": f"modr-{int(time.time() * 1000)}", "model": body["model"], "results": results}
        return answer, sum(estimate_tokens(t) for t in texts)


class InvalidInput(ValueError):
    """A list endpoint's request is invalid (a 400 naming ``param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def input_texts(body: Any) -> list[str]:
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("you must provide a model parameter", "model")
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise InvalidInput("'input' must be a string or a non-empty array of strings.", "input")
    if len(texts) > MAX_INPUTS:
        raise InvalidInput(f"'input' holds {len(texts)} items, the maximum is {MAX_INPUTS}.", "input")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t:
            raise InvalidInput(f"Invalid 'input[{i}]': expected a non-empty string.", f"input[{i}]")
    return texts
