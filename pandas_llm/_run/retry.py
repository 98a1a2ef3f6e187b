"""Retries: how many times a failure is sent again, and how long to wait between.

Exponential backoff with jitter (tenacity's strategy), honouring ``retry-after``;
``deadline`` (seconds from the start of a run) bounds the engine's retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential_jitter

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    wait: Callable[[RetryCallState], float] = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)
    deadline: float | None = None  # seconds from start; bounds rate-limit retries

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return self.wait(state)
