"""Choose a bus backend from its URL."""

from __future__ import annotations

from sampan.bus.base import Bus, BusError
from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
from sampan.observe.metrics import Metrics

SCHEMES = ("sqlite", "memory")
PLANNED_SCHEMES = ("nats", "redis", "rediss")


def open_bus(
    url: str, options: SqliteBusOptions | None = None, metrics: Metrics | None = None
) -> Bus:
    """``sqlite:///path.db`` (embedded, durable) or ``memory://`` (same engine, in memory, for
    tests). The bus still needs ``await bus.start()``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return SqliteBus(url, options, metrics)
    if scheme == "memory":
        base = options or SqliteBusOptions()
        in_memory = SqliteBusOptions(
            durability="normal",
            auto_create_topics=base.auto_create_topics,
            default_retention=base.default_retention,
            max_in_flight_per_group=base.max_in_flight_per_group,
            poll_interval=base.poll_interval,
        )
        return SqliteBus("sqlite:///:memory:", in_memory, metrics)
    if scheme in PLANNED_SCHEMES:
        raise BusError(f"bus URL {url!r}: the {scheme} backend is not available in this version")
    raise BusError(
        f"bus URL {url!r}: unknown scheme {scheme!r} (expected one of: {', '.join(SCHEMES)})"
    )
