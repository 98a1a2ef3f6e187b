"""Reading the ``x-ratelimit-*`` headers and 429 bodies, and the limits this process has learned.

``x-ratelimit-limit-{requests,tokens}`` are per-minute figures at OpenAI, ``-remaining-*``
what is left, ``-reset-*`` the time until the budget is whole again, written like
``869ms``, ``1s``, ``1.5s`` or ``6m0s``. Not every provider counts per minute: Groq's
``x-ratelimit-limit-requests`` is a per-day figure (its reset reads ``2m59.56s`` after
30 requests of 14,400). A reset longer than a minute cannot belong to a per-minute
limit, so :func:`per_minute` refuses such a limit. A 429's body often names the limit
it hit (``... on requests per min (RPM): Limit 500, Used 500, Requested 1``):
:func:`limit_in_message` reads it. What a run learns is kept for the next one by
learned.py.
"""

from __future__ import annotations

import math
import re

from .._backends.headers import parse_duration

__all__ = ["parse_duration", "per_minute", "limit_in_message", "OVERLOAD_WORDS"]


def per_minute(reset: str | None) -> bool:
    """Whether a limit whose ``x-ratelimit-reset-*`` reads ``reset`` can be a per-minute one.

    A per-minute budget is whole again within a minute; a longer reset (``2m59.56s``,
    ``23h59m``) says the limit counts over a longer window (per day), which must not be
    paced as per minute. An unreadable or missing reset gives the benefit of the doubt.

    >>> [per_minute(r) for r in ("50ms", "1s", "59.9s", "1m0s", "2m59.56s", "23h59m", None)]
    [True, True, True, True, False, False, True]
    """
    seconds = parse_duration(reset)
    return seconds is None or seconds <= 61.0  # a second of slack for rounding


_LIMIT_MESSAGE = re.compile(
    r"on (requests|tokens) per (min(?:ute)?|day)\b[^:]*:\s*Limit:?\s*(\d[\d,]*\d|\d)"
    r"(?:,\s*Used:?\s*(\d[\d,]*\d|\d))?(?:,\s*Requested:?\s*(\d[\d,]*\d|\d))?",
    re.IGNORECASE,
)

#: Words of a 429 that is not about the account's limit (the server is busy).
OVERLOAD_WORDS = ("overloaded", "over capacity", "at capacity", "server is busy", "too busy", "try again later")


def limit_in_message(message: str | None) -> tuple[str, float, float, float | None, float | None] | None:
    """The limit a 429's message names: ``(dimension, window seconds, limit, used, requested)``.

    ``dimension`` is ``"requests"`` or ``"tokens"``; the window is 60 (per minute) or
    86,400 (per day); used and requested are None when the message omits them.

    >>> limit_in_message("Rate limit reached for gpt-4o-mini in organization org-x on requests "
    ...                  "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.")
    ('requests', 60.0, 3.0, 3.0, 1.0)
    >>> limit_in_message("Rate limit reached for model `llama` in organization `org_1` service tier "
    ...                  "`on_demand` on tokens per minute (TPM): Limit 6000, Used 5957, Requested 230.")
    ('tokens', 60.0, 6000.0, 5957.0, 230.0)
    >>> limit_in_message("... on requests per day (RPD): Limit 14400, Used 14400, Requested 1.")[:3]
    ('requests', 86400.0, 14400.0)
    >>> limit_in_message("The engine is currently overloaded, please try again later.") is None
    True
    """
    if not message:
        return None
    m = _LIMIT_MESSAGE.search(message)
    if m is None:
        return None

    def num(text: str | None) -> float | None:
        return float(text.replace(",", "")) if text else None

    window = 86_400.0 if m.group(2).lower() == "day" else 60.0
    limit = float(m.group(3).replace(",", ""))  # the one number the pattern requires
    return m.group(1).lower(), window, limit, num(m.group(4)), num(m.group(5))


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
