"""timer: fire every interval, on instants aligned to the interval since the Unix epoch.

Alignment (a 5 s timer fires at :00, :05, :10...) is what lets several nodes running the same
flow agree on each tick, so the dedupe key keeps one message per tick.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sampan.flows.connectors._schedule import ScheduleSource
from sampan.flows.endpoint import EndpointContext, EndpointKind, Source
from sampan.units import Duration


class TimerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timer: Duration = Field(
        gt=0,
        description="Interval between ticks ('5s', '1m'). Ticks fall on multiples of the "
        "interval since the Unix epoch, so every node fires the same instants.",
    )
    body: Any = Field(
        None,
        description='Payload of every tick (any JSON). Default: `{"fired_at": <ISO 8601>}`.',
    )


def aligned_next(interval: float, after: float) -> float:
    """The first multiple of ``interval`` strictly after ``after``."""
    tick = math.floor(after / interval + 1) * interval
    return tick if tick > after else tick + interval


def build(config: TimerConfig, ctx: EndpointContext) -> Source:
    interval = config.timer
    return ScheduleSource(ctx, lambda t: aligned_next(interval, t), config.body, "timer")


SOURCE: EndpointKind[TimerConfig, Source] = EndpointKind(
    key="timer",
    config=TimerConfig,
    build=build,
    summary="Fires every interval; one message per tick across all nodes.",
)
