"""The NATS bus pipelines: a batch's publishes share one wait for their PubAcks, a batch's acks
one confirmation round trip. These check that the returns still mean what the contract says:
offsets of stored messages, and settlements JetStream has already applied."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from sampan.bus.base import BusError, OutgoingMessage
from sampan.bus.nats import NatsBus, NatsBusOptions, _stream

pytestmark = pytest.mark.nats

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def bus() -> AsyncIterator[NatsBus]:
    instance = NatsBus(NATS_URL)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
async def topic(bus: NatsBus) -> AsyncIterator[str]:
    name = f"pipe-{uuid.uuid4().hex[:10]}"
    await bus.create_topic(name)
    yield name
    await bus.delete_topic(name)


async def test_a_batch_returns_consecutive_offsets_of_stored_messages(
    bus: NatsBus, topic: str
) -> None:
    offsets = await bus.publish_batch(
        topic, [OutgoingMessage(f"m{i}".encode(), key=f"k{i % 3}") for i in range(500)]
    )
    assert offsets == list(range(1, 501))
    info = await bus._js.stream_info(_stream(topic))
    assert info.state.messages == 500


async def test_a_duplicate_in_a_batch_gets_the_first_copys_offset(bus: NatsBus, topic: str) -> None:
    first = OutgoingMessage(b"a", dedupe_key="same")
    offsets = await bus.publish_batch(topic, [first, OutgoingMessage(b"b"), first])
    assert offsets == [1, 2, 1]


async def test_a_refused_publish_raises() -> None:
    bus = NatsBus(NATS_URL, NatsBusOptions(auto_create_topics=False))
    await bus.start()
    try:
        bus._known_topics.add("pipe-missing")  # skip the existence check: the server refuses
        with pytest.raises(BusError, match="publish to 'pipe-missing' failed"):
            await bus.publish("pipe-missing", b"x")
    finally:
        await bus.close()


async def test_settlements_are_applied_when_they_return(bus: NatsBus, topic: str) -> None:
    """One confirmation per batch, and still: lag and in-flight read right after are exact."""
    await bus.create_group(topic, "g")
    await bus.publish_batch(topic, [OutgoingMessage(b"x", key=f"k{i}") for i in range(1_000)])
    left = 1_000
    while left:
        got = await bus.fetch(topic, "g", consumer="c", max_messages=200, lease_seconds=30)
        assert got
        await bus.release(got[-10:])
        again = await bus.fetch(topic, "g", consumer="c", max_messages=10, lease_seconds=30)
        assert [d.offset for d in again] == [d.offset for d in got[-10:]]
        got = got[:-10] + again
        await bus.extend(got, 60)
        await bus.ack(got)
        left -= len(got)
        [info] = await bus.groups(topic)
        assert (info.lag, info.in_flight) == (left, 0)
