"""Send the message to an endpoint; it goes on unchanged (so a flow can send to several)."""

from __future__ import annotations

from functools import partial

from pydantic import RootModel

from sampan.flows.message import FlowMessage
from sampan.flows.spec import SinkSpec
from sampan.flows.step import BuildContext, Later, Step, StepKind


class ToOptions(RootModel[SinkSpec]):
    """An endpoint: `{topic: ...}`, `{service: ..., path: ...}`, `{webhook: ...}`, ..."""


class ToStep(Step):
    def __init__(self, options: ToOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self.sink = ctx.build_sink(options.root, ctx.label)

    async def start(self) -> None:
        await self.sink.start()

    async def stop(self) -> None:
        await self.sink.stop()

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        await self.sink.send(message)
        return [message]

    def process_now(self, message: FlowMessage) -> list[FlowMessage] | Later:
        if self.sink.send_now(message, self.label):
            return [message]
        return Later(partial(self.process, message))


KIND = StepKind(
    "to",
    ToOptions,
    ToStep,
    "Send to an endpoint; the source is acked only once every `to` has succeeded.",
    {"topic": "orders.accepted"},
)
