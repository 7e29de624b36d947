"""What the mesh knows about one instance of a service, shared by every policy.

Balancers read ``in_flight`` and the latency estimate; health checks, the outlier detector
and the circuit breaker decide whether the endpoint may be picked at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sampan.http.client import Endpoint


class EndpointBreaker(Protocol):
    """The slice of a circuit breaker the balancer needs (see ``breaker.py``)."""

    def allows(self, now: float) -> bool:
        """False while open; in half-open, True only while probe slots are free."""
        ...


@dataclass(eq=False)
class EndpointState:
    url: str
    endpoint: Endpoint
    base_path: str = ""
    weight: int = 1
    version: str | None = None
    source: str = "static"
    """static, dns or registered."""

    # -- may it be picked?
    healthy: bool = True
    """The active health check's verdict."""
    unhealthy_until: float = 0.0
    """Passive health: sits out until then after consecutive failures on live traffic."""
    ejected_until: float = 0.0
    """Outlier ejection: out until then."""
    ejections: int = 0
    breaker: EndpointBreaker | None = None

    # -- load and latency (balancers)
    in_flight: int = 0
    ewma: float = 0.0
    """Peak-EWMA latency estimate, seconds; 0 until the first observation."""
    ewma_at: float = 0.0
    """When ``ewma`` was last updated (monotonic seconds)."""

    # -- counters (metrics, outlier detection, `sampan services`)
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    consecutive_5xx: int = 0
    last_error: str | None = None
    expires_at: float | None = None
    """Registered endpoints: when the missing heartbeat removes it."""
    labels: dict[str, str] = field(default_factory=dict)

    def available(self, now: float) -> bool:
        return (
            self.healthy
            and now >= self.unhealthy_until
            and now >= self.ejected_until
            and (self.breaker is None or self.breaker.allows(now))
        )
