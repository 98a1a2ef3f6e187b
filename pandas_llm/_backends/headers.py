"""Reading the durations and waits servers write in headers and messages.

``x-ratelimit-reset-*`` values (``869ms``, ``6m0s``), ``retry-after-ms`` / ``retry-after``
(seconds or an HTTP date), and the wait a 429's message hints ("try again in 5m37.6s").
At the ground of the backends: the error mapping reads them, and so does the run's limiter.

Every number read is a sane number of seconds, never an exception: ``nan`` is unreadable
(None), a negative wait is 0, and ``inf``, ``1e400`` or any wait longer than a year is a
year (:data:`LONGEST`): far past the longest wait a run makes, so it reads as a quota
(_run/stopping.py ``quota_stop``).
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Mapping

__all__ = ["parse_duration", "retry_after", "hinted_wait", "LONGEST"]

#: The longest wait a header is read as (seconds): a year. Longer ones (``inf``, ``1e400``) are as good as forever.
LONGEST = 366 * 86400.0

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``869ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m``.

    A bare number is seconds; anything unreadable gives None.

    >>> [parse_duration(s) for s in ("869ms", "1s", "6m0s", "1.5s", "2m59.56s", "0.5", "soon")]
    [0.869, 1.0, 360.0, 1.5, 179.56, 0.5, None]
    >>> [parse_duration(s) for s in ("inf", "nan", "-3", "1e400", "9" * 400 + "h")]
    [31622400.0, None, 0.0, 31622400.0, 31622400.0]
    """
    if not text:
        return None
    text = text.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return _seconds(round(total, 6)) if pos == len(text) and pos else None


def _seconds(value: float) -> float | None:
    """A wait a server wrote, made sane: None for nan, 0 if negative, at most :data:`LONGEST`."""
    if math.isnan(value):
        return None
    return min(LONGEST, max(0.0, value))


def retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after``, if present.

    ``retry-after`` is seconds or an HTTP date (RFC 9110: ``Wed, 21 Oct 2037 07:28:00 GMT``),
    read relative to ``now`` (``time.time()``); a date in the past is 0.

        >>> retry_after({"retry-after": "Thu, 01 Jan 1970 00:01:40 GMT"}, now=40.0)
        60.0
        >>> [retry_after({"retry-after": v}) for v in ("inf", "1e400", "-5", "nan")]
        [31622400.0, 31622400.0, 0.0, None]
    """
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            wait = _seconds(float(value) / 1000.0)
        except ValueError:
            wait = None
        if wait is not None:
            return wait
    value = headers.get("retry-after")
    if value:
        try:
            return _seconds(float(value))
        except ValueError:
            return _http_date(value, now)
    return None


def _http_date(value: str, now: float | None) -> float | None:
    """Seconds from ``now`` until the HTTP date ``value`` (0 if past), None if it is no date."""
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=datetime.UTC)
        return _seconds(when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_TRY_AGAIN = re.compile(r"(?:try again|retry) in (?:about )?([\d.]+(?:ms|h|m|s)(?:[\d.]+(?:ms|h|m|s))*)", re.I)


def hinted_wait(detail: str) -> float | None:
    """Seconds in a message's "Please try again in 5m37.6s" / "retry in 23.5s", if any."""
    m = _TRY_AGAIN.search(detail)
    return parse_duration(m.group(1)) if m else None
