"""Delayer: hold each message for a fixed time or a time computed from it."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import Field, model_validator

from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.units import Duration

MAX_DELAY = 3600.0


class DelayOptions(Options):
    shorthand: ClassVar[str] = "duration"
    duration: Duration | None = Field(None, ge=0, le=MAX_DELAY, description="Fixed delay.")
    seconds: Expression | None = Field(
        None, description="JMESPath giving the delay in seconds for each message."
    )

    @model_validator(mode="after")
    def _one(self) -> DelayOptions:
        if (self.duration is None) == (self.seconds is None):
            raise ValueError("give exactly one of duration or seconds")
        return self


class DelayStep(Step):
    """The message's lease is renewed while it waits, so long delays are not redelivered."""

    def __init__(self, options: DelayOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._fixed = options.duration
        self._seconds = evaluator(options.seconds) if options.seconds is not None else None

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        delay = self._fixed
        if self._seconds is not None:
            value = self._seconds(message)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"delay expression gave {value!r}, not a number of seconds")
            delay = min(max(0.0, float(value)), MAX_DELAY)
        if delay:
            await asyncio.sleep(delay)
        return [message]


KIND = StepKind("delay", DelayOptions, DelayStep, "Hold each message for a while.", "2s")
