"""Bus contract: consumer groups (exclusive within a group, independent across groups)."""

from __future__ import annotations

import asyncio
from collections import Counter as Multiset

from bus_contract_helpers import fetch_nothing_for, fetch_until, offsets, unique, wait_until

from sampan.bus.base import Bus, Delivery, OutgoingMessage
from sampan.bus.consumer import Consumer, ConsumerOptions


async def test_two_consumers_of_one_group_split_the_work(bus: Bus, topic: str, group: str) -> None:
    """Each message goes to exactly one consumer of a group: no overlap and no gap."""
    published = await bus.publish_batch(
        topic, [OutgoingMessage(f"m{i}".encode(), key=f"k{i % 13}") for i in range(120)]
    )
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def handler_for(name: str):  # type: ignore[no-untyped-def]
        async def handler(d: Delivery) -> None:
            seen[name].append(d.offset)
            await asyncio.sleep(0.002)

        return handler

    options = ConsumerOptions(concurrency=4, batch=4, lease_seconds=10, wait_seconds=0.05)
    a = Consumer(bus, topic, group, handler_for("a"), options, name="a")
    b = Consumer(bus, topic, group, handler_for("b"), options, name="b")
    await a.start()
    await b.start()
    try:
        await wait_until(lambda: len(seen["a"]) + len(seen["b"]) >= 120, within=15)
        await asyncio.sleep(0.1)  # a duplicate would show up now
    finally:
        await a.stop(grace=2)
        await b.stop(grace=2)
    both = Multiset(seen["a"] + seen["b"])
    assert sorted(both) == published, "gap or duplicate"
    assert max(both.values()) == 1
    assert seen["a"] and seen["b"], "one consumer got no work"


async def test_raw_fetches_of_one_group_never_overlap(bus: Bus, topic: str, group: str) -> None:
    """Concurrent fetches of two consumers of one group never lease the same message twice."""
    await bus.create_group(topic, group)
    published = await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(50)])

    async def take(consumer: str) -> list[int]:
        got: list[int] = []
        for _ in range(20):
            got += offsets(
                await bus.fetch(topic, group, consumer=consumer, max_messages=3, lease_seconds=10)
            )
        return got

    first, second = await asyncio.gather(take("c1"), take("c2"))
    assert not set(first) & set(second)
    assert sorted(first + second) == published


async def test_groups_are_independent(bus: Bus, topic: str) -> None:
    """Every group sees every message, whatever other groups do with it."""
    g1, g2 = unique("g"), unique("g")
    await bus.create_group(topic, g1)
    await bus.create_group(topic, g2)
    published = await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(5)])
    got1 = await fetch_until(bus, topic, g1, count=5)
    await bus.ack(got1)
    got2 = await fetch_until(bus, topic, g2, count=5)
    assert offsets(got1) == offsets(got2) == published
    assert all(d.attempt == 1 for d in got2)
    assert await bus.lag(topic, g1) == 0
    assert await bus.lag(topic, g2) == 5


async def test_new_group_starts_at_earliest(bus: Bus, topic: str, group: str) -> None:
    """A group created with start='earliest' reads the messages published before it existed."""
    published = await bus.publish_batch(topic, [OutgoingMessage(b"old") for _ in range(3)])
    await bus.create_group(topic, group, start="earliest")
    got = await fetch_until(bus, topic, group, count=3)
    assert offsets(got) == published


async def test_new_group_starts_at_latest(bus: Bus, topic: str, group: str) -> None:
    """A group created with start='latest' skips earlier messages and reads only newer ones."""
    await bus.publish_batch(topic, [OutgoingMessage(b"old") for _ in range(3)])
    await bus.create_group(topic, group, start="latest")
    await fetch_nothing_for(bus, topic, group, 0.1)
    assert await bus.lag(topic, group) == 0
    new = await bus.publish(topic, b"new")
    [d] = await fetch_until(bus, topic, group)
    assert d.offset == new


async def test_create_group_again_keeps_its_position(bus: Bus, topic: str, group: str) -> None:
    """Creating an existing group does nothing: ``start`` only matters for a new group."""
    await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(3)])
    await bus.create_group(topic, group, start="latest")
    await bus.create_group(topic, group, start="earliest")
    await fetch_nothing_for(bus, topic, group, 0.1)
    await bus.publish(topic, b"y")
    await bus.create_group(topic, group, start="latest")
    assert len(await fetch_until(bus, topic, group)) == 1


async def test_groups_lists_every_group_with_its_lag(bus: Bus, topic: str) -> None:
    """groups() reports each group's lag, in-flight count and position; lag falls with acks."""
    g1, g2 = unique("g"), unique("g")
    await bus.create_group(topic, g1)
    await bus.create_group(topic, g2)
    await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(6)])
    infos = {i.group: i for i in await bus.groups(topic)}
    assert {g1, g2} <= set(infos)
    assert infos[g1].lag == infos[g2].lag == 6
    got = await fetch_until(bus, topic, g1, count=6)
    infos = {i.group: i for i in await bus.groups(topic)}
    assert (infos[g1].lag, infos[g1].in_flight) == (6, 6)
    assert infos[g1].next_offset == got[-1].offset + 1
    await bus.ack(got[:2])
    assert await bus.lag(topic, g1) == 4
    await bus.ack(got[2:])
    infos = {i.group: i for i in await bus.groups(topic)}
    assert (infos[g1].lag, infos[g1].in_flight) == (0, 0)
    assert infos[g2].lag == 6
    topic_info = next(t for t in await bus.topics() if t.name == topic)
    assert {g1, g2} <= set(topic_info.groups)
