"""The retry budget: retries may add at most a fixed share of load to a service.

A per-try retry limit (``attempts``) does not stop retry storms: when a service slows down
every caller retries, and the load it sees is multiplied by ``attempts`` exactly when it
can least take it. A budget caps retries *across* requests instead, Finagle-style:

- every original request calls :meth:`RetryBudget.deposit`;
- every retry calls :meth:`RetryBudget.try_withdraw` and is sent only if it returns True.

Exact semantics. Requests and retries are counted over a sliding ``window`` kept as
``SLICES`` equal slices, so an event counts for between ``(SLICES - 1) / SLICES`` of the
window and the whole window (the slice it happened in plus the ``SLICES - 1`` slices
before the current one). A retry is allowed when, counting it::

    retries_in_window <= ratio * requests_in_window + min_per_second * window

The second term is the *reserve*: a trickle of retries that is always allowed, so a
service with little traffic (where 20 % of almost nothing is nothing) still gets its
occasional retry. Denied retries are not counted as withdrawals. With the defaults
(ratio 0.2, 10/s, 10 s) a service receiving 1000 requests/s may see at most 1.2x its
normal load in any window; a quiet one may still see 100 retries per window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from sampan.mesh.config import RetryBudgetConfig

__all__ = ["SLICES", "RetryBudget"]

SLICES: Final = 10
"""Slices the sliding window is kept in (the granularity of its expiry)."""

# Float slack so 0.1 * 30 + 0 allows 3 retries, not 2.
_EPSILON: Final = 1e-9


class RetryBudget:
    """Token bucket over a sliding window; see the module docstring for the exact rule."""

    __slots__ = (
        "_clock",
        "_deposits",
        "_deposits_total",
        "_reserve",
        "_slice",
        "_slice_length",
        "_withdrawals",
        "_withdrawals_total",
        "config",
        "retries_allowed",
        "retries_denied",
    )

    def __init__(
        self, config: RetryBudgetConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._slice_length = config.window / SLICES
        self._reserve = config.min_per_second * config.window
        self._deposits = [0] * SLICES
        self._withdrawals = [0] * SLICES
        self._deposits_total = 0
        self._withdrawals_total = 0
        self._slice = self._slice_of(clock())
        self.retries_allowed = 0
        self.retries_denied = 0

    def deposit(self) -> None:
        """Count one original request (not a retry)."""
        index = self._advance()
        self._deposits[index] += 1
        self._deposits_total += 1

    def try_withdraw(self) -> bool:
        """Ask for one retry: True (and counted) if the budget allows it, else False."""
        index = self._advance()
        allowance = self.config.ratio * self._deposits_total + self._reserve
        if self._withdrawals_total + 1 <= allowance + _EPSILON:
            self._withdrawals[index] += 1
            self._withdrawals_total += 1
            self.retries_allowed += 1
            return True
        self.retries_denied += 1
        return False

    @property
    def balance(self) -> float:
        """Retries still allowed in the current window (may be fractional)."""
        self._advance()
        allowance = self.config.ratio * self._deposits_total + self._reserve
        return max(0.0, allowance - self._withdrawals_total)

    @property
    def requests_in_window(self) -> int:
        self._advance()
        return self._deposits_total

    @property
    def retries_in_window(self) -> int:
        self._advance()
        return self._withdrawals_total

    # -- the ring of slices

    def _slice_of(self, now: float) -> int:
        return int(now // self._slice_length)

    def _advance(self) -> int:
        """Expire slices that left the window; return the ring index of the current one."""
        current = self._slice_of(self._clock())
        elapsed = current - self._slice
        if elapsed > 0:
            if elapsed >= SLICES:
                self._deposits = [0] * SLICES
                self._withdrawals = [0] * SLICES
                self._deposits_total = 0
                self._withdrawals_total = 0
            else:
                for step in range(1, elapsed + 1):
                    index = (self._slice + step) % SLICES
                    self._deposits_total -= self._deposits[index]
                    self._withdrawals_total -= self._withdrawals[index]
                    self._deposits[index] = 0
                    self._withdrawals[index] = 0
            self._slice = current
        # A clock that went backwards (never with monotonic) keeps counting in the newest
        # slice rather than corrupting older ones.
        return self._slice % SLICES
