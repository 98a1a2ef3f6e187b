"""Token estimation for the token budget: what a request will cost before its answer says.

tiktoken costs 8-50 µs per request, too much for the hot path, so the prompt is estimated
from the body's size: tokens per byte, calibrated against the real ``usage`` of earlier
answers (the highest ratio seen, plus 15%; a conservative 0.5 until the first answer,
English JSON being about 0.25). The answer is ``max_tokens`` when set, else 1.25 times
a running mean of the answers' lengths (256 until the first answer).

    >>> est = TokenEstimate()
    >>> est.tokens(1000, None)
    824
    >>> est.learn(1000, 250, 100)
    >>> est.tokens(1000, None)
    417
    >>> est.tokens(1000, 50)
    342
"""

from __future__ import annotations

import math

__all__ = ["TokenEstimate"]


class TokenEstimate:
    """Tokens a request will take (prompt + answer), calibrated by the answers' usage."""

    __slots__ = ("ratio", "ratio_seen", "answer", "answers_seen")

    def __init__(self) -> None:
        self.ratio = 0.5  # prompt tokens per body byte: conservative until calibrated by real usage
        self.ratio_seen = 0.0  # the highest ratio an answer showed
        self.answer = 256.0  # running mean of the answers' completion tokens
        self.answers_seen = 0

    def tokens(self, size: int, max_tokens: int | None) -> int:
        """Tokens to book for a request body of ``size`` bytes (``max_tokens``: the answer's cap)."""
        out = max_tokens or math.ceil(1.25 * self.answer)
        return math.ceil(size * self.ratio) + 4 + out

    def learn(self, size: int, prompt_tokens: int, completion_tokens: int) -> None:
        """An answer's usage for a body of ``size`` bytes: calibrate both estimates."""
        if prompt_tokens and size:
            ratio = prompt_tokens / size
            if ratio > self.ratio_seen:
                self.ratio_seen = ratio
                self.ratio = 1.15 * ratio
            elif self.ratio > 1.15 * self.ratio_seen:  # still the initial guess
                self.ratio = 1.15 * self.ratio_seen
        if completion_tokens or prompt_tokens:
            self.answers_seen += 1
            weight = max(0.05, 1.0 / self.answers_seen)
            self.answer += weight * (completion_tokens - self.answer)
