"""Message filter: only messages matching a predicate go on."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sampan.flows.expressions import Expression, predicate
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind


class FilterOptions(Options):
    shorthand: ClassVar[str] = "when"
    when: Expression = Field(description="JMESPath predicate; messages where it is false stop.")


class FilterStep(Step):
    def __init__(self, options: FilterOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._test = predicate(options.when)

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        return [message] if self._test(message) else []

    def process_now(self, message: FlowMessage) -> list[FlowMessage]:
        return [message] if self._test(message) else []


KIND = StepKind(
    "filter",
    FilterOptions,
    FilterStep,
    "Drop the messages for which a JMESPath predicate is false.",
    "data.amount > `0`",
)
