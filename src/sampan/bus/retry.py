"""Retry policy: exponential backoff with proportional jitter, then dead-letter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    """Deliveries before a message is dead-lettered (1 = no retry)."""
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    """Fraction of the delay that is randomised (0 = none, 1 = full jitter)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        # Written as "not >=" so that NaN is rejected too.
        if not (self.initial_backoff >= 0 and self.max_backoff >= 0):
            raise ValueError("backoff must be >= 0")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before the delivery that follows failed delivery number ``attempt``."""
        try:
            grown = self.initial_backoff * self.multiplier ** max(0, attempt - 1)
        except OverflowError:
            grown = self.max_backoff
        base = min(self.max_backoff, grown)
        spread = base * self.jitter
        draw = (rng or random).random()
        return base - spread + 2 * spread * draw if spread else base

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


class Unretryable(Exception):
    """Raised by a handler for a message that no retry can fix (it fails validation, say):
    the message is dead-lettered now, with this error, instead of after ``max_attempts``."""


NO_RETRY = RetryPolicy(max_attempts=1)
