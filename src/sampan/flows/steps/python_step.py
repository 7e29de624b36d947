"""A step written in Python, for whatever the declarative steps do not cover."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field

from sampan.config_types import ImportPath
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.python_target import load_target


class PythonOptions(Options):
    shorthand: ClassVar[str] = "function"
    function: ImportPath = Field(
        description="`module:function` taking a FlowMessage; it returns None (the message goes"
        " on, possibly changed), a message, a list of messages (empty = stop), sync or async."
    )


class PythonStep(Step):
    def __init__(self, options: PythonOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._function: Callable[[FlowMessage], Any] = load_target(options.function)

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        result = self._function(message)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            return [message]
        if isinstance(result, FlowMessage):
            return [result]
        if isinstance(result, list) and all(isinstance(item, FlowMessage) for item in result):
            return result
        raise TypeError(
            f"a python step returns None, a FlowMessage or a list of them, not {type(result)}"
        )


KIND = StepKind("python", PythonOptions, PythonStep, "Run a Python function.", "myapp.steps:score")
