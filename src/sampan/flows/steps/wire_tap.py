"""Wire tap: a copy of the message to another endpoint (audit, debugging); the message goes
on unchanged. The copy is durable before the message moves on, so a tap never loses one."""

from __future__ import annotations

from pydantic import RootModel

from sampan.flows.message import FlowMessage
from sampan.flows.spec import SinkSpec
from sampan.flows.step import BuildContext, Step, StepKind


class WireTapOptions(RootModel[SinkSpec]):
    """The endpoint receiving the copies."""


class WireTapStep(Step):
    def __init__(self, options: WireTapOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self.sink = ctx.build_sink(options.root, ctx.label)

    async def start(self) -> None:
        await self.sink.start()

    async def stop(self) -> None:
        await self.sink.stop()

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        await self.sink.send(message.copy())
        return [message]


KIND = StepKind(
    "wire_tap",
    WireTapOptions,
    WireTapStep,
    "Send a copy to another endpoint and go on with the message.",
    {"topic": "audit.orders"},
)
