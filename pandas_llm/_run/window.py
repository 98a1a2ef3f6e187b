"""Learning the server's window: when ``x-ratelimit-remaining-requests`` is credit to spend now.

The limiter paces requests evenly at the per-minute limit, which is right for a server
that enforces its limit over short quantized windows (OpenAI counts a per-minute limit in
slices of a second or so) and slow for one whose window is a plain minute or a token
bucket: there ``remaining`` requests may all go at once. :class:`Credit` decides, from
the answers, how many requests may go beyond the even pace:

- it starts at one request a second beyond the pace and, each second whose allowance
  was used while the headers stayed consistent with a one-minute window, allows more:
  twice as many up to 16 a second, then four times (1, 2, 4, 8, 16, 64, 256 ...), never
  more than what the headers say remains (less what was sent since, and what was in
  flight when they were written). The first steps are small on purpose: the pace alone
  fills 97% of a quantized window, so the step that finds one out overshoots by a few
  requests, not by a round trip's worth;
- consistent means ``remaining`` fell by about one per request sent and did not refill
  faster than the per-minute rate; a window shorter than a minute shows otherwise (our
  loopback server's 1-s window takes 60 per request from the per-minute figure and
  gives it back a second later);
- at the first sign of a quantized window (such an inconsistency, or a 429 at the limit
  while the headers said requests remained) it stops for good: the even pace only.

A user's ``rpm=`` is a ceiling, never exceeded on credit.
"""

from __future__ import annotations

__all__ = ["Credit"]


class Credit:
    """Requests the headers allow beyond the even pace, and whether the window is quantized."""

    __slots__ = ("quantized", "allow", "used", "span", "sent", "failed", "inflight", "obs", "base")

    def __init__(self) -> None:
        self.quantized = False  # a window shorter than a minute: pace evenly, no credit
        self.allow = 0.0  # requests that may go on credit in the current second
        self.used = 0  # of those, sent
        self.span = -1e18  # when the current second began
        self.sent = 0  # requests admitted in all
        self.failed = 0  # requests that failed (a server may or may not have counted them)
        self.inflight = 0  # requests admitted, not answered yet
        self.obs: tuple[float, int, int] | None = None  # (remaining, sent, in flight) at the last headers
        self.base: tuple[float, int, float, int, int] | None = None  # (time, sent, remaining, in flight, failed)

    def left(self) -> float:
        """Requests the last headers leave for us now (requests sent since, and those in
        flight when they were written, may not have been counted in them)."""
        if self.obs is None:
            return 0.0
        remaining, sent, inflight = self.obs
        return remaining - (self.sent - sent) - inflight

    def may_send(self, now: float) -> bool:
        """Whether one more request may go now on credit, ahead of the even pace."""
        if self.quantized or self.obs is None:
            return False
        if now - self.span >= 1.0:
            if self.used >= self.allow:  # the last second wanted all it was allowed: grow
                self.allow = 1.0 if self.allow < 1.0 else (2.0 if self.allow < 16.0 else 4.0) * self.allow
            self.span, self.used = now, 0
        return self.used < self.allow and self.left() >= 1.0

    def admitted(self, on_credit: bool) -> None:
        self.sent += 1
        self.inflight += 1
        if on_credit:
            self.used += 1

    def answered(self, ok: bool = True) -> None:
        """A request admitted earlier is over: answered, or failed (``ok`` False)."""
        self.inflight = max(0, self.inflight - 1)
        if not ok:
            self.failed += 1

    def observe(self, now: float, limit: float, remaining: float) -> None:
        """The headers of an answer: remember the credit, and check the window's shape."""
        self.obs = (remaining, self.sent, self.inflight)
        base = self.base
        if base is None or now - base[0] > 50.0:  # a plain window refills after a minute
            self.base = (now, self.sent, remaining, self.inflight, self.failed)
            return
        t0, sent0, remaining0, inflight0, failed0 = base
        expected = remaining0 - (self.sent - sent0)
        # requests that failed (a busy server's 429, a 5xx) may not have been counted
        slack = 2.0 + inflight0 + self.inflight + (self.failed - failed0)
        refill = (now - t0) * limit / 60.0 * 1.1  # at most the per-minute rate comes back
        if remaining < expected - slack or remaining > expected + refill + slack:
            self.shrink()

    def limit_hit(self) -> None:
        """A 429 at the limit: if the headers said requests remained, the window is quantized."""
        if self.obs is not None and self.obs[0] - (self.sent - self.obs[1]) > self.obs[2] + 1.0:
            self.shrink()
        self.allow = 0.0

    def shrink(self) -> None:
        self.quantized = True
        self.allow = 0.0
