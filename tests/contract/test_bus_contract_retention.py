"""Bus contract: retention by age and size, replay by offset and time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bus_contract_helpers import fetch_nothing_for, fetch_until, offsets

from sampan.bus.base import Bus, OutgoingMessage, Retention, TopicInfo

MakeTopic = Callable[..., Awaitable[str]]


async def info(bus: Bus, topic: str) -> TopicInfo:
    return next(t for t in await bus.topics() if t.name == topic)


async def test_retention_by_age_removes_old_messages(
    bus: Bus, make_topic: MakeTopic, group: str
) -> None:
    """enforce_retention deletes messages older than max_age_seconds and keeps newer ones."""
    topic = await make_topic(Retention(max_age_seconds=0.25))
    await bus.publish_batch(topic, [OutgoingMessage(b"old") for _ in range(3)])
    await asyncio.sleep(0.35)
    fresh = await bus.publish_batch(topic, [OutgoingMessage(b"new") for _ in range(2)])
    assert await bus.enforce_retention() >= 3
    t = await info(bus, topic)
    assert (t.messages, t.bytes, t.first_offset) == (2, 6, fresh[0])
    assert t.retention == Retention(max_age_seconds=0.25)
    await bus.create_group(topic, group, start="earliest")
    assert offsets(await fetch_until(bus, topic, group, count=2)) == fresh


async def test_retention_by_size_keeps_the_newest_messages(
    bus: Bus, make_topic: MakeTopic, group: str
) -> None:
    """enforce_retention deletes the oldest messages until the topic fits in max_bytes."""
    topic = await make_topic(Retention(max_bytes=100))
    published = await bus.publish_batch(topic, [OutgoingMessage(b"x" * 30) for _ in range(10)])
    assert await bus.enforce_retention() == 7
    t = await info(bus, topic)
    assert t.bytes <= 100
    assert (t.messages, t.bytes, t.first_offset) == (3, 90, published[7])
    await bus.create_group(topic, group, start="earliest")
    assert offsets(await fetch_until(bus, topic, group, count=3)) == published[7:]


async def test_retention_keeps_messages_in_flight(
    bus: Bus, make_topic: MakeTopic, group: str
) -> None:
    """Messages leased, backing off or waiting behind their key are kept past retention."""
    topic = await make_topic(Retention(max_age_seconds=0.2))
    await bus.create_group(topic, group)
    leased, waiting, unread = await bus.publish_batch(
        topic,
        [OutgoingMessage(b"a", key="k"), OutgoingMessage(b"b", key="k"), OutgoingMessage(b"c")],
    )
    got = await fetch_until(bus, topic, group, count=2, lease_seconds=10)
    assert sorted(offsets(got)) == [leased, unread]
    await asyncio.sleep(0.3)
    await bus.enforce_retention()
    first = next(d for d in got if d.offset == leased)
    await bus.ack([first])
    [nxt] = await fetch_until(bus, topic, group)
    assert (nxt.offset, nxt.value) == (waiting, b"b")
    t = await info(bus, topic)
    assert t.messages == 3
    await bus.ack([nxt, *(d for d in got if d.offset == unread)])
    await bus.enforce_retention()
    assert (await info(bus, topic)).messages == 0


async def test_retention_update_via_create_topic(bus: Bus, topic: str) -> None:
    """create_topic on an existing topic updates its retention and keeps its messages."""
    await bus.publish(topic, b"x")
    await bus.create_topic(topic, retention=Retention(max_age_seconds=3600, max_bytes=10**6))
    t = await info(bus, topic)
    assert t.retention == Retention(max_age_seconds=3600, max_bytes=10**6)
    assert t.messages == 1
    assert await bus.enforce_retention() == 0


async def test_replay_from_an_offset_redelivers_from_there(
    bus: Bus, topic: str, group: str
) -> None:
    """replay(offset=n) makes the group read again from offset n."""
    await bus.create_group(topic, group)
    published = await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(5)])
    await bus.ack(await fetch_until(bus, topic, group, count=5))
    await fetch_nothing_for(bus, topic, group, 0.05)
    assert await bus.replay(topic, group, offset=published[2]) == published[2]
    assert await bus.lag(topic, group) == 3
    got = await fetch_until(bus, topic, group, count=3)
    assert offsets(got) == published[2:]
    assert all(d.attempt == 1 for d in got)


async def test_replay_from_a_timestamp_redelivers_from_there(
    bus: Bus, topic: str, group: str
) -> None:
    """replay(timestamp=t) makes the group read again from the first message at/after t."""
    await bus.create_group(topic, group)
    await bus.publish_batch(topic, [OutgoingMessage(b"before") for _ in range(3)])
    await asyncio.sleep(0.02)
    cut = time.time()
    await asyncio.sleep(0.02)
    after = await bus.publish_batch(topic, [OutgoingMessage(b"after") for _ in range(2)])
    await bus.ack(await fetch_until(bus, topic, group, count=5))
    assert await bus.replay(topic, group, timestamp=cut) == after[0]
    got = await fetch_until(bus, topic, group, count=2)
    assert offsets(got) == after
    assert [d.value for d in got] == [b"after", b"after"]


async def test_replay_to_the_future_skips_everything(bus: Bus, topic: str, group: str) -> None:
    """replay to a timestamp after the last message leaves nothing to read."""
    await bus.create_group(topic, group)
    await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(3)])
    end = await bus.replay(topic, group, timestamp=time.time() + 60)
    await fetch_nothing_for(bus, topic, group, 0.05)
    assert await bus.lag(topic, group) == 0
    assert end == (await info(bus, topic)).next_offset


async def test_ack_from_before_a_replay_does_not_settle_the_replayed_message(
    bus: Bus, topic: str, group: str
) -> None:
    """A delivery taken before a replay, acked after it, does not hide the replayed message."""
    await bus.create_group(topic, group)
    a0, a1 = await bus.publish_batch(
        topic, [OutgoingMessage(b"a0", key="k"), OutgoingMessage(b"a1", key="k")]
    )
    await bus.ack(await fetch_until(bus, topic, group))
    [old] = await fetch_until(bus, topic, group)
    assert old.offset == a1
    await bus.replay(topic, group, offset=a0)  # while `old` is still being handled
    [first] = await fetch_until(bus, topic, group)
    assert first.offset == a0
    await bus.ack([old])
    await bus.ack([first])
    [again] = await fetch_until(bus, topic, group)
    assert again.offset == a1
