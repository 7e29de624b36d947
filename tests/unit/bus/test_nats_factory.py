"""open_bus maps the node's bus settings onto NatsBusOptions; ``lease`` becomes ``ack_wait``."""

from __future__ import annotations

import uuid

import pytest

from sampan.bus.base import Retention
from sampan.bus.factory import open_bus
from sampan.bus.nats import NatsBus, _stream, encode_name
from sampan.bus.sqlite import SqliteBusOptions

NATS_URL = "nats://127.0.0.1:4222"


def test_lease_becomes_ack_wait_and_the_other_options_carry_over() -> None:
    options = SqliteBusOptions(
        auto_create_topics=False,
        default_retention=Retention(max_age_seconds=60.0),
        max_in_flight_per_group=123,
    )
    bus = open_bus(NATS_URL, options, lease=7.5)
    assert isinstance(bus, NatsBus)
    assert bus.options.ack_wait == 7.5
    assert bus.options.auto_create_topics is False
    assert bus.options.default_retention == Retention(max_age_seconds=60.0)
    assert bus.options.max_in_flight_per_group == 123


def test_without_a_lease_ack_wait_keeps_its_default() -> None:
    bus = open_bus(NATS_URL)
    assert isinstance(bus, NatsBus)
    assert bus.options.ack_wait == 30.0
    assert isinstance(open_bus("memory://", lease=5.0), type(open_bus("memory://")))


@pytest.mark.nats
async def test_a_new_group_gets_the_lease_as_its_ack_wait() -> None:
    bus = open_bus(NATS_URL, lease=4.0)
    assert isinstance(bus, NatsBus)
    await bus.start()
    topic = f"lease-{uuid.uuid4().hex[:10]}"
    try:
        await bus.create_group(topic, "g")
        info = await bus._js.consumer_info(_stream(topic), encode_name("g"))
        assert info.config.ack_wait == 4.0
    finally:
        await bus.delete_topic(topic)
        await bus.close()
