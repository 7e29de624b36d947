"""Adaptive concurrency: find the concurrency a service handles without queueing and shed
(503) what goes beyond it, so latency stays near its floor instead of exploding.

Per request: :meth:`AdaptiveLimiter.try_acquire` (False: shed the request now) and, when it
ends, :meth:`AdaptiveLimiter.release` with its round-trip time and whether it was dropped
(timed out, refused, 503 from overload). ``limit`` is an integer in
``[min_limit, max_limit]``; requests in flight never exceed it (except transiently after
it shrank: nothing in flight is cancelled).

Two algorithms:

- ``aimd``: after ``limit`` consecutive good samples (not dropped, faster than
  ``latency_threshold``) the limit grows by 1; a dropped or slow sample multiplies it by
  ``backoff_ratio`` (0.9).
- ``gradient`` (as Netflix's concurrency-limits): the no-load latency ``min_rtt`` is the
  smallest RTT seen over the last one to two ``min_rtt_window`` s (a rolling minimum of two
  windows, so a changed baseline is learnt without forgetting it all at once); each sample
  proposes ``limit * gradient + queue_size`` with ``gradient = clamp(min_rtt / rtt, 0.5,
  1)`` and ``queue_size = sqrt(limit)`` (the queueing allowed on top of the no-load
  concurrency, which lets the limit probe upwards), or ``limit * 0.5`` for a dropped
  sample; the limit moves towards the proposal by ``smoothing`` (0.2).

Both grow the limit only when it is being used: a good sample received while fewer than
half the limit were in flight leaves it as it is, so a quiet period does not inflate the
limit to ``max_limit`` (which would leave nothing to protect the service on the next burst).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sampan.mesh.config import AdaptiveConcurrencyConfig

__all__ = ["AdaptiveLimiter"]


class AdaptiveLimiter:
    __slots__ = (
        "_clock",
        "_estimate",
        "_good_streak",
        "_min_current",
        "_min_previous",
        "_window_started",
        "admitted",
        "backoff_ratio",
        "config",
        "in_flight",
        "min_rtt_window",
        "shed",
        "smoothing",
    )

    def __init__(
        self,
        config: AdaptiveConcurrencyConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        min_rtt_window: float = 10.0,
        smoothing: float = 0.2,
        backoff_ratio: float = 0.9,
    ) -> None:
        if config.min_limit > config.max_limit:
            raise ValueError("min_limit is above max_limit")
        if min_rtt_window <= 0 or not 0 < smoothing <= 1 or not 0 < backoff_ratio < 1:
            raise ValueError("need min_rtt_window > 0, 0 < smoothing <= 1, 0 < backoff < 1")
        self.config = config
        self._clock = clock
        self.min_rtt_window = min_rtt_window
        self.smoothing = smoothing
        self.backoff_ratio = backoff_ratio
        self._estimate = float(min(max(config.initial_limit, config.min_limit), config.max_limit))
        self._good_streak = 0
        self._min_current = math.inf
        self._min_previous = math.inf
        self._window_started = clock()
        self.in_flight = 0
        self.admitted = 0
        self.shed = 0

    @property
    def limit(self) -> int:
        return max(self.config.min_limit, min(self.config.max_limit, int(self._estimate)))

    @property
    def estimate(self) -> float:
        """The limit before rounding down."""
        return self._estimate

    @property
    def min_rtt(self) -> float | None:
        """Gradient: the no-load latency estimate (None before the first sample)."""
        self._roll(self._clock())
        value = min(self._min_current, self._min_previous)
        return None if math.isinf(value) else value

    def try_acquire(self) -> bool:
        """Admit one request (True) or shed it (False: answer 503 without sending)."""
        if self.in_flight >= self.limit:
            self.shed += 1
            return False
        self.in_flight += 1
        self.admitted += 1
        return True

    def cancel(self) -> None:
        """An admitted request was refused locally (bulkhead full, no endpoint) before it was
        sent: it frees its place but says nothing about the service's latency."""
        self.in_flight = max(0, self.in_flight - 1)

    def release(self, rtt: float, *, dropped: bool) -> None:
        """An admitted request ended after ``rtt`` seconds; ``dropped`` when it failed in a
        way that signals overload."""
        in_flight = self.in_flight  # including this one, as when it was measured
        self.in_flight = max(0, self.in_flight - 1)
        if not math.isfinite(rtt) or rtt < 0:
            return
        if self.config.algorithm == "aimd":
            self._aimd(rtt, dropped, in_flight)
        else:
            self._gradient(rtt, dropped, in_flight)

    # -- algorithms

    def _aimd(self, rtt: float, dropped: bool, in_flight: int) -> None:
        if dropped or rtt > self.config.latency_threshold:
            self._good_streak = 0
            self._set(self._estimate * self.backoff_ratio)
            return
        if in_flight * 2 < self.limit:
            return  # not using the limit: no evidence that more would be fine
        self._good_streak += 1
        if self._good_streak >= self.limit:
            self._good_streak = 0
            self._set(self._estimate + 1)

    def _gradient(self, rtt: float, dropped: bool, in_flight: int) -> None:
        now = self._clock()
        self._roll(now)
        if not dropped:  # a failure's time (often ~0) is no measure of the no-load latency
            self._min_current = min(self._min_current, rtt)
        min_rtt = min(self._min_current, self._min_previous)
        estimate = self._estimate
        if dropped:
            proposal = estimate * 0.5
        else:
            if in_flight * 2 < self.limit:
                return
            gradient = max(0.5, min(1.0, min_rtt / rtt)) if rtt > 0 else 1.0
            proposal = estimate * gradient + math.sqrt(estimate)
        self._set(estimate * (1 - self.smoothing) + proposal * self.smoothing)

    def _roll(self, now: float) -> None:
        elapsed = now - self._window_started
        if elapsed < self.min_rtt_window:
            return
        # After two silent windows both minima are out of date.
        self._min_previous = self._min_current if elapsed < 2 * self.min_rtt_window else math.inf
        self._min_current = math.inf
        self._window_started = now

    def _set(self, value: float) -> None:
        self._estimate = max(float(self.config.min_limit), min(float(self.config.max_limit), value))
