"""Settings: frozen, keyword-only value objects with session and ``with``-block defaults.

Every verb (``map``, ``classify``, ...) takes the same keywords; whatever a call does not
pass comes from the current defaults, which can be set once for the session or for a block:

    >>> import pandas_llm
    >>> with pandas_llm.settings(model="gpt-4.1-mini", concurrency=4):
    ...     pandas_llm.current_settings().concurrency
    4
    >>> pandas_llm.current_settings().concurrency
    16

Scoping uses a ContextVar, so a ``with`` block in one thread or task never leaks into another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ConfigError, redact
from ._params import CHAT_FIELDS, GENERATION_PARAMS, check_params, check_positive, check_whole, is_number, is_whole

__all__ = ["Settings", "BatchLimits", "settings", "configure", "current_settings", "CHAT_FIELDS", "GENERATION_PARAMS"]

DEFAULT_CACHE = os.path.join(".pandas_llm", "cache.sqlite")
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 60.0  # seconds per request when timeout= is not given (and no client= brings its own)


@dataclass(frozen=True, kw_only=True)
class BatchLimits:
    """How a Batch API job is split: requests and bytes per batch file (the API's limits),
    and an optional budget of prompt tokens enqueued at once (the account's enqueued-token
    limit for the model); parts over the budget wait until earlier batches finish.

        >>> BatchLimits(requests=1000).file_bytes
        200000000
    """

    requests: int = 50_000
    file_bytes: int = 200_000_000
    enqueued_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests", "file_bytes", "enqueued_tokens"):
            value = getattr(self, name)
            if value is None and name == "enqueued_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BatchLimits.{name} must be a whole number >= 1, got {value!r}")


Mode = Literal["realtime", "batch", "auto"]
Structured = Literal["json_schema", "json_object"]
Fallback = Literal["realtime", "batch"]
NA = Literal["skip", "empty"]


@dataclass(frozen=True)
class Pacing:
    """How fast requests go: at most ``concurrency`` requests in flight, ``rpm`` requests and
    ``tpm`` tokens per minute (None: learned from the endpoint's rate-limit headers)."""

    concurrency: int
    rpm: float | None
    tpm: float | None

    def __post_init__(self) -> None:
        if not is_whole(self.concurrency) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        check_positive("rpm", self.rpm)
        check_positive("tpm", self.tpm)


@dataclass(frozen=True)
class Patience:
    """How long to wait: ``timeout`` seconds per request (None: 60, or a ``client=``'s own),
    ``max_attempts`` sends of one request (retries included; a 429 at the account's rate
    limit does not count: retried until the deadline), ``deadline`` seconds for the
    whole run (None: none)."""

    timeout: float | None
    max_attempts: int
    deadline: float | None

    def __post_init__(self) -> None:
        if self.timeout is not None and not (is_number(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds or None, got {self.timeout!r}")
        if not is_whole(self.max_attempts) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be a whole number >= 1, got {self.max_attempts!r}")
        check_positive("deadline", self.deadline)


@dataclass(frozen=True)
class Spending:
    """Money: ``max_cost`` dollars at most for the run (None: no cap); ``prices`` a Price
    (dollars per token) for every model, or ``{model: Price}`` (None: the price table)."""

    max_cost: float | None
    prices: Any

    def __post_init__(self) -> None:
        from ._pricing import Price

        check_positive("max_cost", self.max_cost)
        prices = self.prices
        if prices is None or isinstance(prices, Price):
            return
        if not (
            isinstance(prices, Mapping) and all(isinstance(k, str) and isinstance(v, Price) for k, v in prices.items())
        ):
            raise ConfigError(
                "prices must be a pandas_llm.Price, e.g. prices=Price.per_million(input=0.15, output=0.60) "
                f"(USD per million tokens), or a dict {{model name: Price}}; got {prices!r}"
            )


@dataclass(frozen=True)
class Answers:
    """How structured answers are asked for: ``structured`` (the request's response format),
    ``rows_per_request`` rows packed in one request, ``invalid_retries`` resends of an answer
    that fails its schema."""

    structured: Structured
    rows_per_request: int
    invalid_retries: int

    def __post_init__(self) -> None:
        if self.structured not in ("json_schema", "json_object"):
            raise ConfigError(
                "structured must be 'json_schema' (the standard structured-output request) or "
                f"'json_object' (for servers with JSON mode only, e.g. llama.cpp), got {self.structured!r}"
            )
        check_whole("rows_per_request", self.rows_per_request, 1)
        check_whole("invalid_retries", self.invalid_retries, 0)


@dataclass(frozen=True)
class BatchOptions:
    """The Batch API: ``mode``; ``batch_threshold`` requests to send from which ``"auto"``
    goes batch; ``packed_fallback`` for rows a pack did not answer; ``poll_interval`` seconds
    between polls at first; ``batch_limits`` (requests, bytes, tokens per batch file)."""

    mode: Mode
    batch_threshold: int
    packed_fallback: Fallback
    poll_interval: float
    batch_limits: BatchLimits

    def __post_init__(self) -> None:
        if self.mode not in ("realtime", "batch", "auto"):
            raise ConfigError(
                f"mode must be 'realtime', 'batch' (the Batch API: half price, results within 24h) "
                f"or 'auto' (batch from batch_threshold requests), got {self.mode!r}"
            )
        if self.packed_fallback not in ("realtime", "batch"):
            raise ConfigError(
                "packed_fallback must be 'realtime' (rows a packed batch did not answer are sent alone at once, "
                f"at realtime prices) or 'batch' (in one more batch of single-row requests), got {self.packed_fallback!r}"
            )
        check_whole("batch_threshold", self.batch_threshold, 1)
        if not (is_number(self.poll_interval) and self.poll_interval > 0):
            raise ConfigError(f"poll_interval must be a positive number of seconds, got {self.poll_interval!r}")
        if not isinstance(self.batch_limits, BatchLimits):
            raise ConfigError(
                "batch_limits must be a BatchLimits or a dict such as {'requests': 10000, 'enqueued_tokens': 2_000_000}"
            )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a run needs besides the frame and the template.

    ``params`` holds the generation parameters (temperature, max_tokens, seed, ...);
    ``extra_body`` anything else the endpoint accepts; both are part of the cache key. The
    other fields are read in groups, with their units: ``pacing``, ``patience``,
    ``spending``, ``answers`` (the schema verbs) and ``batch``.
    """

    model: str = "gpt-4o-mini"
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int = 16
    cache: str | os.PathLike | bool = True
    progress: Any = True  # True | False | "text" (the tqdm bar, in a kernel too) | an observer
    timeout: float | None = None  # seconds per request; None: 60 (DEFAULT_TIMEOUT), a client= keeps its own
    max_attempts: int = 6
    base_url: str | None = None
    api_key: str | None = None
    client: Any = None
    na: NA = "skip"
    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    deadline: float | None = None
    structured: Structured = "json_schema"
    rows_per_request: int = 1
    invalid_retries: int = 2
    mode: Mode = "realtime"  # realtime | batch | auto (batch from batch_threshold requests to send)
    batch_threshold: int = 5000
    #: mode="batch" with rows_per_request: rows a pack did not answer go alone "realtime" | "batch"
    packed_fallback: Fallback = "realtime"
    poll_interval: float = 5.0  # first wait between Batch API polls; grows to 12x while nothing changes
    batch_limits: BatchLimits = field(default_factory=BatchLimits)
    prices: Any = None  # a pricing.Price for every model, or {model: Price}; None: the price table

    def __post_init__(self) -> None:
        progress = self.progress
        if not (
            isinstance(progress, bool) or progress is None or (isinstance(progress, str) and progress == "text")
            or (not isinstance(progress, str) and all(callable(getattr(progress, m, None)) for m in ("start", "update", "close")))
        ):  # fmt: skip
            raise ConfigError(
                "progress must be True (a widget in Jupyter, a tqdm bar elsewhere), 'text' (the tqdm "
                "bar everywhere, for frontends that cannot draw widgets), False (nothing), or an "
                f"object with start/update/close methods; got {progress!r}"
            )
        if isinstance(self.batch_limits, Mapping):
            unknown = set(self.batch_limits) - {"requests", "file_bytes", "enqueued_tokens"}
            if unknown:
                raise ConfigError(
                    f"unknown batch_limits key(s) {sorted(unknown)}; use requests, file_bytes, enqueued_tokens"
                )
            object.__setattr__(self, "batch_limits", BatchLimits(**self.batch_limits))
        # the groups check their own fields; built once, read by the stages that need them
        batch = BatchOptions(
            self.mode, self.batch_threshold, self.packed_fallback, self.poll_interval, self.batch_limits
        )
        object.__setattr__(self, "_batch", batch)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must be a non-empty string, e.g. model='gpt-4o-mini'")
        object.__setattr__(self, "_pacing", Pacing(self.concurrency, self.rpm, self.tpm))
        object.__setattr__(self, "_patience", Patience(self.timeout, self.max_attempts, self.deadline))
        if self.na not in ("skip", "empty"):
            raise ConfigError(
                f"na must be 'skip' (NA cells give NA without a call) or 'empty' "
                f"(NA cells render as ''), got {self.na!r}"
            )
        object.__setattr__(self, "_answers", Answers(self.structured, self.rows_per_request, self.invalid_retries))
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError("system must be a string (the system message) or None")
        object.__setattr__(self, "_spending", Spending(self.max_cost, self.prices))
        if not (isinstance(self.cache, (bool, str, os.PathLike)) or self.cache is None):
            raise ConfigError(
                f"cache must be True (the default file {DEFAULT_CACHE}), a path such as "
                f"cache='answers.sqlite', or False (no file), got {self.cache!r}"
            )
        for name in ("base_url", "api_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or None, got {type(value).__name__}")
        if not isinstance(self.params, Mapping) or not isinstance(self.extra_body, Mapping):
            raise ConfigError("params= and extra_body= must be dicts of request fields")
        unknown = set(self.params) - GENERATION_PARAMS
        if unknown:
            raise ConfigError(_unknown_message(sorted(unknown)))
        check_params(self.params)

    # The settings in small groups, each a frozen value with its units (read-only views).
    @property
    def pacing(self) -> Pacing:
        return self._pacing  # type: ignore[attr-defined]

    @property
    def patience(self) -> Patience:
        return self._patience  # type: ignore[attr-defined]

    @property
    def spending(self) -> Spending:
        return self._spending  # type: ignore[attr-defined]

    @property
    def batch(self) -> BatchOptions:
        return self._batch  # type: ignore[attr-defined]

    @property
    def answers(self) -> Answers:
        return self._answers  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        # the key is masked: a settings object shown in a notebook must not write it into the .ipynb
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = mask_key(value) if f.name == "api_key" else repr(value)
            parts.append(f"{f.name}={shown}")
        return redact(f"{type(self).__name__}({', '.join(parts)})")

    __str__ = __repr__

    @property
    def effective_api_key(self) -> str | None:
        """The API key the library's own connections send: ``api_key``, else the
        ``OPENAI_API_KEY`` environment variable (None: neither is set)."""
        return self.api_key or os.environ.get("OPENAI_API_KEY")

    @property
    def cache_path(self) -> str | None:
        """The sidecar file, or None when caching is off (an in-memory store is used)."""
        if self.cache is False or self.cache is None:
            return None
        if self.cache is True:
            return DEFAULT_CACHE
        return os.fspath(self.cache)

    @property
    def request_timeout(self) -> float:
        """Seconds to wait for one answer on the library's own connections: ``timeout``, else 60.
        A user's ``client=`` keeps its own timeout unless ``timeout=`` is given."""
        return DEFAULT_TIMEOUT if self.timeout is None else float(self.timeout)

    @property
    def endpoint(self) -> str:
        """The base URL requests go to; part of the cache key (never the API key)."""
        if self.client is not None and hasattr(self.client, "base_url"):
            return str(self.client.base_url).rstrip("/")
        if self.client is not None and isinstance(getattr(self.client, "endpoint", None), str):
            return self.client.endpoint.rstrip("/")  # a Backend object (pandas_llm.testing.MockBackend)
        if self.client is not None:
            fn = self.client
            return f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")

    def merged(self, **overrides: Any) -> Settings:
        """A copy with ``overrides`` applied; generation parameters go into ``params``."""
        own = {f.name for f in dataclasses.fields(self)}
        params = dict(self.params)
        direct: dict[str, Any] = {}
        unknown = []
        for key, value in overrides.items():
            if key in own and key != "params":
                direct[key] = value
            elif key == "params":
                params.update(value or {})
            elif key in GENERATION_PARAMS:
                if value is None:
                    params.pop(key, None)
                else:
                    params[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(_unknown_message(unknown))
        return dataclasses.replace(self, params=params, **direct)


def mask_key(key: Any) -> str:
    """How an API key is shown: never the key itself.

    >>> mask_key("sk-proj-abcdef0123456789"), mask_key(None)
    ("'[redacted]'", 'None')
    """
    return "None" if key is None else "'[redacted]'"


def _unknown_message(names: list[str]) -> str:
    known = sorted(GENERATION_PARAMS | {f.name for f in dataclasses.fields(Settings)})
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"unknown keyword {', '.join(hints)}. Generation parameters use their API names "
        f"(temperature, max_tokens, top_p, seed, stop, ...); pass anything else the "
        f"endpoint accepts as extra_body={{...}}."
    )


_defaults: ContextVar[Settings] = ContextVar("pandas_llm_settings")
_session = Settings()


def current_settings() -> Settings:
    """The defaults in force here: the innermost ``settings()`` block, else the session's."""
    return _defaults.get(_session)


def configure(**overrides: Any) -> Settings:
    """Set session-wide defaults, e.g. ``pandas_llm.configure(model="gpt-4.1-mini")``."""
    global _session
    _session = _session.merged(**overrides)
    return _session


@contextlib.contextmanager
def settings(**overrides: Any) -> Iterator[Settings]:
    """Defaults for a ``with`` block only."""
    token = _defaults.set(current_settings().merged(**overrides))
    try:
        yield _defaults.get()
    finally:
        _defaults.reset(token)
