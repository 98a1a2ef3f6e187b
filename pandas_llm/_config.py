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
import math
import numbers
import os
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import ConfigError, redact

__all__ = ["Settings", "BatchLimits", "settings", "configure", "current_settings", "GENERATION_PARAMS"]

DEFAULT_CACHE = os.path.join(".pandas_llm", "cache.sqlite")
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 60.0  # seconds per request when timeout= is not given (and no client= brings its own)

#: Chat-completions parameters that change the answer; passed through by their API names.
GENERATION_PARAMS = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "seed",
        "stop",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "reasoning_effort",
        "verbosity",
        "service_tier",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "modalities",
        "prediction",
        "user",
        "store",
        "metadata",
    }
)


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


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a run needs besides the frame and the template.

    ``params`` holds the generation parameters (temperature, max_tokens, seed, ...);
    ``extra_body`` holds anything else the endpoint accepts. Both are part of the cache key.
    ``structured`` ("json_schema" | "json_object"), ``rows_per_request`` (packing) and
    ``invalid_retries`` (resends of an answer that fails its schema) serve the schema verbs.
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
    na: str = "skip"
    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    deadline: float | None = None
    structured: str = "json_schema"
    rows_per_request: int = 1
    invalid_retries: int = 2
    mode: str = "realtime"  # realtime | batch | auto (batch from batch_threshold requests to send)
    batch_threshold: int = 5000
    #: mode="batch" with rows_per_request: rows a pack did not answer go alone "realtime" | "batch"
    packed_fallback: str = "realtime"
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
        if (
            isinstance(self.batch_threshold, bool)
            or not isinstance(self.batch_threshold, int)
            or self.batch_threshold < 1
        ):
            raise ConfigError(f"batch_threshold must be a whole number >= 1, got {self.batch_threshold!r}")
        if not (_is_number(self.poll_interval) and self.poll_interval > 0):
            raise ConfigError(f"poll_interval must be a positive number of seconds, got {self.poll_interval!r}")
        if isinstance(self.batch_limits, Mapping):
            unknown = set(self.batch_limits) - {"requests", "file_bytes", "enqueued_tokens"}
            if unknown:
                raise ConfigError(
                    f"unknown batch_limits key(s) {sorted(unknown)}; use requests, file_bytes, enqueued_tokens"
                )
            object.__setattr__(self, "batch_limits", BatchLimits(**self.batch_limits))
        elif not isinstance(self.batch_limits, BatchLimits):
            raise ConfigError(
                "batch_limits must be a BatchLimits or a dict such as {'requests': 10000, 'enqueued_tokens': 2_000_000}"
            )
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must be a non-empty string, e.g. model='gpt-4o-mini'")
        if not _is_whole(self.concurrency) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        if self.timeout is not None and not (_is_number(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds or None, got {self.timeout!r}")
        if not _is_whole(self.max_attempts) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be a whole number >= 1, got {self.max_attempts!r}")
        if self.na not in ("skip", "empty"):
            raise ConfigError(
                f"na must be 'skip' (NA cells give NA without a call) or 'empty' "
                f"(NA cells render as ''), got {self.na!r}"
            )
        for name in ("rpm", "tpm", "max_cost", "deadline"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
        if self.structured not in ("json_schema", "json_object"):
            raise ConfigError(
                "structured must be 'json_schema' (the standard structured-output request) or "
                f"'json_object' (for servers with JSON mode only, e.g. llama.cpp), got {self.structured!r}"
            )
        for name in ("rows_per_request", "invalid_retries"):
            value, low = getattr(self, name), 1 if name == "rows_per_request" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError("system must be a string (the system message) or None")
        if self.prices is not None:
            _check_prices(self.prices)
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


def _is_whole(value: Any) -> bool:
    """An integer, not a bool (``concurrency=True`` is a mistake, not 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    """A real number, not a bool, not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and value == value


def _in_range(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: _is_number(v) and low <= v <= high


def _whole_from(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: _is_whole(v) and low <= v <= high


def _stop(v: Any) -> bool:
    if isinstance(v, str):
        return True
    return isinstance(v, (list, tuple)) and 1 <= len(v) <= 4 and all(isinstance(x, str) for x in v)


def _logit_bias(v: Any) -> bool:
    if not isinstance(v, Mapping):
        return False
    for token, bias in v.items():
        if not (_is_whole(token) or (isinstance(token, str) and token.isdigit())):
            return False
        if not (_is_number(bias) and -100 <= bias <= 100):
            return False
    return True


def _of(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, types) and not (bool not in types and isinstance(v, bool))


#: The chat-completions parameters checked before any request: name -> (check, what the API takes).
PARAM_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_in_range(0, 2), "a number from 0 to 2"),
    "top_p": (_in_range(0, 1), "a number from 0 to 1"),
    "max_tokens": (_whole_from(1), "a whole number >= 1 (tokens)"),
    "max_completion_tokens": (_whole_from(1), "a whole number >= 1 (tokens)"),
    "frequency_penalty": (_in_range(-2, 2), "a number from -2 to 2"),
    "presence_penalty": (_in_range(-2, 2), "a number from -2 to 2"),
    "seed": (_is_whole, "a whole number"),
    "stop": (_stop, "a string or a list of 1 to 4 strings"),
    "logprobs": (_of(bool), "True or False"),
    "top_logprobs": (_whole_from(0, 20), "a whole number from 0 to 20"),
    "logit_bias": (_logit_bias, "a dict {token id: bias from -100 to 100}"),
    "response_format": (_of(Mapping), "a dict such as {'type': 'json_object'} (or pass schema=)"),
    "reasoning_effort": (_of(str), "a string such as 'low', 'medium' or 'high'"),
    "verbosity": (_of(str), "a string such as 'low', 'medium' or 'high'"),
    "service_tier": (_of(str), "a string such as 'auto', 'default' or 'flex'"),
    "tools": (_of(list, tuple), "a list of tool definitions"),
    "tool_choice": (_of(str, Mapping), "'none', 'auto', 'required' or a dict"),
    "parallel_tool_calls": (_of(bool), "True or False"),
    "modalities": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings"),
    "prediction": (_of(Mapping), "a dict"),
    "user": (_of(str), "a string"),
    "store": (_of(bool), "True or False"),
    "metadata": (
        lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
        "a dict of strings",
    ),  # fmt: skip
}


def check_params(params: Mapping[str, Any]) -> None:
    """Raise ConfigError for a generation parameter the API would refuse (or, worse, accept
    and bill): checked before any request, with the API's name and range in the message.

        >>> check_params({"temperature": "hot"})
        Traceback (most recent call last):
        ...
        pandas_llm._errors.ConfigError: temperature='hot': the API takes a number from 0 to 2
    """
    for name, value in params.items():
        rule = PARAM_CHECKS.get(name)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{name}={value!r}: the API takes {rule[1]}")


def _check_prices(prices: Any) -> None:
    from ._pricing import Price

    if isinstance(prices, Price):
        return
    if isinstance(prices, Mapping) and all(isinstance(k, str) and isinstance(v, Price) for k, v in prices.items()):
        return
    raise ConfigError(
        "prices must be a pandas_llm.Price, e.g. prices=Price.per_million(input=0.15, output=0.60) "
        f"(USD per million tokens), or a dict {{model name: Price}}; got {prices!r}"
    )


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
