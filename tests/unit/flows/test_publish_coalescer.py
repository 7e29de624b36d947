"""Concurrent topic sends become one publish_batch per topic; each caller still gets its own
outcome, and returns only once the bus has its message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from sampan.bus.base import Bus, BusError, OutgoingMessage
from sampan.bus.factory import open_bus
from sampan.flows.publish_coalescer import PublishCoalescer


class RecordingBus:
    """Wraps a real in-memory bus and records each publish_batch call."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.calls: list[tuple[str, int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def publish_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
        self.calls.append((topic, len(messages)))
        await self.release.wait()
        return await self.bus.publish_batch(topic, messages)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    real = open_bus("memory://")
    await real.start()
    yield real
    await real.close()


async def test_concurrent_sends_share_one_batch_per_topic(bus: Bus) -> None:
    recording = RecordingBus(bus)
    coalescer = PublishCoalescer(recording)  # type: ignore[arg-type]
    sends = [
        coalescer.publish("a" if i % 3 else "b", OutgoingMessage(b"%d" % i, key=f"k{i}"))
        for i in range(30)
    ]
    offsets = await asyncio.gather(*sends)
    assert sorted(recording.calls) == [("a", 20), ("b", 10)]
    assert coalescer.batches == 2
    # Each caller got its own message's offset, in the order it sent.
    assert offsets[1:3] == [0, 1] and offsets[0] == 0 and offsets[3] == 1
    await bus.create_group("a", "g")
    got = await bus.fetch("a", "g", consumer="c", max_messages=100, lease_seconds=5)
    assert [d.value for d in got] == [b"%d" % i for i in range(30) if i % 3]


async def test_a_caller_returns_only_once_its_batch_is_durable(bus: Bus) -> None:
    recording = RecordingBus(bus)
    recording.release.clear()
    coalescer = PublishCoalescer(recording)  # type: ignore[arg-type]
    send = asyncio.ensure_future(coalescer.publish("t", OutgoingMessage(b"x")))
    for _ in range(5):
        await asyncio.sleep(0)
    assert recording.calls == [("t", 1)] and not send.done()
    recording.release.set()
    assert await send == 0


async def test_sequential_sends_are_not_delayed_into_one_batch(bus: Bus) -> None:
    recording = RecordingBus(bus)
    coalescer = PublishCoalescer(recording)  # type: ignore[arg-type]
    assert await coalescer.publish("t", OutgoingMessage(b"1")) == 0
    assert await coalescer.publish("t", OutgoingMessage(b"2")) == 1
    assert recording.calls == [("t", 1), ("t", 1)]


async def test_batches_are_capped(bus: Bus) -> None:
    recording = RecordingBus(bus)
    coalescer = PublishCoalescer(recording, max_batch=4)  # type: ignore[arg-type]
    await asyncio.gather(*(coalescer.publish("t", OutgoingMessage(b"m")) for _ in range(10)))
    assert [size for _, size in recording.calls] == [4, 4, 2]


async def test_a_refused_message_fails_only_its_own_caller(bus: Bus) -> None:
    coalescer = PublishCoalescer(bus)
    good = OutgoingMessage(b"ok", headers={"x-a": "1"})
    bad = OutgoingMessage(b"no", headers={"sampan-reserved": "1"})
    results = await asyncio.gather(
        coalescer.publish("t", good),
        coalescer.publish("t", bad),
        coalescer.publish("t", good),
        return_exceptions=True,
    )
    assert isinstance(results[1], BusError)
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1]


async def test_close_waits_for_batches_in_flight(bus: Bus) -> None:
    recording = RecordingBus(bus)
    recording.release.clear()
    coalescer = PublishCoalescer(recording)  # type: ignore[arg-type]
    send = asyncio.ensure_future(coalescer.publish("t", OutgoingMessage(b"x")))
    await asyncio.sleep(0)
    send.cancel()  # the caller went away (a consumer stopping); the batch still lands
    closing = asyncio.ensure_future(coalescer.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    recording.release.set()
    await closing
    await bus.create_group("t", "g")
    got = await bus.fetch("t", "g", consumer="c", max_messages=10, lease_seconds=5)
    assert [d.value for d in got] == [b"x"]
