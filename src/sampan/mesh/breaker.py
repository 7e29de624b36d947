"""A per-endpoint circuit breaker: stop sending to an endpoint that keeps failing, then
probe it carefully before trusting it again.

States:

- ``closed``: requests flow. It opens when ``consecutive_failures`` requests in a row
  failed, or when, over the sliding ``window``, at least ``min_requests`` requests ended
  and the share of failures is ``>= failure_rate``.
- ``open``: :meth:`CircuitBreaker.allows` is False for ``open_for`` seconds.
- ``half-open``: afterwards up to ``half_open_probes`` requests may be in flight at once
  (probes). Once ``half_open_probes`` probes succeeded it closes (with fresh statistics);
  any failed probe opens it again for another ``open_for``.

Calls: :meth:`allows` when choosing the endpoint, :meth:`on_start` when the request is
sent, then exactly one of :meth:`record` (it ended: success or failure) or
:meth:`abandon` (it was cancelled by our caller, which says nothing about the endpoint).
A probe that is never recorded nor abandoned holds its slot forever, so the caller must
use ``try/finally``.

Results that belong to an earlier state are stale: a request sent while closed that fails
after the breaker opened must not re-open it from half-open. :meth:`on_start` returns the
breaker's epoch (it changes on every state change); pass it back to :meth:`record` /
:meth:`abandon` and stale results are ignored. Without an epoch, a result arriving in
half-open counts as a probe's only while a probe is in flight, and results arriving
while open are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal

from sampan.mesh.config import CircuitBreakerConfig

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"

_SLICES: Final = 10


class _OutcomeWindow:
    """Successes and failures over a sliding window kept in ``_SLICES`` slices."""

    __slots__ = ("_failures", "_slice", "_slice_length", "_total", "failures", "total")

    def __init__(self, window: float, now: float) -> None:
        self._slice_length = window / _SLICES
        self._slice = int(now // self._slice_length)
        self._total = [0] * _SLICES
        self._failures = [0] * _SLICES
        self.total = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        index = self._advance(now)
        self._total[index] += 1
        self.total += 1
        if failed:
            self._failures[index] += 1
            self.failures += 1

    def clear(self) -> None:
        self._total = [0] * _SLICES
        self._failures = [0] * _SLICES
        self.total = 0
        self.failures = 0

    def _advance(self, now: float) -> int:
        current = int(now // self._slice_length)
        elapsed = current - self._slice
        if elapsed >= _SLICES:
            self.clear()
        elif elapsed > 0:
            for step in range(1, elapsed + 1):
                index = (self._slice + step) % _SLICES
                self.total -= self._total[index]
                self.failures -= self._failures[index]
                self._total[index] = 0
                self._failures[index] = 0
        self._slice = max(self._slice, current)
        return self._slice % _SLICES


class CircuitBreaker:
    """Implements the ``EndpointBreaker`` protocol of ``endpoint.py``."""

    __slots__ = (
        "_clock",
        "_consecutive",
        "_epoch",
        "_opened_at",
        "_probe_successes",
        "_probes",
        "_state",
        "_window",
        "config",
        "opened_count",
        "stale_results",
    )

    def __init__(
        self, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._state: BreakerState = CLOSED
        self._epoch = 0
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes = 0
        self._probe_successes = 0
        self._window = _OutcomeWindow(config.window, clock())
        self.opened_count = 0
        """Times it opened (from closed or from half-open)."""
        self.stale_results = 0
        """Results ignored because they belonged to an earlier state."""

    # -- what callers read

    @property
    def state(self) -> BreakerState:
        self._refresh(self._clock())
        return self._state

    @property
    def epoch(self) -> int:
        self._refresh(self._clock())
        return self._epoch

    @property
    def probes_in_flight(self) -> int:
        return self._probes

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def reopens_at(self) -> float | None:
        """When an open breaker goes half-open (None unless open)."""
        return self._opened_at + self.config.open_for if self._state == OPEN else None

    def allows(self, now: float) -> bool:
        """False while open; in half-open, True only while probe slots are free."""
        self._refresh(now)
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            return False
        return self._probes < self.config.half_open_probes

    # -- what callers report

    def on_start(self) -> int:
        """A request was sent to the endpoint; returns the epoch to pass to record()."""
        self._refresh(self._clock())
        if self._state == HALF_OPEN:
            self._probes += 1
        return self._epoch

    def record(self, success: bool, *, epoch: int | None = None) -> None:
        """A request ended (a failure is whatever the caller counts as one: connect
        errors, timeouts, 5xx)."""
        now = self._clock()
        self._refresh(now)
        if epoch is not None and epoch != self._epoch:
            self.stale_results += 1
            return
        if self._state == CLOSED:
            self._record_closed(now, success)
        elif self._state == HALF_OPEN:
            if self._probes == 0:  # no probe out: the result predates half-open
                self.stale_results += 1
                return
            self._probes -= 1
            if not success:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                self._close(now)
        else:
            self.stale_results += 1

    def abandon(self, *, epoch: int | None = None) -> None:
        """A request ended without a verdict on the endpoint (cancelled by our caller):
        frees its probe slot, counts nothing."""
        self._refresh(self._clock())
        if epoch is not None and epoch != self._epoch:
            return
        if self._state == HALF_OPEN and self._probes > 0:
            self._probes -= 1

    # -- transitions

    def _record_closed(self, now: float, success: bool) -> None:
        self._window.add(now, not success)
        if success:
            self._consecutive = 0
            return
        self._consecutive += 1
        window = self._window
        if self._consecutive >= self.config.consecutive_failures or (
            window.total >= self.config.min_requests
            and window.failures >= self.config.failure_rate * window.total
        ):
            self._open(now)

    def _refresh(self, now: float) -> None:
        if self._state == OPEN and now >= self._opened_at + self.config.open_for:
            self._state = HALF_OPEN
            self._epoch += 1
            self._probes = 0
            self._probe_successes = 0

    def _open(self, now: float) -> None:
        self._state = OPEN
        self._epoch += 1
        self._opened_at = now
        self._probes = 0
        self._probe_successes = 0
        self._consecutive = 0
        self._window.clear()
        self.opened_count += 1

    def _close(self, now: float) -> None:
        self._state = CLOSED
        self._epoch += 1
        self._probes = 0
        self._probe_successes = 0
        self._consecutive = 0
        self._window = _OutcomeWindow(self.config.window, now)
