"""Outlier ejection: take an endpoint out of the balancer's choice for a while when it
behaves worse than it should (consecutive 5xx) or worse than its peers (success rate).

- **Consecutive 5xx** (checked on every :meth:`OutlierDetector.record`): a 5xx response
  or an error without a response (connect, reset, timeout) increments
  ``EndpointState.consecutive_5xx``; any other response resets it. At
  ``consecutive_5xx`` the endpoint is ejected at once.
- **Success rate** (checked by :meth:`OutlierDetector.evaluate`, which the owner calls every
  ``interval``): among endpoints that are not ejected and had at least
  ``success_rate_min_requests`` requests in the interval, when there are at least
  ``success_rate_min_hosts`` of them, those whose success rate is below
  ``mean - success_rate_stdev_factor * stdev`` (population standard deviation) are
  ejected, worst first. Interval statistics then start again.

Ejection sets ``EndpointState.ejected_until`` (``available()`` honours it) and increments
``EndpointState.ejections`` (a total, for display). The ejection time is
``base_ejection * multiplier``: the multiplier grows by one per ejection, up to
``MAX_MULTIPLIER``, and shrinks by one for every full interval the endpoint spends back in
service without being ejected, so an endpoint that failed once last month starts from
``base_ejection`` again.

The ejection cap. At most ``max_ejected(n)`` of the ``n`` known endpoints are ejected at
any time: ``floor(n * max_ejection_percent / 100)``, raised to 1 when the percent is
above 0 and there are at least two endpoints. So one bad endpoint out of three is still
ejected with the 10-50 % percents people configure (Envoy also ejects at least one), but
a service's only endpoint is never ejected unless the percent is 100 (ejecting it would
leave nothing to send to), and 0 % turns ejection off. An ejection the cap refuses is
counted in ``refused``; the consecutive-5xx one is retried on the next failure.

Endpoints are known from :meth:`track` (call it when discovery changes the set), from
:meth:`evaluate` (its argument replaces the set) and from :meth:`record`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from sampan.mesh.config import OutlierConfig
from sampan.mesh.endpoint import EndpointState

__all__ = ["MAX_MULTIPLIER", "OutlierDetector"]

MAX_MULTIPLIER: Final = 10
"""The longest ejection is this many times ``base_ejection``."""

# Equal success rates must not look like outliers because of float rounding in the mean.
_EPSILON: Final = 1e-9


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    successes: int = 0
    multiplier: int = 0
    ejected: bool = False
    healthy_since: float = 0.0
    """Back in service since (for shrinking the multiplier)."""


class OutlierDetector:
    __slots__ = (
        "_clock",
        "_stats",
        "config",
        "ejected_consecutive_5xx",
        "ejected_success_rate",
        "refused",
        "restored",
    )

    def __init__(self, config: OutlierConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._stats: dict[EndpointState, _Stats] = {}
        self.ejected_consecutive_5xx = 0
        self.ejected_success_rate = 0
        self.refused = 0
        """Ejections not made because of ``max_ejection_percent``."""
        self.restored = 0
        """Ejections that ended."""

    # -- the endpoint set

    def track(self, endpoints: Iterable[EndpointState]) -> None:
        """Make ``endpoints`` the known set (statistics of the ones kept survive)."""
        now = self._clock()
        self._stats = {
            endpoint: self._stats.get(endpoint) or _Stats(healthy_since=now)
            for endpoint in endpoints
        }

    def max_ejected(self, total: int | None = None) -> int:
        """How many of ``total`` (default: the known) endpoints may be ejected at once."""
        n = len(self._stats) if total is None else total
        percent = self.config.max_ejection_percent
        allowed = n * percent // 100
        if allowed == 0 and percent > 0 and n >= 2:
            allowed = 1
        return allowed

    def ejected_count(self) -> int:
        now = self._clock()
        return sum(1 for endpoint in self._stats if now < endpoint.ejected_until)

    # -- live traffic

    def record(self, endpoint: EndpointState, *, status: int | None, error: bool) -> None:
        """One request to ``endpoint`` ended with ``status``, or with an error and no
        response (``error=True``)."""
        stats = self._stats.get(endpoint)
        if stats is None:
            stats = self._stats[endpoint] = _Stats(healthy_since=self._clock())
        failed = error or status is None or status >= 500
        stats.requests += 1
        if not failed:
            stats.successes += 1
            endpoint.consecutive_5xx = 0
            return
        endpoint.consecutive_5xx += 1
        if endpoint.consecutive_5xx >= self.config.consecutive_5xx:
            now = self._clock()
            if now >= endpoint.ejected_until and self._eject(endpoint, stats, now):
                self.ejected_consecutive_5xx += 1

    # -- every interval

    def evaluate(self, endpoints: Sequence[EndpointState]) -> list[EndpointState]:
        """Restore endpoints whose ejection ended, run success-rate ejection, start a new
        interval. Returns the endpoints ejected by this call."""
        self.track(endpoints)
        now = self._clock()
        interval = self.config.interval
        for endpoint, stats in self._stats.items():
            if stats.ejected and now >= endpoint.ejected_until:
                stats.ejected = False
                stats.healthy_since = now
                endpoint.consecutive_5xx = 0
                self.restored += 1
            elif (
                not stats.ejected and stats.multiplier > 0 and now - stats.healthy_since >= interval
            ):
                stats.multiplier -= 1
                stats.healthy_since = now
        ejected = self._success_rate_ejections(now)
        for stats in self._stats.values():
            stats.requests = 0
            stats.successes = 0
        return ejected

    def _success_rate_ejections(self, now: float) -> list[EndpointState]:
        config = self.config
        judged = [
            (stats.successes / stats.requests, endpoint, stats)
            for endpoint, stats in self._stats.items()
            if not stats.ejected
            and now >= endpoint.ejected_until
            and stats.requests >= config.success_rate_min_requests
        ]
        if len(judged) < config.success_rate_min_hosts:
            return []
        rates = [rate for rate, _, _ in judged]
        mean = math.fsum(rates) / len(rates)
        stdev = math.sqrt(math.fsum((rate - mean) ** 2 for rate in rates) / len(rates))
        threshold = mean - config.success_rate_stdev_factor * stdev
        ejected: list[EndpointState] = []
        for rate, endpoint, stats in sorted(judged, key=lambda item: item[0]):
            if rate >= threshold - _EPSILON:
                break
            if self._eject(endpoint, stats, now):
                self.ejected_success_rate += 1
                ejected.append(endpoint)
        return ejected

    def _eject(self, endpoint: EndpointState, stats: _Stats, now: float) -> bool:
        if self.ejected_count() >= self.max_ejected():
            self.refused += 1
            return False
        stats.multiplier = min(stats.multiplier + 1, MAX_MULTIPLIER)
        stats.ejected = True
        endpoint.ejected_until = now + self.config.base_ejection * stats.multiplier
        endpoint.ejections += 1
        endpoint.consecutive_5xx = 0
        return True
