"""SqliteBus's database thread: one failing operation must not take the bus down."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from sampan.bus.base import Bus, BusError
from sampan.bus.factory import open_bus
from sampan.bus.retry import RetryPolicy


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    instance = open_bus("memory://")
    await instance.start()
    yield instance
    await asyncio.wait_for(instance.close(), 2)


class ExplodingPolicy(RetryPolicy):
    """A retry policy with a bug: computing the backoff raises (on the database thread)."""

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        raise RuntimeError("bug in backoff")


async def test_unexpected_error_in_one_operation_does_not_stop_the_bus(bus: Bus) -> None:
    """An operation failing with a non-bus error fails its caller; later calls still work."""
    await bus.create_topic("t")
    await bus.create_group("t", "g")
    await bus.publish("t", b"x")
    [d] = await bus.fetch("t", "g", consumer="c", max_messages=1, lease_seconds=10)
    with pytest.raises((BusError, RuntimeError)):
        await asyncio.wait_for(bus.nack(d, "boom", ExplodingPolicy()), 2)
    assert await asyncio.wait_for(bus.publish("t", b"still alive"), 2) == 1
    await asyncio.wait_for(bus.ack([d]), 2)
    assert await asyncio.wait_for(bus.lag("t", "g"), 2) == 1
