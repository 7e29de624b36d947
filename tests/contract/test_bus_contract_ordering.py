"""Bus contract: per-key ordering within a group, and concurrency across keys."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict

from bus_contract_helpers import fetch_nothing_for, fetch_until, offsets, wait_until

from sampan.bus.base import Bus, Delivery, OutgoingMessage
from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.bus.retry import RetryPolicy

FAST = ConsumerOptions(concurrency=8, batch=16, lease_seconds=10.0, wait_seconds=0.05)


async def test_same_key_is_not_leased_while_an_earlier_one_is_leased(
    bus: Bus, topic: str, group: str
) -> None:
    """Within a group the second message of a key is not leased while the first is leased."""
    await bus.create_group(topic, group)
    a0, a1, b0 = await bus.publish_batch(
        topic,
        [
            OutgoingMessage(b"a0", key="a"),
            OutgoingMessage(b"a1", key="a"),
            OutgoingMessage(b"b0", key="b"),
        ],
    )
    got = await fetch_until(bus, topic, group, count=2)
    assert sorted(offsets(got)) == [a0, b0]
    await fetch_nothing_for(bus, topic, group, 0.1, consumer="c2")
    await bus.ack([d for d in got if d.offset == a0])
    [nxt] = await fetch_until(bus, topic, group, consumer="c2")
    assert nxt.offset == a1


async def test_same_key_is_not_leased_while_an_earlier_one_backs_off(
    bus: Bus, topic: str, group: str
) -> None:
    """A message of a key waits while an earlier one of the key waits for its retry."""
    await bus.create_group(topic, group)
    a0, a1 = await bus.publish_batch(
        topic, [OutgoingMessage(b"a0", key="a"), OutgoingMessage(b"a1", key="a")]
    )
    [first] = await fetch_until(bus, topic, group)
    assert first.offset == a0
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.25, jitter=0.0)
    assert await bus.nack(first, "boom", policy) is False
    await fetch_nothing_for(bus, topic, group, 0.15)
    [retry] = await fetch_until(bus, topic, group)
    assert (retry.offset, retry.attempt) == (a0, 2)
    await bus.ack([retry])
    [nxt] = await fetch_until(bus, topic, group)
    assert nxt.offset == a1


async def test_same_key_waits_for_an_expired_lease_to_be_redelivered(
    bus: Bus, topic: str, group: str
) -> None:
    """When the lease of a key's message expires, that message comes back before the next."""
    await bus.create_group(topic, group)
    a0, a1 = await bus.publish_batch(
        topic, [OutgoingMessage(b"a0", key="a"), OutgoingMessage(b"a1", key="a")]
    )
    [first] = await fetch_until(bus, topic, group, lease_seconds=0.2)
    assert first.offset == a0
    [again] = await fetch_until(bus, topic, group, consumer="c2")
    assert (again.offset, again.attempt) == (a0, 2)
    await bus.ack([again])
    [nxt] = await fetch_until(bus, topic, group, consumer="c2")
    assert nxt.offset == a1


async def test_dead_letter_unblocks_the_next_message_of_its_key(
    bus: Bus, topic: str, group: str
) -> None:
    """When a key's message is dead-lettered, the next message of the key is delivered."""
    await bus.create_group(topic, group)
    a0, a1 = await bus.publish_batch(
        topic, [OutgoingMessage(b"a0", key="a"), OutgoingMessage(b"a1", key="a")]
    )
    [first] = await fetch_until(bus, topic, group)
    assert first.offset == a0
    assert await bus.nack(first, "fatal", RetryPolicy(max_attempts=1)) is True
    [nxt] = await fetch_until(bus, topic, group)
    assert nxt.offset == a1


async def test_messages_without_key_and_other_keys_are_leased_together(
    bus: Bus, topic: str, group: str
) -> None:
    """Messages of different keys, and messages without a key, are leased at the same time."""
    await bus.create_group(topic, group)
    published = await bus.publish_batch(
        topic,
        [OutgoingMessage(b"x", key=f"k{i}") for i in range(5)]
        + [OutgoingMessage(b"y") for _ in range(5)],
    )
    got = await fetch_until(bus, topic, group, count=10)
    assert sorted(offsets(got)) == published


async def test_consumer_keeps_per_key_order_with_concurrency(
    bus: Bus, topic: str, group: str
) -> None:
    """With concurrency > 1 and many keys, per key the handler sees offsets strictly increasing."""
    keys = [f"key-{i}" for i in range(20)]
    per_key = 10
    messages = [OutgoingMessage(f"{k}/{n}".encode(), key=k) for n in range(per_key) for k in keys]
    await bus.publish_batch(topic, messages)
    seen: dict[str, list[int]] = defaultdict(list)
    rng = random.Random(7)

    async def handler(d: Delivery) -> None:
        assert d.key is not None
        seen[d.key].append(d.offset)
        await asyncio.sleep(rng.random() * 0.003)

    consumer = Consumer(bus, topic, group, handler, FAST)
    await consumer.start()
    try:
        await wait_until(
            lambda: sum(map(len, seen.values())) >= len(messages), within=15, message="all"
        )
    finally:
        await consumer.stop(grace=2)
    assert set(seen) == set(keys)
    for key, got in seen.items():
        assert len(got) == per_key, key
        assert all(a < b for a, b in itertools.pairwise(got)), (key, got)


async def test_consumer_concurrency_reaches_but_never_exceeds_the_limit(
    bus: Bus, topic: str, group: str
) -> None:
    """Different keys are handled concurrently, up to and never beyond ``concurrency``."""
    limit = 4
    await bus.publish_batch(topic, [OutgoingMessage(b"x", key=f"k{i}") for i in range(24)])
    running = 0
    peak = 0
    done = 0

    async def handler(d: Delivery) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.05)
        finally:
            running -= 1
            done += 1

    options = ConsumerOptions(concurrency=limit, batch=8, lease_seconds=10, wait_seconds=0.05)
    consumer = Consumer(bus, topic, group, handler, options)
    await consumer.start()
    try:
        await wait_until(lambda: done >= 24, within=10, message="24 handled")
    finally:
        await consumer.stop(grace=2)
    assert peak == limit


async def test_consumer_never_runs_one_key_concurrently(bus: Bus, topic: str, group: str) -> None:
    """Messages of one key are handled one at a time even with free concurrency."""
    await bus.publish_batch(topic, [OutgoingMessage(b"x", key="same") for _ in range(8)])
    running = 0
    peak = 0
    done: list[int] = []

    async def handler(d: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.01)
        finally:
            running -= 1
            done.append(d.offset)

    consumer = Consumer(bus, topic, group, handler, FAST)
    await consumer.start()
    try:
        await wait_until(lambda: len(done) >= 8, within=10, message="8 handled")
    finally:
        await consumer.stop(grace=2)
    assert peak == 1
    assert done == sorted(done)
