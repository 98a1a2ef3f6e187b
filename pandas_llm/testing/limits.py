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

from .._errors import ConfigError
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
    per: str = "min"  # the limit's window in the 429's message: "min" or "day"


class RateLimiter:
    """RPM/TPM limiter. ``None`` means that dimension is unlimited.

    ``kind`` is how the server counts (the headers always speak per minute):

    - ``"sliding"``: at most ``rpm * window / 60`` requests in any ``window`` seconds;
    - ``"quantized"``: the same cap per fixed slot of ``window`` seconds (``window=1``:
      at most rpm/60 in each wall-clock second), while the headers report the per-minute
      figures over the last 60 s: ``remaining`` can be large when the slot is full, as
      with providers that enforce a per-minute limit over shorter quantized windows;
    - ``"bucket"``: a token bucket of ``rpm`` requests (``tpm`` tokens) refilled at rpm/60
      per second; ``remaining`` is the bucket's level.

    ``reset`` is how ``x-ratelimit-reset-*`` is written: ``"window"``, the time until the
    window is back to its initial state; ``"refill"``, the time the per-minute rate needs
    to refill what is used (one request of 1,200 RPM reads ``50ms`` even on a 60-s window).

    ``rpd``: a per-day request budget reported in the ``*-requests`` headers in place of
    the per-minute one (``x-ratelimit-limit-requests: 14400``, reset ``2m59.56s`` after
    30 requests, as Groq does), ``rpd_used`` of it spent before the server started; the
    per-minute ``rpm`` is still enforced and named only in a 429's message.
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        kind: str = "sliding",
        reset: str = "window",
        rpd: int | None = None,
        rpd_used: int = 0,
    ) -> None:
        if window <= 0:
            raise ConfigError(f"window must be > 0 seconds, got {window!r}")
        for name, value in (("rpm", rpm), ("tpm", tpm), ("rpd", rpd)):
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value!r}")
        if kind not in ("sliding", "quantized", "bucket"):
            raise ConfigError(f"kind must be 'sliding', 'quantized' or 'bucket', got {kind!r}")
        if reset not in ("window", "refill"):
            raise ConfigError(f"reset must be 'window' or 'refill', got {reset!r}")
        self.rpm, self.tpm, self.window, self.clock = rpm, tpm, float(window), clock
        self.kind, self.reset_style, self.rpd, self.rpd_used = kind, reset, rpd, rpd_used
        self._scale = 60.0 / self.window  # window figures -> per-minute figures
        self._req_cap = rpm / self._scale if rpm else math.inf
        self._tok_cap = tpm / self._scale if tpm else math.inf
        self._log: deque[tuple[float, int]] = deque()  # (admitted at, tokens)
        self._tokens = 0
        self._slot, self._slot_req, self._slot_tok = -1, 0, 0  # quantized: the current slot's use
        self._level: list[float] = [float(rpm or 0), float(tpm or 0)]  # bucket: requests, tokens
        self._filled = clock()
        self.limited = rpm is not None or tpm is not None or rpd is not None
        self._open_headers = _headers(UNLIMITED_RPM, UNLIMITED_TPM, UNLIMITED_RPM, UNLIMITED_TPM, "0s", "0s")

    def reset(self) -> None:
        """Forget all admitted requests."""
        self._log.clear()
        self._tokens = 0
        self._slot, self._slot_req, self._slot_tok = -1, 0, 0
        self._level = [float(self.rpm or 0), float(self.tpm or 0)]

    def acquire(self, tokens: int) -> Decision:
        """Admit (and record) a request of ``tokens`` tokens, or refuse it."""
        if not self.limited:
            return Decision(True, list(self._open_headers))
        now = self.clock()
        self._forget(now)
        if self.rpd is not None and self.rpd_used >= self.rpd:
            d = Decision(False, self._report(now), kind="requests", limit=self.rpd, used=self.rpd_used, requested=1)
            d.retry_after, d.per = 86_400.0 / self.rpd, "day"
            return d
        if self.kind == "sliding":
            decision = self._sliding(now, tokens)
        else:
            decision = self._shaped(now, tokens)
        if decision.allowed:
            self.rpd_used += 1
            decision.headers = self._report(now)
        return decision

    def _forget(self, now: float) -> None:
        # quantized servers report the last minute; sliding ones their window
        log, horizon = self._log, now - (60.0 if self.kind == "quantized" else self.window)
        while log and log[0][0] <= horizon:
            self._tokens -= log.popleft()[1]
        if self.kind == "bucket":
            dt, self._filled = now - self._filled, now
            for i, cap in enumerate((self.rpm, self.tpm)):
                if cap:
                    self._level[i] = min(float(cap), self._level[i] + dt * cap / 60.0)

    def _sliding(self, now: float, tokens: int) -> Decision:
        log = self._log
        over_req = len(log) + 1 > self._req_cap + 1e-9
        over_tok = self._tokens + tokens > self._tok_cap + 1e-9
        if not (over_req or over_tok):
            log.append((now, tokens))
            self._tokens += tokens
            return Decision(True)
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

    def _shaped(self, now: float, tokens: int) -> Decision:
        """A quantized slot or a token bucket (figures in the 429's message are per minute)."""
        if self.kind == "quantized":
            slot = math.floor(now / self.window)
            if slot != self._slot:
                self._slot, self._slot_req, self._slot_tok = slot, 0, 0
            used: tuple[float, float] = (self._slot_req, self._slot_tok)
            room = (self._req_cap - used[0], self._tok_cap - used[1])
            wait = (slot + 1) * self.window - now  # the next slot
            caps, scale = (self._req_cap, self._tok_cap), self._scale
        else:
            (req_level, tok_level), (rpm, tpm) = self._level, (self.rpm, self.tpm)
            room = (req_level if rpm else math.inf, tok_level if tpm else math.inf)
            used = ((rpm or 0) - req_level, (tpm or 0) - tok_level)
            caps, scale = (self.rpm or math.inf, self.tpm or math.inf), 1.0
        for i, (name, limit, want) in enumerate((("requests", self.rpm, 1), ("tokens", self.tpm, tokens))):
            if want <= room[i] + 1e-9:
                continue
            d = Decision(False, self._report(now), kind=name, limit=limit or 0, requested=want)
            d.used = round(used[i] * scale)
            if want > caps[i]:
                return d  # never fits: "Request too large"
            d.retry_after = max(0.001, wait if self.kind == "quantized" else (want - room[i]) * 60.0 / (limit or 1))
            return d
        if self.kind == "quantized":
            self._slot_req += 1
            self._slot_tok += tokens
        else:
            self._level[0] -= 1 if self.rpm else 0
            self._level[1] -= tokens if self.tpm else 0
        self._log.append((now, tokens))
        self._tokens += tokens
        return Decision(True)

    def headers(self) -> list[tuple[str, str]]:
        """The current ``x-ratelimit-*`` headers, without admitting anything."""
        if not self.limited:
            return list(self._open_headers)
        now = self.clock()
        self._forget(now)
        return self._report(now)

    def _report(self, now: float) -> list[tuple[str, str]]:
        rows = []
        for i, limit in enumerate((self.rpm, self.tpm)):
            if not limit:
                rows.append((UNLIMITED_RPM if i == 0 else UNLIMITED_TPM,) * 2 + ("0s",))
                continue
            if self.kind == "bucket":
                remaining, used_minute = self._level[i], limit - self._level[i]
                until = used_minute * 60.0 / limit
            else:
                scale = self._scale if self.kind == "sliding" else 1.0
                used = (len(self._log) if i == 0 else self._tokens) * scale
                remaining, used_minute = limit - used, used
                span = self.window if self.kind == "sliding" else 60.0
                until = self._log[-1][0] + span - now if self._log else 0.0
            if self.reset_style == "refill":
                until = used_minute * 60.0 / limit
            rows.append((limit, max(0, int(remaining + 1e-6)), format_duration(until)))
        if self.rpd is not None:
            rows[0] = (self.rpd, max(0, self.rpd - self.rpd_used), format_duration(self.rpd_used * 86_400.0 / self.rpd))
        (lim_r, rem_r, reset_r), (lim_t, rem_t, reset_t) = rows
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
    if d.per == "day":
        unit = "requests per day (RPD)"
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
