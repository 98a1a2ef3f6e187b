"""Reading the ``x-ratelimit-*`` headers, and the limits this process has learned.

``x-ratelimit-limit-{requests,tokens}`` are per-minute figures, ``-remaining-*`` what is
left, ``-reset-*`` the time until the budget is whole again, written like ``869ms``,
``1s``, ``1.5s`` or ``6m0s``. Limits learned from one run are remembered per endpoint
and model for the next run in this process (never on disk), so it needs no first
round trip to learn them again.
"""

from __future__ import annotations

import math
import re
import threading

__all__ = ["parse_duration", "remembered_limits", "remember"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``869ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m``.

    A bare number is seconds; anything unreadable gives None.

    >>> [parse_duration(s) for s in ("869ms", "1s", "6m0s", "1.5s", "2m59.56s", "0.5", "soon")]
    [0.869, 1.0, 360.0, 1.5, 179.56, 0.5, None]
    """
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return round(total, 6) if pos == len(text) and pos else None


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


#: Per-minute limits no client process can reach (``python -m pandas_llm.testing`` without
#: limits reports 10M RPM / 10G TPM): pacing against them would only cost CPU.
_BOUNDLESS = {"requests": 3e6, "tokens": 3e9}

_registry: dict[tuple[str, str], list[float | None]] = {}
_registry_lock = threading.Lock()


def remember(key: tuple[str, str], rpm: float | None, tpm: float | None) -> None:
    """Note what was learned for ``key`` = (endpoint, model); None: no limit to keep to."""
    with _registry_lock:
        _registry[key] = [rpm, tpm]


def remembered_limits(endpoint: str, model: str) -> tuple[float | None, float | None] | None:
    """The ``(rpm, tpm)`` this process last learned for ``endpoint`` and ``model`` (None in
    a figure: no limit to keep to), or None if nothing was learned yet."""
    with _registry_lock:
        known = _registry.get((endpoint, model))
    return None if known is None else (known[0], known[1])
