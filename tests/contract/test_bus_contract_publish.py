"""Bus contract: publishing, durability, validation and delayed delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from bus_contract_helpers import Backend, fetch_nothing_for, fetch_until, offsets, unique

from sampan.bus.base import Bus, BusError, GroupNotFound, OutgoingMessage


async def test_publish_returns_increasing_offsets(bus: Bus, topic: str) -> None:
    """Each publish returns a new offset, larger than every earlier one on the topic."""
    got = [await bus.publish(topic, f"m{i}".encode()) for i in range(5)]
    assert got == sorted(got)
    assert len(set(got)) == 5


async def test_published_message_round_trips(bus: Bus, topic: str, group: str) -> None:
    """A delivery carries the value, key, headers and offset that publish stored."""
    await bus.create_group(topic, group)
    before = time.time()
    offset = await bus.publish(topic, b"\x00payload\xff", key="k1", headers={"x-id": "7"})
    [d] = await fetch_until(bus, topic, group)
    assert (d.topic, d.group, d.offset, d.key, d.value) == (
        topic,
        group,
        offset,
        "k1",
        b"\x00payload\xff",
    )
    assert dict(d.headers) == {"x-id": "7"}
    assert d.attempt == 1
    assert before - 1 <= d.published_at <= time.time() + 1


async def test_publish_is_durable_across_reopen(
    backend: Backend,
    bus: Bus,
    topic: str,
    group: str,
    open_another_bus: Callable[[], Awaitable[Bus]],
) -> None:
    """Once publish returned, a new bus instance opened after close still has the message."""
    if not backend.reopen:
        pytest.skip(f"{backend.name}: data does not outlive the bus instance by design")
    await bus.create_group(topic, group)
    offset = await bus.publish(topic, b"durable", key="k", headers={"h": "v"})
    await bus.close()
    reopened = await open_another_bus()
    [d] = await fetch_until(reopened, topic, group)
    assert (d.offset, d.value, d.key, dict(d.headers)) == (offset, b"durable", "k", {"h": "v"})


async def test_publish_batch_is_ordered(bus: Bus, topic: str, group: str) -> None:
    """publish_batch assigns consecutive offsets in list order and they are delivered in it."""
    await bus.create_group(topic, group)
    batch = [OutgoingMessage(f"m{i}".encode()) for i in range(10)]
    got = await bus.publish_batch(topic, batch)
    assert got == list(range(got[0], got[0] + 10))
    delivered = await fetch_until(bus, topic, group, count=10)
    assert offsets(delivered) == got
    assert [d.value for d in delivered] == [m.value for m in batch]


async def test_publish_batch_is_atomic(bus: Bus, topic: str, group: str) -> None:
    """A batch with one invalid message publishes none of its messages."""
    await bus.create_group(topic, group)
    batch = [
        OutgoingMessage(b"ok-1"),
        OutgoingMessage(b"bad", headers={"sampan-dlq-error": "forged"}),
        OutgoingMessage(b"ok-2"),
    ]
    with pytest.raises(BusError):
        await bus.publish_batch(topic, batch)
    await fetch_nothing_for(bus, topic, group, 0.1)
    assert await bus.lag(topic, group) == 0


@pytest.mark.parametrize("name", ["sampan-anything", "sampan-dlq-topic", "sampan-"])
async def test_reserved_headers_are_rejected(bus: Bus, topic: str, name: str) -> None:
    """User headers must not use the reserved 'sampan-' prefix."""
    with pytest.raises(BusError):
        await bus.publish(topic, b"x", headers={name: "v"})


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-dash", "with space", "a/b", "é", "x" * 201, "a\nb"]
)
async def test_invalid_topic_names_are_rejected(bus: Bus, name: str) -> None:
    """Topic names are letters, digits, '.', '_' and '-', start alphanumeric, at most 200."""
    with pytest.raises(BusError):
        await bus.create_topic(name)
    with pytest.raises(BusError):
        await bus.publish(name, b"x")


async def test_fetch_on_unknown_group_raises_group_not_found(bus: Bus, topic: str) -> None:
    """Fetching for a group that was never created raises GroupNotFound."""
    with pytest.raises(GroupNotFound):
        await bus.fetch(topic, unique("nogroup"), consumer="c", max_messages=1, lease_seconds=1)
    with pytest.raises(GroupNotFound):
        await bus.lag(topic, unique("nogroup"))


async def test_fetch_waits_for_a_publish(bus: Bus, topic: str, group: str) -> None:
    """A fetch with wait_seconds returns a message published while it waits."""
    await bus.create_group(topic, group)
    fetching = asyncio.create_task(
        bus.fetch(topic, group, consumer="c", max_messages=5, lease_seconds=5, wait_seconds=2.0)
    )
    await asyncio.sleep(0.05)
    started = time.monotonic()
    offset = await bus.publish(topic, b"late")
    got = await fetching
    assert offsets(got) == [offset]
    assert time.monotonic() - started < 1.0


async def test_delayed_message_is_not_delivered_before_its_time(
    bus: Bus, topic: str, group: str
) -> None:
    """A message with deliver_at is not delivered before that time, and is delivered after."""
    await bus.create_group(topic, group)
    due = time.time() + 0.3
    offset = await bus.publish(topic, b"later", deliver_at=due)
    await fetch_nothing_for(bus, topic, group, 0.15)
    [d] = await fetch_until(bus, topic, group)
    assert time.time() >= due
    assert d.offset == offset
    assert d.attempt == 1


async def test_delayed_message_does_not_hold_back_its_key(bus: Bus, topic: str, group: str) -> None:
    """A delayed message does not block later messages of the same key (they go first)."""
    await bus.create_group(topic, group)
    delayed = await bus.publish(topic, b"delayed", key="k", deliver_at=time.time() + 0.3)
    now1 = await bus.publish(topic, b"now-1", key="k")
    now2 = await bus.publish(topic, b"now-2", key="k")
    [first] = await fetch_until(bus, topic, group)
    assert first.offset == now1
    await bus.ack([first])
    [second] = await fetch_until(bus, topic, group)
    assert second.offset == now2
    await bus.ack([second])
    [last] = await fetch_until(bus, topic, group)
    assert last.offset == delayed


async def test_delayed_messages_come_in_due_order(bus: Bus, topic: str, group: str) -> None:
    """Delayed messages without keys are delivered once due, the earlier due time first."""
    await bus.create_group(topic, group)
    now = time.time()
    late = await bus.publish(topic, b"late", deliver_at=now + 0.3)
    early = await bus.publish(topic, b"early", deliver_at=now + 0.1)
    got = await fetch_until(bus, topic, group, count=2, max_messages=1)
    assert offsets(got) == [early, late]
