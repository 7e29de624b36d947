"""mqtt: subscribe to an MQTT broker (source) or publish to it (sink), with aiomqtt.

Source: the PUBACK of a QoS 1 message is sent only after the message has been emitted (is
durable on the flow's ingress topic). aiomqtt does not expose this yet (aiomqtt issue #345,
draft PR #346), but the paho-mqtt client under it does since 2.0: ``manual_ack_set(True)``
before connecting and ``ack(mid, qos)`` afterwards, reached through aiomqtt's ``_client``.
With ``clean_session: false`` and a fixed ``client_id`` the broker keeps unacknowledged
messages in the session and sends them again when the source reconnects, so a failed emit
(or a crash) disconnects and lets the broker redeliver. PUBACKs go out in the order the
messages arrived, as MQTT 3.1.1 requires.

QoS 2 is not offered for the source: the receiver sends PUBREC before the application sees
the message, and after PUBREC the broker no longer resends it, so acknowledging after the
emit cannot be had at QoS 2 with paho. QoS 0 messages are never redelivered by the broker.

Sink: a QoS 1 publish returns once the broker's PUBACK arrived (QoS 2: PUBCOMP).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sampan.bus.base import OutgoingMessage
from sampan.flows.connectors._support import Backoff, cancel_task, log
from sampan.flows.endpoint import Emit, EndpointContext, EndpointKind, Sink, Source
from sampan.flows.expressions import BraceTemplate, brace_renderer
from sampan.flows.message import FlowMessage
from sampan.units import Duration

HEADER_TOPIC: Final = "flow-mqtt-topic"
HEADER_RETAINED: Final = "flow-mqtt-retained"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` (1883) or ``mqtts://...`` (TLS, 8883)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL {url!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r}: only scheme, credentials, host and port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL {url!r} has an invalid port") from None
    tls = scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _check_url(value: str) -> str:
    parse_broker_url(value)
    return value


def _client(
    address: BrokerAddress, *, client_id: str | None, clean_session: bool, keepalive: int
) -> aiomqtt.Client:
    return aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
        clean_session=clean_session,
        keepalive=keepalive,
        tls_context=ssl.create_default_context() if address.tls else None,
        timeout=10.0,
    )


# --------------------------------------------------------------------------------- source


class MqttSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt: str = Field(
        description="Broker URL: `mqtt://[user[:password]@]host[:port]` or `mqtts://` for TLS."
    )
    topic: str = Field(description="Topic filter to subscribe to; `+` and `#` wildcards allowed.")
    qos: Literal[0, 1] = Field(
        1,
        description="Subscription QoS. 1: the PUBACK is sent after the emit, nothing is lost. "
        "0: at most once. (2 is not offered; see the delivery notes.)",
    )
    client_id: str | None = Field(
        None,
        description="MQTT client id; the broker keeps the session (and unacknowledged "
        "messages) under it. Default `sampan-<flow>`. Every node needs its own id.",
    )
    clean_session: bool = Field(
        False,
        description="Start a fresh session on every connect. Keep false: a clean session "
        "loses the messages that were not acknowledged when the connection dropped.",
    )
    keepalive: int = Field(60, ge=5, le=65535, description="MQTT keepalive, seconds.")
    batch: int = Field(100, ge=1, le=10_000, description="Most messages emitted in one publish.")
    dedupe_window: Duration = Field(
        600.0,
        gt=0,
        description="How long the dedupe key of a message (client id, packet id, topic and "
        "payload digest) is remembered, so a redelivery after a reconnect is not emitted "
        "twice. Packet ids are reused, so keep it short.",
    )
    reconnect_max: Duration = Field(
        30.0, gt=0, description="Longest wait between reconnect attempts (backoff from 0.5s)."
    )

    @field_validator("mqtt")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("topic")
    @classmethod
    def _check_filter(cls, value: str) -> str:
        levels = value.split("/")
        if not value or "\0" in value:
            raise ValueError("the topic filter cannot be empty or contain NUL")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"{value!r}: '#' must be a whole last level ('a/b/#')")
            if "+" in level and level != "+":
                raise ValueError(f"{value!r}: '+' must be a whole level ('a/+/c')")
        return value


class MqttSource(Source):
    def __init__(self, config: MqttSourceConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._ctx = ctx
        self._address = parse_broker_url(config.mqtt)
        self._client_id = config.client_id or f"sampan-{ctx.flow}"
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        labels = {"flow": ctx.flow}
        self._emitted = ctx.metrics.counter(
            "sampan_flow_mqtt_emitted", "Messages emitted by MQTT sources.", **labels
        )
        self._reconnects = ctx.metrics.counter(
            "sampan_flow_mqtt_reconnects", "MQTT source reconnections.", **labels
        )

    @property
    def connected(self) -> asyncio.Event:
        """Set while subscribed (tests and health checks wait on it)."""
        return self._connected

    async def start(self, emit: Emit) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(emit), name=f"mqtt:{self._ctx.flow}")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_task(self._task)
        self._task = None
        self._connected.clear()

    async def _run(self, emit: Emit) -> None:
        backoff = Backoff(maximum=self._config.reconnect_max)
        first = True
        while not self._stop.is_set():
            if not first:
                self._reconnects.inc()
            first = False
            try:
                await self._session(emit, backoff)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "mqtt source of flow %r: connection to %s:%d lost or refused: %s",
                    self._ctx.flow,
                    self._address.host,
                    self._address.port,
                    exc,
                )
            except _EmitFailed as exc:
                log.warning(
                    "mqtt source of flow %r: emit failed, reconnecting so the broker "
                    "redelivers: %s",
                    self._ctx.flow,
                    exc.__cause__,
                )
            finally:
                self._connected.clear()
            await backoff.wait(self._stop)

    async def _session(self, emit: Emit, backoff: Backoff) -> None:
        config = self._config
        client = _client(
            self._address,
            client_id=self._client_id,
            clean_session=config.clean_session,
            keepalive=config.keepalive,
        )
        # Before connecting: a persistent session's queued messages arrive right after
        # CONNACK, and each of them must wait for our ack.
        paho = client._client
        paho.manual_ack_set(True)
        async with client:
            await client.subscribe(config.topic, qos=config.qos)
            self._connected.set()
            backoff.reset()
            messages = client.messages
            while True:
                batch = [await anext(messages)]
                while len(messages) and len(batch) < config.batch:
                    batch.append(await anext(messages))
                try:
                    await emit([self._outgoing(m) for m in batch])
                except Exception as exc:
                    raise _EmitFailed() from exc
                self._emitted.inc(len(batch))
                for message in batch:
                    if message.qos > 0:
                        paho.ack(message.mid, message.qos)

    def _outgoing(self, message: aiomqtt.Message) -> OutgoingMessage:
        payload = _payload_bytes(message.payload)
        topic = message.topic.value
        headers = {HEADER_TOPIC: topic}
        digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]
        dedupe: str | None = None
        if message.retain:
            # Sent again on every re-subscribe, with a new packet id: key by content.
            headers[HEADER_RETAINED] = "true"
            dedupe = f"mqtt:{self._client_id}:retained:{digest}"
        elif message.qos > 0:
            dedupe = f"mqtt:{self._client_id}:{message.mid}:{digest}"
        return OutgoingMessage(
            payload,
            headers=headers,
            dedupe_key=dedupe,
            dedupe_ttl=self._config.dedupe_window,
        )


class _EmitFailed(Exception):
    """The emit raised (the cause); the session ends without acknowledging."""


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


# ----------------------------------------------------------------------------------- sink


class MqttSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt: str = Field(
        description="Broker URL: `mqtt://[user[:password]@]host[:port]` or `mqtts://` for TLS."
    )
    topic: BraceTemplate = Field(
        description="Topic to publish to, e.g. `devices/{data.device_id}/commands`; "
        "placeholders may not produce wildcards."
    )
    qos: Literal[0, 1, 2] = Field(
        1, description="Publish QoS. 1 and 2 wait for the broker's acknowledgement."
    )
    retain: bool = Field(False, description="Ask the broker to retain the message.")
    client_id: str | None = Field(
        None, description="MQTT client id. Default: `sampan-<flow>-out-<random>`."
    )
    timeout: Duration = Field(
        10.0, gt=0, description="Longest wait for the broker's acknowledgement."
    )
    keepalive: int = Field(60, ge=5, le=65535, description="MQTT keepalive, seconds.")

    @field_validator("mqtt")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)


class MqttSink(Sink):
    def __init__(self, config: MqttSinkConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._address = parse_broker_url(config.mqtt)
        self._client_id = config.client_id or f"sampan-{ctx.flow}-out-{uuid.uuid4().hex[:8]}"
        self._topic = brace_renderer(config.topic)
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            await self._connect()
        except aiomqtt.MqttError as exc:
            # Not fatal: the broker may come up later; each send tries again.
            log.warning("mqtt sink: cannot connect to %s yet: %s", self._config.mqtt, exc)

    async def stop(self) -> None:
        async with self._lock:
            await self._drop()

    async def _connect(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is not None:
                return self._client
            client = _client(
                self._address,
                client_id=self._client_id,
                clean_session=True,
                keepalive=self._config.keepalive,
            )
            await client.__aenter__()
            self._client = client
            return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def send(self, message: FlowMessage) -> None:
        topic = self._topic(message)
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            raise ValueError(f"mqtt sink: {topic!r} is not a topic one can publish to")
        client = await self._connect()
        try:
            await client.publish(
                topic,
                message.body(),
                qos=self._config.qos,
                retain=self._config.retain,
                timeout=self._config.timeout,
            )
        except aiomqtt.MqttError:
            # The connection is suspect: the next send reconnects.
            async with self._lock:
                if self._client is client:
                    await self._drop()
            raise


def _build_source(config: MqttSourceConfig, ctx: EndpointContext) -> Source:
    return MqttSource(config, ctx)


def _build_sink(config: MqttSinkConfig, ctx: EndpointContext) -> Sink:
    return MqttSink(config, ctx)


SOURCE: EndpointKind[MqttSourceConfig, Source] = EndpointKind(
    key="mqtt",
    config=MqttSourceConfig,
    build=_build_source,
    summary="Subscribes to an MQTT topic filter; QoS 1 PUBACK only after the emit.",
)

SINK: EndpointKind[MqttSinkConfig, Sink] = EndpointKind(
    key="mqtt",
    config=MqttSinkConfig,
    build=_build_sink,
    summary="Publishes to an MQTT topic and waits for the broker's acknowledgement.",
)
