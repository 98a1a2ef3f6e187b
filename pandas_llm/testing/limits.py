"""RPM / TPM limits in a sliding window, reported like the real API.

``RateLimiter(rpm=..., tpm=..., window=60)`` admits a request when, counting the
requests admitted in the last ``window`` seconds, neither ``rpm * window / 60`` requests
nor ``tpm * window / 60`` tokens would be exceeded. ``window=1`` with ``rpm=6000`` means
100 requests in any one second: short windows make rate-limit tests fast.

Rejected requests do not use up capacity (the real API counts them; here that would
make ``retry-after`` a moving target and tests non-deterministic).

Every decision carries the six ``x-ratelimit-*`` headers. As the real API does, limits
and remaining capacity are per minute (the window's figures scaled by ``60 / window``),
and ``x-ratelimit-reset-*`` is the time until the window is back to its initial state
(the newest admitted request leaves it), formatted like ``869ms``, ``1.5s``, ``6m0s``.
A rejection also gives the time until enough capacity frees for *this* request, which
the server sends as ``retry-after`` (whole seconds, rounded up) and ``retry-after-ms``.

The clock is injected, so the limiter is tested without sleeping::

    >>> t = [0.0]
    >>> lim = RateLimiter(rpm=120, window=1, clock=lambda: t[0])   # 2 per second
    >>> [lim.acquire(1).allowed for _ in range(3)]
    [True, True, False]
    >>> t[0] = 1.0; lim.acquire(1).allowed
    True
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ._http import Response, error_response

__all__ = ["RateLimiter", "Decision", "format_duration", "rate_limit_response", "UNLIMITED_RPM", "UNLIMITED_TPM"]

#: What the headers report when no limit is set: large enough that no client throttles.
UNLIMITED_RPM = 10_000_000
UNLIMITED_TPM = 10_000_000_000


def format_duration(seconds: float) -> str:
    """Format a duration as the API's ``x-ratelimit-reset-*`` headers do.

    >>> [format_duration(s) for s in (0, 0.8691, 1, 1.5, 17.284, 360, 179.56)]
    ['0s', '870ms', '1s', '1.5s', '17.284s', '6m0s', '2m59.56s']
    """
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


@dataclass(slots=True)
class Decision:
    """The limiter's answer for one request."""

    allowed: bool
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: seconds until this request would fit; None when allowed or when it never fits
    retry_after: float | None = None
    #: which limit refused it: "requests" or "tokens"
    kind: str | None = None
    limit: int = 0  # per minute, as reported
    used: int = 0
    requested: int = 0


class RateLimiter:
    """Sliding-window RPM/TPM limiter. ``None`` means that dimension is unlimited."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        self.rpm, self.tpm, self.window, self.clock = rpm, tpm, float(window), clock
        self._scale = 60.0 / self.window  # window figures -> per-minute figures
        self._req_cap = rpm / self._scale if rpm else math.inf
        self._tok_cap = tpm / self._scale if tpm else math.inf
        self._log: deque[tuple[float, int]] = deque()  # (admitted at, tokens)
        self._tokens = 0
        self.limited = rpm is not None or tpm is not None
        self._open_headers = _headers(UNLIMITED_RPM, UNLIMITED_TPM, UNLIMITED_RPM, UNLIMITED_TPM, "0s", "0s")

    def reset(self) -> None:
        """Forget all admitted requests."""
        self._log.clear()
        self._tokens = 0

    def acquire(self, tokens: int) -> Decision:
        """Admit (and record) a request of ``tokens`` tokens, or refuse it."""
        if not self.limited:
            return Decision(True, list(self._open_headers))
        now = self.clock()
        log, horizon = self._log, now - self.window
        while log and log[0][0] <= horizon:
            self._tokens -= log.popleft()[1]
        over_req = len(log) + 1 > self._req_cap + 1e-9
        over_tok = self._tokens + tokens > self._tok_cap + 1e-9
        if not (over_req or over_tok):
            log.append((now, tokens))
            self._tokens += tokens
            return Decision(True, self._report(now))
        decision = Decision(False, self._report(now))
        waits = []
        if over_req:
            k = math.ceil(len(log) + 1 - self._req_cap - 1e-9)  # entries that must leave
            waits.append(log[k - 1][0] + self.window - now)
            decision.kind, decision.limit, decision.used = "requests", self.rpm or 0, len(log)
            decision.requested = 1
        if over_tok:
            if tokens > self._tok_cap:  # can never fit: "Request too large"
                decision.kind, decision.limit = "tokens", self.tpm or 0
                decision.used, decision.requested = self._tokens, tokens
                return decision
            need, freed = self._tokens + tokens - self._tok_cap, 0
            for admitted, n in log:
                freed += n
                if freed >= need - 1e-9:
                    waits.append(admitted + self.window - now)
                    break
            if not over_req:
                decision.kind, decision.limit = "tokens", self.tpm or 0
                decision.used, decision.requested = self._tokens, tokens
        decision.retry_after = max(0.001, max(waits))
        return decision

    def headers(self) -> list[tuple[str, str]]:
        """The current ``x-ratelimit-*`` headers, without admitting anything."""
        if not self.limited:
            return list(self._open_headers)
        now = self.clock()
        while self._log and self._log[0][0] <= now - self.window:
            self._tokens -= self._log.popleft()[1]
        return self._report(now)

    def _report(self, now: float) -> list[tuple[str, str]]:
        log, scale = self._log, self._scale
        reset = format_duration(log[-1][0] + self.window - now) if log else "0s"
        if self.rpm:
            lim_r, rem_r, reset_r = self.rpm, max(0, int((self._req_cap - len(log)) * scale + 1e-6)), reset
        else:
            lim_r, rem_r, reset_r = UNLIMITED_RPM, UNLIMITED_RPM, "0s"
        if self.tpm:
            lim_t, rem_t, reset_t = self.tpm, max(0, int((self._tok_cap - self._tokens) * scale + 1e-6)), reset
        else:
            lim_t, rem_t, reset_t = UNLIMITED_TPM, UNLIMITED_TPM, "0s"
        return _headers(lim_r, lim_t, rem_r, rem_t, reset_r, reset_t)


def _headers(lim_r: int, lim_t: int, rem_r: int, rem_t: int, reset_r: str, reset_t: str) -> list[tuple[str, str]]:
    return [
        ("x-ratelimit-limit-requests", str(lim_r)),
        ("x-ratelimit-limit-tokens", str(lim_t)),
        ("x-ratelimit-remaining-requests", str(rem_r)),
        ("x-ratelimit-remaining-tokens", str(rem_t)),
        ("x-ratelimit-reset-requests", reset_r),
        ("x-ratelimit-reset-tokens", reset_t),
    ]


def rate_limit_response(model: str, d: Decision) -> Response:
    """The 429 the real API sends for a refused ``Decision``, with ``retry-after(-ms)``."""
    unit = "requests per min (RPM)" if d.kind == "requests" else "tokens per min (TPM)"
    headers = d.headers
    if d.retry_after is None:  # larger than the whole window: retrying cannot help
        message = f"Request too large for {model} on {unit}: Limit {d.limit}, Requested {d.requested}."
    else:
        message = (
            f"Rate limit reached for {model} on {unit}: Limit {d.limit}, Used {d.used}, "
            f"Requested {d.requested}. Please try again in {d.retry_after * 1000:.0f}ms."
        )
        headers.append(("retry-after", str(max(1, math.ceil(d.retry_after)))))
        headers.append(("retry-after-ms", str(max(1, math.ceil(d.retry_after * 1000)))))
    return error_response(429, message, d.kind or "requests", "rate_limit_exceeded", headers=headers)
