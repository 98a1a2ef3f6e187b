"""The rate limits learned from a server, kept for the next run: in this process, and on disk.

A first call that knows nothing waits for the first answer's ``x-ratelimit-*`` headers
before sending more than a few requests (limiter.py: one round trip, ~4% of a 5,000-row
run at 100 ms latency and concurrency 200). What a run learns is kept per endpoint,
model and account, so the next run needs no such round trip:

- in this process (a notebook's second call);
- in ``limits.json`` in the user's cache folder (``$XDG_CACHE_HOME/pandas-llm``, by
  default ``~/.cache/pandas-llm``), so a restarted kernel or a new script starts at the
  pace the server allowed last time. Entries older than :data:`FILE_TTL` are not used
  (an account's limits change when its tier does), and the first answer's headers
  correct any figure that changed since. The account is a hash of the API key (the
  first 16 hex digits of its SHA-256), never the key.

The file is a speed-up only (_kept.py): when it cannot be read or written, runs learn
from the headers as before (a debug log line says why). A user's ``rpm=``/``tpm=`` is a ceiling
that what is remembered never raises.
"""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Any

from .._kept import KeptFile

__all__ = ["account", "remember", "remembered_limits", "limits_file", "FILE_TTL", "LIMITS"]

#: Seconds a figure in the file is used for: a week.
FILE_TTL = 7 * 86400.0

#: The file (``limits.json``); entries ``{"rpm": ..., "tpm": ..., "at": ...}``.
LIMITS = KeptFile("limits.json", ttl=FILE_TTL, what="learned limits", thread="pandas-llm-limits")

Key = tuple[str, ...]  # (endpoint, model) or (endpoint, model, account)

_registry: dict[Key, list[float | None]] = {}
_registry_lock = threading.Lock()


def account(settings: Any) -> str:
    """Which account a run's requests count against: a hash of its API key ('' when none).
    The key is the user's ``client``'s, else ``api_key=``, else ``OPENAI_API_KEY``."""
    client = settings.client
    if client is not None:
        key = getattr(client, "api_key", None)
    else:
        key = settings.effective_api_key
    if not isinstance(key, str) or not key:
        return ""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def limits_file() -> str:
    """Where the learned limits are kept between processes."""
    return LIMITS.path


def remember(key: Key, rpm: float | None, tpm: float | None) -> None:
    """Note what was learned for ``key`` = (endpoint, model[, account]); None in a figure:
    no limit to keep to. A figure that changed is also written to :func:`limits_file`, on
    a thread of its own (the event loop never waits for the disk), unless the file says
    so already, written less than a day ago."""
    value = [rpm, tpm]
    with _registry_lock:
        if _registry.get(key) == value:
            return
        _registry[key] = value
    LIMITS.put(_name(key), {"rpm": rpm, "tpm": tpm})


def remembered_limits(endpoint: str, model: str, account: str = "") -> tuple[float | None, float | None] | None:
    """The ``(rpm, tpm)`` last learned for ``endpoint``, ``model`` and ``account`` (None in
    a figure: no limit to keep to): by this process, else by an earlier one less than
    :data:`FILE_TTL` seconds ago; None if nothing is known."""
    key = (endpoint, model, account) if account else (endpoint, model)
    with _registry_lock:
        known = _registry.get(key)
        if known is None:
            entry = LIMITS.get(_name(key))
            if entry is not None:
                known = _registry[key] = [_figure(entry.get("rpm")), _figure(entry.get("tpm"))]
    return None if known is None else (known[0], known[1])


def _name(key: Key) -> str:
    return " ".join(key)


def _figure(value: Any) -> float | None:
    """A per-minute figure from the file; None (no limit) for anything not a finite number of
    at least one (a damaged entry must not stall a run: the first answer's headers say)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 1
    return float(value) if ok else None
