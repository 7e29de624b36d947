"""MQTT source and sink against the local Mosquitto (127.0.0.1:1883)."""

from __future__ import annotations

import asyncio
import socket
import uuid

import aiomqtt
import pytest

from sampan.flows.connectors import mqtt
from sampan.flows.connectors.mqtt import HEADER_TOPIC, MqttSource
from sampan.flows.message import FlowMessage


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not reachable(1883), reason="no MQTT broker on 127.0.0.1:1883")
URL = "mqtt://127.0.0.1:1883"


def make_source(ctx, prefix: str, client_id: str) -> MqttSource:
    config = mqtt.MqttSourceConfig.model_validate(
        {"mqtt": URL, "topic": f"{prefix}/#", "client_id": client_id, "reconnect_max": "200ms"}
    )
    built = mqtt.SOURCE.build(config, ctx)
    assert isinstance(built, MqttSource)
    return built


async def publish(topic: str, payloads: list[bytes], *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1, retain=retain)


async def wait_for(predicate, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def forget_session(client_id: str) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=client_id, clean_session=True):
        pass


async def test_messages_emitted_with_topic_header(ctx, emitter) -> None:
    prefix, client_id = f"t-{uuid.uuid4().hex}", f"sampan-test-{uuid.uuid4().hex[:8]}"
    source = make_source(ctx, prefix, client_id)
    await source.start(emitter)
    try:
        await asyncio.wait_for(source.connected.wait(), 10)
        await publish(f"{prefix}/room1", [b'{"t": 21.5}', b'{"t": 22}'])

        async def two() -> bool:
            return len(await emitter.published()) == 2

        await wait_for(two)
    finally:
        await source.stop()
        await forget_session(client_id)
    assert [d.value for d in await emitter.published()] == [b'{"t": 21.5}', b'{"t": 22}']
    assert all(m.headers and m.headers[HEADER_TOPIC] == f"{prefix}/room1" for m in emitter.messages)
    assert all(m.dedupe_key for m in emitter.messages)


@pytest.mark.parametrize("after", [False, True], ids=["before-publish", "after-publish"])
async def test_failed_emit_is_redelivered_by_the_broker(ctx, emitter, after: bool) -> None:
    """No PUBACK until emitted: a failing emit makes the source reconnect and the broker
    send the message again; a crash after the publish is absorbed by the dedupe key."""
    prefix, client_id = f"t-{uuid.uuid4().hex}", f"sampan-test-{uuid.uuid4().hex[:8]}"
    source = make_source(ctx, prefix, client_id)
    emitter.fail, emitter.after = 1, after
    await source.start(emitter)
    try:
        await asyncio.wait_for(source.connected.wait(), 10)
        await publish(f"{prefix}/a", [b"only-once"])

        async def delivered() -> bool:
            return emitter.calls >= 2 and len(await emitter.published()) >= 1

        await wait_for(delivered)
        await asyncio.sleep(0.3)  # nothing more arrives
    finally:
        await source.stop()
        await forget_session(client_id)
    assert [d.value for d in await emitter.published()] == [b"only-once"]
    assert emitter.calls == 2


async def test_unacked_message_survives_a_stop(ctx, emitter) -> None:
    """A message received but never emitted stays with the broker across a restart."""
    prefix, client_id = f"t-{uuid.uuid4().hex}", f"sampan-test-{uuid.uuid4().hex[:8]}"
    blocked = asyncio.Event()

    async def never(_messages) -> None:
        blocked.set()
        await asyncio.sleep(3600)

    first = make_source(ctx, prefix, client_id)
    await first.start(never)
    try:
        await asyncio.wait_for(first.connected.wait(), 10)
        await publish(f"{prefix}/x", [b"kept"])
        await asyncio.wait_for(blocked.wait(), 10)
    finally:
        await first.stop()
    second = make_source(ctx, prefix, client_id)
    await second.start(emitter)
    try:

        async def got() -> bool:
            return len(await emitter.published()) == 1

        await wait_for(got)
    finally:
        await second.stop()
        await forget_session(client_id)
    assert (await emitter.published())[0].value == b"kept"


async def test_sink_publishes_and_waits_for_puback(ctx) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    config = mqtt.MqttSinkConfig.model_validate(
        {"mqtt": URL, "topic": prefix + "/devices/{data.id}", "qos": 1}
    )
    sink = mqtt.SINK.build(config, ctx)
    async with aiomqtt.Client("127.0.0.1", 1883) as listener:
        await listener.subscribe(f"{prefix}/#", qos=1)
        await sink.start()
        try:
            await sink.send(FlowMessage({"id": "d7", "cmd": "on"}))
            message = await asyncio.wait_for(anext(listener.messages), 5)
        finally:
            await sink.stop()
    assert message.topic.value == f"{prefix}/devices/d7"
    assert message.payload == b'{"id":"d7","cmd":"on"}'


async def test_sink_refuses_wildcards_and_survives_a_down_broker(ctx) -> None:
    config = mqtt.MqttSinkConfig.model_validate({"mqtt": URL, "topic": "a/{key}"})
    sink = mqtt.SINK.build(config, ctx)
    await sink.start()
    try:
        with pytest.raises(ValueError, match="not a topic"):
            await sink.send(FlowMessage(raw=b"x", key="#"))
    finally:
        await sink.stop()
    down = mqtt.SINK.build(
        mqtt.MqttSinkConfig.model_validate({"mqtt": "mqtt://127.0.0.1:1", "topic": "a"}), ctx
    )
    await down.start()  # logs, does not raise
    with pytest.raises(aiomqtt.MqttError):
        await down.send(FlowMessage(raw=b"x"))
    await down.stop()


async def test_source_reconnects_when_the_broker_drops_it(ctx, emitter) -> None:
    """A second connection with the same client id makes the broker drop the source's; the
    source reconnects (with backoff) and goes on receiving."""
    prefix, client_id = f"t-{uuid.uuid4().hex}", f"sampan-test-{uuid.uuid4().hex[:8]}"
    source = make_source(ctx, prefix, client_id)
    await source.start(emitter)
    try:
        await asyncio.wait_for(source.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=client_id, clean_session=False):
            pass  # takes the session over: the broker disconnects the source

        async def reconnected() -> bool:
            metrics = ctx.metrics.render().decode()
            return 'sampan_flow_mqtt_reconnects_total{flow="f1"} 1' in metrics

        await wait_for(reconnected)
        await asyncio.wait_for(source.connected.wait(), 10)
        await publish(f"{prefix}/after", [b"still here"])

        async def got() -> bool:
            return len(await emitter.published()) == 1

        await wait_for(got)
    finally:
        await source.stop()
        await forget_session(client_id)
