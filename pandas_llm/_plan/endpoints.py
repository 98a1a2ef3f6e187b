"""Endpoints other than chat: what a request to ``/moderations`` or ``/embeddings`` is.

A *kind* names an endpoint that takes a list of texts (``"input": [...]``) and answers
one result per text, in order. It says how to key one row, how to build a request body
from several rows, how to read the answer into one stored value per row, what one
request may hold, how to price it and how to turn the stored values into the verb's
result. Everything else (planning, dedup, the cache, the engine with its limiter and
retries, progress, ``last_run()``) is the chat machinery, unchanged; _run/grouping.py packs
the rows into requests and splits the answers back.

Cache keys are per row: sha256 of the key version, base URL, endpoint path and the
canonical one-row request ``{"input": text, "model": ..., "dimensions": ...}``, so a
row's answer is found again whatever other rows shared its request.

    >>> from pandas_llm._config import Settings
    >>> key, raw = Embeddings(dimensions=8).builder(Settings(model="text-embedding-3-small")).encode(
    ...     [{"role": "user", "content": "hi"}])
    >>> raw
    b'{"dimensions":8,"input":"hi","model":"text-embedding-3-small"}'
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .._backends import Completion
from .._backends.errors import error_in_answer
from .._cost.meter import Meter
from .._errors import BadRequestError, FatalAPIError, PandasLLMError, TemplateError
from .._pricing import Price, resolve_price
from .outcomes import Outcomes
from .requests import KEY_VERSION, TextCodec

__all__ = ["Moderations", "Embeddings", "MODERATION_CATEGORIES"]

_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY

#: omni-moderation-latest's categories, in the API's order (columns exist even when every row failed).
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)  # fmt: skip


class InputBuilder:
    """The planner's request builder for a list-input endpoint: one row = one text."""

    def __init__(self, settings: Any, path: str, params: Mapping[str, Any]):
        self.base = {"model": settings.model, **params}
        self._prefix = KEY_VERSION + (settings.endpoint + path).encode() + b"\n"

    def encode(self, messages: list[dict[str, Any]]) -> tuple[bytes, bytes]:
        """``(key, body)`` of the row's one-input request (the body is what the key hashes)."""
        raw = orjson.dumps({**self.base, "input": _text(messages)}, option=_OPTS)
        return hashlib.sha256(self._prefix + raw).digest(), raw

    def text_codec(self, head_messages: list[dict[str, Any]]) -> TextCodec | None:
        return TextCodec.build(self, head_messages)  # type: ignore[arg-type]


def _text(messages: list[dict[str, Any]]) -> str:
    if len(messages) != 1 or messages[0].get("role") != "user" or not isinstance(messages[0].get("content"), str):
        raise TemplateError(
            "moderate/embed send one text per row: the template (or function) must give a string, "
            "not chat messages or a system message"
        )
    return messages[0]["content"]


class _Kind:
    path = ""
    max_inputs = 1  # texts per request
    max_request_tokens: int | None = None  # summed over a request's texts
    wire: Mapping[str, Any] = {}  # body fields that change the encoding only, not the answer

    def params(self) -> dict[str, Any]:
        return {}

    def builder(self, settings: Any) -> InputBuilder:
        return InputBuilder(settings, self.path, self.params())

    def request(self, base: Mapping[str, Any], texts: list[str]) -> bytes:
        return orjson.dumps({**base, **self.wire, "input": texts})

    def outcomes(self, n: int) -> Outcomes:
        return Outcomes(n)

    def max_input_tokens(self, model: str) -> int | None:
        return None

    def parse(self, data: Mapping[str, Any], headers: Mapping[str, str] | None) -> Completion:
        raise NotImplementedError

    def read(self, raw: bytes, headers: Mapping[str, str] | None, *, endpoint: str, model: str | None) -> Completion:
        """The backends' reader of an HTTP 200 body (see :meth:`judge`)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = raw.decode("utf-8", "replace")
        return self.judge(data, headers, endpoint=endpoint, model=model)

    def judge(self, data: Any, headers: Mapping[str, str] | None, *, endpoint: str, model: str | None) -> Completion:
        """A 200 body as backends/answers.py judges chat ones: an error object is the error it
        names; a body that is not this endpoint's answer stops the run (resending would pay again)."""
        if isinstance(data, Mapping) and (data.get("error") or data.get("object") == "error"):
            raise error_in_answer(data, headers, endpoint=endpoint, model=model)
        try:
            return self.parse(data, headers)
        except (Unreadable, KeyError, IndexError, TypeError, AttributeError, ValueError):
            pass
        where = f"{endpoint} (model {model!r})" if model else endpoint
        raise FatalAPIError(
            f"HTTP 200 from {where} is not a {self.path} answer: {str(data)[:300]}. Check that base_url "
            f"({endpoint}) is an OpenAI-compatible endpoint that serves {self.path}. The run stopped rather than resend.",
            status=200,
            code="bad_response",
        )


class Moderations(_Kind):
    """``POST /moderations``: free; one ``{flagged, categories, category_scores}`` per text.

    32 texts per request: the API takes a list without a documented cap; small requests keep
    a failing text's request (split and resent) cheap and the low moderation RPM busy."""

    path = "/moderations"
    max_inputs = 32

    def meter(self, settings: Any) -> Meter:
        return _FreeMeter(settings.model)

    def parse(self, data: Mapping[str, Any], headers: Mapping[str, str] | None) -> Completion:
        outputs = []
        for r in data["results"]:
            one = {"flagged": r["flagged"], "categories": r["categories"], "category_scores": r["category_scores"]}
            if not isinstance(one["flagged"], bool) or not isinstance(one["categories"], dict):
                raise Unreadable("not a moderation result")
            outputs.append(orjson.dumps(one).decode())
        return Completion(None, "stop", 0, 0, 0, headers, outputs=outputs)

    def frame(self, outcomes: Outcomes, codes: np.ndarray, index: Any) -> Any:
        """``flagged`` (boolean), one boolean column per category, then one ``<category>_score``
        (Float64) per category; NA on rows without an answer."""
        import pandas as pd

        ok = np.flatnonzero(outcomes.status == "ok")
        parsed = {u: orjson.loads(outcomes.output[u]) for u in ok.tolist()}
        names = list(MODERATION_CATEGORIES)
        for r in parsed.values():
            names += [c for c in r["categories"] if c not in names]
        n = len(outcomes.status)
        take = np.maximum(codes, 0)
        missing = (codes < 0) | ~np.isin(take, ok) if len(codes) else np.zeros(0, bool)

        def column(values: np.ndarray, dtype: str) -> Any:
            out = values[take] if len(codes) else values[:0]
            arr = pd.array(out, dtype=dtype)
            arr[missing] = pd.NA
            return arr

        data: dict[str, Any] = {}
        flagged = np.full(n, None, dtype=object)
        for u, r in parsed.items():
            flagged[u] = r["flagged"]
        data["flagged"] = column(flagged, "boolean")
        for field, suffix, dtype in (("categories", "", "boolean"), ("category_scores", "_score", "Float64")):
            for name in names:
                values = np.full(n, None, dtype=object)
                for u, r in parsed.items():
                    values[u] = r[field].get(name)
                data[name + suffix] = column(values, dtype)
        return pd.DataFrame(data, index=index)


class Embeddings(_Kind):
    """``POST /embeddings``: one float32 vector per text, stored as its raw bytes.

    OpenAI's limits: 2,048 texts and 300,000 tokens per request, 8,191 tokens per text for
    text-embedding-3-* and ada-002. Vectors travel as base64 (``encoding_format``), as the
    openai SDK asks for them: 4 bytes a dimension, no float parsing. A server that answers
    floats is read too; one that answers a vector per token (llama-cpp-python's server with
    a generative model, which has no pooling) gets their mean, one vector per text; as that
    server mixes the texts of a list answered so, they are then sent one per request."""

    path = "/embeddings"
    max_inputs = 2048
    max_request_tokens = 300_000
    wire = {"encoding_format": "base64"}

    def __init__(self, dimensions: int | None = None):
        self.dimensions = dimensions

    def params(self) -> dict[str, Any]:
        return {} if self.dimensions is None else {"dimensions": self.dimensions}

    def max_input_tokens(self, model: str) -> int | None:
        name = model.lower().rpartition("/")[2]
        return 8191 if name.startswith(("text-embedding-3-", "text-embedding-ada-002")) else None

    def meter(self, settings: Any) -> Meter:
        model = settings.model
        provider = "openai" if model.lower().startswith("text-embedding-") and settings.prices is None else None
        return Meter(model, resolve_price(model, settings.prices, provider=provider))

    def outcomes(self, n: int) -> Outcomes:
        return VectorOutcomes(n, self.dimensions)

    def parse(self, data: Mapping[str, Any], headers: Mapping[str, str] | None) -> Completion:
        items = sorted(data["data"], key=lambda d: d["index"])
        if [d["index"] for d in items] != list(range(len(items))):
            raise Unreadable("embedding indexes are not 0..n-1")
        if len(items) > 1 and any(_per_token(d["embedding"]) for d in items):
            raise BadRequestError(PER_TOKEN_LIST, code="per_token_list")
        outputs = [_vector_bytes(d["embedding"]) for d in items]
        usage = data.get("usage") or {}
        return Completion(None, "stop", usage.get("prompt_tokens") or 0, 0, 0, headers, outputs=outputs)


#: The error of a list answered with one vector per token (_run/grouping.py resends its texts one by one).
PER_TOKEN_LIST = (
    "the server answered one vector per token for a list input; llama-cpp-python's server mixes the texts "
    "of one such request, so they are sent one per request"
)


def _per_token(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], list)


def _vector_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            raw = binascii.a2b_base64(value)
        except ValueError as exc:
            raise Unreadable(f"not base64: {exc}") from exc
        if len(raw) % 4:
            raise Unreadable("not float32 bytes")
        return raw
    if _per_token(value):
        # one vector per token (llama-cpp-python's server with a model without pooling): their mean
        return np.asarray(value, dtype=np.float64).mean(axis=0).astype("<f4").tobytes()
    if isinstance(value, list):  # servers that ignore encoding_format (llama.cpp) send floats
        return np.asarray(value, dtype="<f4").tobytes()
    raise Unreadable("not an embedding")


class _FreeMeter(Meter):
    """The moderation endpoint is free: every request costs $0 (shown as such, not 'unknown')."""

    def __init__(self, model: str):
        super().__init__(model, Price.per_million(input=0.0, output=0.0))

    def cost(self, c: Completion) -> float | None:
        return 0.0


class _Vectors:
    """``Outcomes.output`` for embeddings: each answer's float32 bytes go straight into one
    ``(n, dims)`` matrix (no Python object kept per row); the matrix is made at the first vector."""

    def __init__(self, n: int, dims: int | None):
        self.n, self.dims = n, dims
        self.matrix: np.ndarray | None = None

    def __setitem__(self, u: Any, value: Any) -> None:
        if isinstance(u, (int, np.integer)):
            if value is None:
                return
            if self.matrix is not None and len(value) == 4 * self.matrix.shape[1]:  # the engine's path: one row
                self.matrix[u] = np.frombuffer(value, dtype="<f4")
            else:
                self._put(np.asarray([u]), [value])
            return
        us = np.asarray(u)
        keep = [i for i, v in enumerate(value) if v is not None]
        if keep:
            self._put(us[keep], [value[i] for i in keep])

    def _put(self, us: np.ndarray, values: list[bytes]) -> None:
        raw = b"".join(values)
        dims = len(raw) // (4 * len(values))
        if self.matrix is None:
            self.dims = self.dims or dims
            self.matrix = np.full((self.n, self.dims), np.nan, dtype=np.float32)
        width = self.matrix.shape[1]  # the dimensions, known from here on
        if any(len(v) != 4 * width for v in values):
            raise EmbeddingShapeError(
                f"the endpoint answered vectors of different lengths (expected {width} dimensions); "
                "pass dimensions= or check the model"
            )
        self.matrix[us] = np.frombuffer(raw, dtype="<f4").reshape(len(values), width)

    def __getitem__(self, u: Any) -> Any:
        return None  # the vectors are read through VectorOutcomes.matrix


class Unreadable(PandasLLMError):
    """A 200 body that is not this endpoint's answer (judged by ``_Kind.judge``)."""


class EmbeddingShapeError(PandasLLMError):
    """Vectors of one run had different lengths."""


class VectorOutcomes(Outcomes):
    """Outcomes whose answers are vectors in one float32 matrix."""

    def __init__(self, n: int, dims: int | None):
        super().__init__(n)
        self.vectors = _Vectors(n, dims)
        self.output = self.vectors  # type: ignore[assignment]

    def array(self, codes: np.ndarray) -> np.ndarray:
        """``(n_rows, dims)`` float32; NaN rows where a row has no vector. The per-request
        matrix itself when every row asked a different text (no copy)."""
        v = self.vectors
        missing = self.status != "ok"
        if v.matrix is None:
            return np.full((len(codes), v.dims or 0), np.nan, dtype=np.float32)
        if missing.any():
            v.matrix[missing] = np.nan  # a failed rerun never overwrote an ok vector: these were never set
        n = len(codes)
        if n == v.n and (n == 0 or (codes[0] == 0 and codes[-1] == n - 1 and (np.diff(codes) == 1).all())):
            return v.matrix
        out = v.matrix[np.maximum(codes, 0)]
        out[codes < 0] = np.nan
        return out

    def details(self, codes: np.ndarray, index: Any) -> Any:
        self.output = np.full(len(self.status), None, dtype=object)  # the base class reads texts
        try:
            return super().details(codes, index).drop(columns="output")
        finally:
            self.output = self.vectors  # type: ignore[assignment]
