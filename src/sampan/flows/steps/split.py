"""Splitter: one message per element of a list in the payload."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind

HEADER_INDEX = "flow-split-index"
HEADER_SIZE = "flow-split-size"


class SplitOptions(Options):
    shorthand: ClassVar[str] = "expression"
    expression: Expression = Field(
        description="JMESPath selecting the list; each element becomes a message (null or a "
        "missing field gives none, a single value gives one)."
    )


class SplitStep(Step):
    def __init__(self, options: SplitOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._items = evaluator(options.expression)

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        items = self._items(message)
        if items is None:
            return []
        if not isinstance(items, list):
            items = [items]
        size = str(len(items))
        out = []
        for index, item in enumerate(items):
            part = message.copy(item)
            part.headers[HEADER_INDEX] = str(index)
            part.headers[HEADER_SIZE] = size
            part.origin = f"{message.origin}#{index}"  # distinct for stateful steps downstream
            out.append(part)
        return out


KIND = StepKind(
    "split",
    SplitOptions,
    SplitStep,
    "One message per element of a list (splitter); headers carry index and size.",
    "data.items",
)
