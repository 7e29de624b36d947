"""Message translator: a new payload from a JMESPath expression, a template or Python."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import Field, model_validator

from sampan.config_types import ImportPath
from sampan.flows.expressions import Expression, Template, evaluator, renderer
from sampan.flows.message import FlowMessage, decode_payload
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Later, Step, StepKind
from sampan.python_target import load_target


class TransformOptions(Options):
    expression: Expression | None = Field(
        None, description="JMESPath whose result becomes the payload, e.g. `{id: data.id}`."
    )
    template: Template | None = Field(
        None,
        description="Sandboxed Jinja2 template; its output is parsed as JSON when it is JSON,"
        " else kept as text.",
    )
    python: ImportPath | None = Field(
        None, description="`module:function` taking the payload and returning the new one."
    )

    @model_validator(mode="after")
    def _one(self) -> TransformOptions:
        given = [v for v in (self.expression, self.template, self.python) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of expression, template or python")
        return self


class TransformStep(Step):
    def __init__(self, options: TransformOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._make: Callable[[FlowMessage], Any]
        self._function: Callable[[Any], Any] | None = None
        if options.expression is not None:
            self._make = evaluator(options.expression)
        elif options.template is not None:
            render = renderer(options.template)
            self._make = lambda message: decode_payload(render(message).encode("utf-8"))
        else:
            assert options.python is not None
            self._function = load_target(options.python)
            self._make = lambda message: None

    def process_now(self, message: FlowMessage) -> list[FlowMessage] | Later:
        if self._function is not None:  # user code may be async: the general path
            return Later(partial(self.process, message))
        message.data = self._make(message)
        return [message]

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        if self._function is not None:
            result = self._function(message.data)
            if inspect.isawaitable(result):
                result = await result
            message.data = result
        else:
            message.data = self._make(message)
        return [message]


KIND = StepKind(
    "transform",
    TransformOptions,
    TransformStep,
    "Replace the payload (message translator): JMESPath, a Jinja2 template or Python.",
    {"expression": "{order_id: data.id, total: data.amount}"},
)
