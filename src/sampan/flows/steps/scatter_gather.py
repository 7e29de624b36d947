"""Scatter-gather: branches run concurrently on copies; their results are gathered into
one message (a list, or a field of the original payload) that goes on."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from sampan.flows.concurrency import gather_all
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.spec import StepSpec
from sampan.flows.step import BuildContext, Step, StepKind, StepRunner


class ScatterGatherOptions(Options):
    branches: list[list[StepSpec]] = Field(
        min_length=1, description="Lists of steps; each branch's output is one result."
    )
    into: str | None = Field(
        None,
        description="Payload field receiving the list of results (the payload must be an "
        "object); null = the list becomes the payload.",
    )


async def _discard(_messages: list[FlowMessage]) -> None:
    """Results arriving after the gather (an aggregator inside a branch) are not rejoined."""


def _result(outputs: list[FlowMessage]) -> Any:
    """A branch's result: its message's payload, null if it filtered, a list if it split."""
    if not outputs:
        return None
    if len(outputs) == 1:
        return outputs[0].data
    return [message.data for message in outputs]


class ScatterGatherStep(Step):
    def __init__(self, options: ScatterGatherOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._into = options.into
        self._branches: list[StepRunner] = [
            ctx.build_steps(specs, f"{ctx.label}.branches[{index}]", _discard)
            for index, specs in enumerate(options.branches)
        ]

    async def start(self) -> None:
        for runner in self._branches:
            await runner.start()

    async def stop(self) -> None:
        for runner in self._branches:
            await runner.stop()

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        outputs = await gather_all([runner.run([message.copy()]) for runner in self._branches])
        results = [_result(output) for output in outputs]
        if self._into is None:
            message.data = results
            return [message]
        payload = message.data
        if not isinstance(payload, dict):
            raise ValueError(f"cannot gather into {self._into!r}: the payload is not an object")
        message.data = {**payload, self._into: results}
        return [message]


KIND = StepKind(
    "scatter_gather",
    ScatterGatherOptions,
    ScatterGatherStep,
    "Ask several branches concurrently and gather their answers into one message.",
    {
        "branches": [
            [{"enrich": {"service": "shipping-a", "path": "/quote", "into": "quote"}}],
            [{"enrich": {"service": "shipping-b", "path": "/quote", "into": "quote"}}],
        ],
        "into": "quotes",
    },
)
