"""Log a line per message (a Jinja2 template), without changing it."""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

from pydantic import Field

from sampan.flows.expressions import Template, renderer
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class LogOptions(Options):
    shorthand: ClassVar[str] = "message"
    message: Template = Field(description="Jinja2 template of the line.")
    level: Literal["debug", "info", "warning"] = Field("info", description="Log level.")


class LogStep(Step):
    def __init__(self, options: LogOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._render = renderer(options.message)
        self._level = _LEVELS[options.level]
        self._log = logging.getLogger(f"sampan.flow.{ctx.endpoint.flow}")

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        return self.process_now(message)

    def process_now(self, message: FlowMessage) -> list[FlowMessage]:
        if self._log.isEnabledFor(self._level):
            self._log.log(self._level, "%s", self._render(message))
        return [message]


KIND = StepKind(
    "log",
    LogOptions,
    LogStep,
    "Log a line rendered from a template.",
    "order {{ data.id }} for {{ data.customer_id }}",
)
