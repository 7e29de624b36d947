"""Recipient list: the topics a message goes to are computed from the message."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from sampan.config_types import NAME_PATTERN, Name
from sampan.flows.concurrency import gather_all
from sampan.flows.endpoint import Sink
from sampan.flows.endpoints.topic import TopicSinkConfig
from sampan.flows.errors import InvalidMessage
from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.spec import SinkSpec
from sampan.flows.step import BuildContext, Step, StepKind

_NAME_RE = re.compile(NAME_PATTERN)


class RecipientListOptions(Options):
    shorthand: ClassVar[str] = "recipients"
    recipients: Expression = Field(description="JMESPath giving a topic name or a list of them.")
    allowed: list[Name] | None = Field(
        None, description="If set, only these topics may be named; others fail the message."
    )


class RecipientListStep(Step):
    def __init__(self, options: RecipientListOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._recipients = evaluator(options.recipients)
        self._allowed = frozenset(options.allowed) if options.allowed is not None else None
        self._ctx = ctx
        self._sinks: dict[str, Sink] = {}

    async def stop(self) -> None:
        for sink in self._sinks.values():
            await sink.stop()

    async def _sink(self, topic: str) -> Sink:
        sink = self._sinks.get(topic)
        if sink is None:
            spec = SinkSpec(kind="topic", options=TopicSinkConfig(topic=topic))
            sink = self._ctx.build_sink(spec, self.label)
            await sink.start()
            self._sinks[topic] = sink
        return sink

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        found = self._recipients(message)
        topics = [found] if isinstance(found, str) else found or []
        if not isinstance(topics, list):
            raise InvalidMessage(f"recipients must be a topic name or a list, got {found!r}")
        for topic in topics:
            if not isinstance(topic, str) or not _NAME_RE.fullmatch(topic):
                raise InvalidMessage(f"not a topic name: {topic!r}")
            if self._allowed is not None and topic not in self._allowed:
                raise InvalidMessage(f"topic {topic!r} is not in this recipient list's `allowed`")
        sinks = [await self._sink(topic) for topic in dict.fromkeys(topics)]
        await gather_all([sink.send(message) for sink in sinks])
        return [message]


KIND = StepKind(
    "recipient_list",
    RecipientListOptions,
    RecipientListStep,
    "Send to the topics named by an expression (computed per message).",
    {"recipients": "data.notify", "allowed": ["sms", "email", "zalo"]},
)
