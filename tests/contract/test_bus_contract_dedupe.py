"""Idempotent publishing: a dedupe key seen within its TTL is not stored twice."""

from __future__ import annotations

import asyncio

from sampan.bus.base import Bus, OutgoingMessage


async def test_same_dedupe_key_is_stored_once_and_returns_the_first_offset(
    bus: Bus, topic: str
) -> None:
    """A retried publish with the same dedupe key returns the original offset."""
    first = await bus.publish_batch(topic, [OutgoingMessage(b"a", dedupe_key="req-1")])
    again = await bus.publish_batch(topic, [OutgoingMessage(b"a-retry", dedupe_key="req-1")])
    other = await bus.publish_batch(topic, [OutgoingMessage(b"b", dedupe_key="req-2")])
    assert again == first
    assert other[0] == first[0] + 1
    [info] = [t for t in await bus.topics() if t.name == topic]
    assert info.messages == 2


async def test_duplicates_inside_one_batch_map_to_one_message(bus: Bus, topic: str) -> None:
    """Within one batch, later copies of a dedupe key map to the first one's offset."""
    offsets = await bus.publish_batch(
        topic,
        [
            OutgoingMessage(b"x", dedupe_key="k"),
            OutgoingMessage(b"plain"),
            OutgoingMessage(b"x", dedupe_key="k"),
            OutgoingMessage(b"y", dedupe_key="j"),
        ],
    )
    assert offsets[0] == offsets[2]
    assert len(set(offsets)) == 3


async def test_dedupe_key_expires_after_its_ttl(bus: Bus, topic: str) -> None:
    """Past its TTL a dedupe key no longer suppresses a publish."""
    first = await bus.publish_batch(topic, [OutgoingMessage(b"a", dedupe_key="k", dedupe_ttl=0.2)])
    await asyncio.sleep(0.3)
    later = await bus.publish_batch(topic, [OutgoingMessage(b"a", dedupe_key="k")])
    assert later != first


async def test_concurrent_publishes_with_one_dedupe_key_store_one(bus: Bus, topic: str) -> None:
    """Concurrent retries of the same request still store one message."""
    offsets = await asyncio.gather(
        *(bus.publish_batch(topic, [OutgoingMessage(b"a", dedupe_key="k")]) for _ in range(20))
    )
    assert len({o[0] for o in offsets}) == 1
