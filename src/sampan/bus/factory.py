"""Choose a bus backend from its URL."""

from __future__ import annotations

import dataclasses

from sampan.bus.base import Bus, BusError
from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
from sampan.observe.metrics import Metrics

SCHEMES = ("sqlite", "memory", "nats", "redis", "rediss")
PLANNED_SCHEMES: tuple[str, ...] = ()


def open_bus(
    url: str,
    options: SqliteBusOptions | None = None,
    metrics: Metrics | None = None,
    *,
    lease: float | None = None,
) -> Bus:
    """``sqlite:///path.db`` (embedded, durable) or ``memory://`` (same engine, in memory, for
    tests). The bus still needs ``await bus.start()``.

    ``lease`` (the node's ``bus.lease``) becomes the NATS consumers' ``ack_wait``: what a
    process that died held comes back after it, as an expired lease does on the other
    backends. Those keep leases per fetch and ignore it."""
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
    if scheme in ("redis", "rediss"):
        from sampan.bus.redis import RedisBus, RedisBusOptions

        base = options or SqliteBusOptions()
        redis_options = RedisBusOptions(
            auto_create_topics=base.auto_create_topics,
            default_retention=base.default_retention,
            max_in_flight_per_group=base.max_in_flight_per_group,
            poll_interval=base.poll_interval,
        )
        return RedisBus(url, redis_options, metrics)
    if scheme == "nats":
        from sampan.bus.nats import NatsBus, NatsBusOptions

        nats_options = NatsBusOptions()
        if options is not None:
            nats_options = dataclasses.replace(
                nats_options,
                auto_create_topics=options.auto_create_topics,
                default_retention=options.default_retention,
                max_in_flight_per_group=options.max_in_flight_per_group,
            )
        if lease is not None:
            nats_options = dataclasses.replace(nats_options, ack_wait=lease)
        return NatsBus(url, nats_options, metrics)
    if scheme in PLANNED_SCHEMES:
        raise BusError(f"bus URL {url!r}: the {scheme} backend is not available in this version")
    raise BusError(
        f"bus URL {url!r}: unknown scheme {scheme!r} (expected one of: {', '.join(SCHEMES)})"
    )
