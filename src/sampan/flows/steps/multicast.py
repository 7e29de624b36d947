"""Multicast: every branch gets its own copy, concurrently; the message goes on unchanged
once all branches have succeeded (any failure fails the message, which is retried whole)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sampan.flows.concurrency import gather_all
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.spec import StepSpec
from sampan.flows.step import BuildContext, Step, StepKind, StepRunner


class MulticastOptions(Options):
    shorthand: ClassVar[str] = "branches"
    branches: list[list[StepSpec]] = Field(min_length=1, description="Lists of steps.")


async def _discard(_messages: list[FlowMessage]) -> None:
    """A branch's output does not rejoin the flow."""


class MulticastStep(Step):
    def __init__(self, options: MulticastOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._branches: list[StepRunner] = [
            ctx.build_steps(specs, f"{ctx.label}[{index}]", _discard)
            for index, specs in enumerate(options.branches)
        ]

    async def start(self) -> None:
        for runner in self._branches:
            await runner.start()

    async def stop(self) -> None:
        for runner in self._branches:
            await runner.stop()

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        await gather_all([runner.run([message.copy()]) for runner in self._branches])
        return [message]


KIND = StepKind(
    "multicast",
    MulticastOptions,
    MulticastStep,
    "Run several branches on copies of the message, concurrently; all must succeed.",
    [[{"to": {"topic": "fulfilment"}}], [{"to": {"topic": "analytics"}}]],
)
