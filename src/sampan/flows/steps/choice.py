"""Content-based router: the first branch whose predicate holds gets the message."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampan.flows.expressions import Expression, predicate
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.spec import StepSpec
from sampan.flows.step import BuildContext, Later, Step, StepKind, StepRunner


class ChoiceBranch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: Expression | None = Field(None, description="JMESPath predicate of this branch.")
    steps: list[StepSpec] = Field(default_factory=list, description="Steps of this branch.")
    otherwise: list[StepSpec] | None = Field(
        None, description="Steps for messages no `when` matched (last branch only)."
    )

    @model_validator(mode="after")
    def _shape(self) -> ChoiceBranch:
        if (self.when is None) == (self.otherwise is None):
            raise ValueError("a branch is {when: ..., steps: [...]} or {otherwise: [...]}")
        if self.otherwise is not None and self.steps:
            raise ValueError("an `otherwise` branch lists its steps under `otherwise`")
        return self


class ChoiceOptions(Options):
    shorthand: ClassVar[str] = "branches"
    branches: list[ChoiceBranch] = Field(min_length=1, description="Branches, tried in order.")

    @model_validator(mode="after")
    def _otherwise_last(self) -> ChoiceOptions:
        for index, branch in enumerate(self.branches[:-1]):
            if branch.otherwise is not None:
                raise ValueError(f"`otherwise` must be the last branch (found at {index})")
        return self


class ChoiceStep(Step):
    """A message no branch takes goes on unchanged; what a branch outputs goes on after it."""

    def __init__(self, options: ChoiceOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._branches: list[tuple[Callable[[FlowMessage], bool] | None, StepRunner]] = []
        for index, branch in enumerate(options.branches):
            specs = branch.steps if branch.otherwise is None else branch.otherwise
            runner = ctx.build_steps(specs, f"{ctx.label}[{index}]", ctx.resume)
            test = predicate(branch.when) if branch.when is not None else None
            self._branches.append((test, runner))

    async def start(self) -> None:
        for _, runner in self._branches:
            await runner.start()

    async def stop(self) -> None:
        for _, runner in self._branches:
            await runner.stop()

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        for test, runner in self._branches:
            if test is None or test(message):
                return await runner.run([message])
        return [message]

    def process_now(self, message: FlowMessage) -> list[FlowMessage] | Later:
        for test, runner in self._branches:
            if test is None or test(message):
                return runner.run_now([message])
        return [message]


KIND = StepKind(
    "choice",
    ChoiceOptions,
    ChoiceStep,
    "Route each message to the first branch whose predicate holds (content-based router).",
    [
        {"when": "data.amount > `10000000`", "steps": [{"to": {"topic": "orders.review"}}]},
        {"otherwise": [{"to": {"topic": "orders.accepted"}}]},
    ],
)
