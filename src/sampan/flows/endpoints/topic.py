"""Bus topics as a flow's source (a consumer group) and as a destination (a publish)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from sampan.bus.base import Bus, OutgoingMessage
from sampan.bus.fast_messages import new_outgoing
from sampan.config_types import Name, check_name
from sampan.flows.endpoint import EndpointContext, EndpointKind, Sink
from sampan.flows.expressions import BraceTemplate, Expression, brace_renderer, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.publish_coalescer import PublishCoalescer
from sampan.flows.steps.headers import header_text
from sampan.units import Duration


class TopicSourceConfig(Options):
    topic: Name = Field(description="Topic to consume.")
    group: Name | None = Field(None, description="Consumer group (default: the flow's name).")
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts reading."
    )


class TopicSinkConfig(Options):
    topic: BraceTemplate = Field(
        description="Topic to publish to; `{expr}` placeholders pick it per message."
    )
    key: Expression | None = Field(
        None, description="JMESPath giving the message key (default: the incoming key)."
    )
    headers: dict[str, Expression] = Field(
        default_factory=dict, description="Extra headers from JMESPath expressions."
    )
    delay: Duration | None = Field(
        None, ge=0, description="Deliver this long after publishing (delayed delivery)."
    )

    @field_validator("topic")
    @classmethod
    def _a_topic_name(cls, value: str) -> str:
        return value if "{" in value else check_name(value)


class TopicSink(Sink):
    """Returns once the bus has the message durably (the bus's own publish guarantee).

    Sends running at the same time share one ``publish_batch`` (see `PublishCoalescer`)."""

    def __init__(self, config: TopicSinkConfig, bus: Bus) -> None:
        self._publisher = PublishCoalescer(bus)
        self._fixed = config.topic if "{" not in config.topic else None
        self._topic = brace_renderer(config.topic)
        self._key: Callable[[FlowMessage], Any] | None = (
            evaluator(config.key) if config.key is not None else None
        )
        self._headers = [(name.lower(), evaluator(expr)) for name, expr in config.headers.items()]
        self._delay = config.delay

    async def send(self, message: FlowMessage) -> None:
        topic, output = self._output(message)
        await self._publisher.publish(topic, output)

    def send_now(self, message: FlowMessage, label: str) -> bool:
        batch = message.outbox
        if batch is None or batch[0].closed:
            return False
        # Its own headers: the message runs on (a later step may change them) before the
        # batch is published.
        topic, output = self._output(message, own_headers=True)
        batch[0].add(batch[1], topic, output, label)  # published with its batch, before the ack
        return True

    def _output(
        self, message: FlowMessage, own_headers: bool = False
    ) -> tuple[str, OutgoingMessage]:
        topic = self._fixed or self._topic(message)
        key = message.key
        if self._key is not None:
            value = self._key(message)
            key = None if value is None else header_text(value)
        headers = message.headers
        if self._headers or own_headers:
            headers = dict(headers)
            for name, value_of in self._headers:
                value = value_of(message)
                if value is not None:
                    headers[name] = header_text(value)
        deliver_at = time.time() + self._delay if self._delay else None
        return topic, new_outgoing(message.body(), key, headers, deliver_at)

    async def stop(self) -> None:
        await self._publisher.close()


def _topic_sink(config: TopicSinkConfig, ctx: EndpointContext) -> Sink:
    return TopicSink(config, ctx.bus)


SOURCE = EndpointKind(
    "topic", TopicSourceConfig, None, "Consume a bus topic with a consumer group."
)
SINK = EndpointKind("topic", TopicSinkConfig, _topic_sink, "Publish to a bus topic.")
