"""Set and remove headers (message metadata that travels with the payload)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from pydantic import Field, RootModel

from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind


class SetHeadersOptions(RootModel[dict[str, Expression]]):
    """Header name -> JMESPath expression (a literal string is written `'text'`)."""


def header_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode("utf-8")


class SetHeadersStep(Step):
    def __init__(self, options: SetHeadersOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._values: list[tuple[str, Callable[[FlowMessage], Any]]] = [
            (name.lower(), evaluator(expression)) for name, expression in options.root.items()
        ]

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        return self.process_now(message)

    def process_now(self, message: FlowMessage) -> list[FlowMessage]:
        for name, value_of in self._values:
            value = value_of(message)
            if value is None:
                message.headers.pop(name, None)
            else:
                message.headers[name] = header_text(value)
        return [message]


class RemoveHeadersOptions(Options):
    shorthand: ClassVar[str] = "names"
    names: list[str] = Field(description="Header names to remove (case-insensitive).")


class RemoveHeadersStep(Step):
    def __init__(self, options: RemoveHeadersOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._names = [name.lower() for name in options.names]

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        return self.process_now(message)

    def process_now(self, message: FlowMessage) -> list[FlowMessage]:
        for name in self._names:
            message.headers.pop(name, None)
        return [message]


SET_KIND = StepKind(
    "set_headers",
    SetHeadersOptions,
    SetHeadersStep,
    "Set headers from JMESPath expressions (null removes the header).",
    {"x-customer": "data.customer_id", "x-source": "'pos'"},
)
REMOVE_KIND = StepKind(
    "remove_headers",
    RemoveHeadersOptions,
    RemoveHeadersStep,
    "Remove headers.",
    ["x-internal"],
)
