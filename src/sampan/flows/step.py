"""What a flow step is, and what it is given when it is built.

A step takes one message and returns the messages that go on: none (filtered, or held by a
stateful step), one, or several (split). Steps that emit later (an aggregator completing on
a timeout, a resequencer closing a gap) or that must see the rest of the flow succeed before
forgetting state (aggregator, idempotent receiver) call ``resume`` with the messages that go
on: it runs everything after the step, in this pipeline and the ones around it.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from sampan.flows.endpoint import EndpointContext, Sink
from sampan.flows.message import FlowMessage

if TYPE_CHECKING:
    from sampan.flows.service_caller import ServiceCaller
    from sampan.flows.spec import SinkSpec, StepSpec

Resume = Callable[[list[FlowMessage]], Awaitable[None]]


class Later:
    """What is left of a step's (or a pipeline's) work once it has to wait: ``finish()``
    does it and returns what goes on."""

    __slots__ = ("finish",)

    def __init__(self, finish: Callable[[], Awaitable[list[FlowMessage]]]) -> None:
        self.finish = finish


class Step(abc.ABC):
    label: str = ""

    @abc.abstractmethod
    async def process(self, message: FlowMessage) -> list[FlowMessage]: ...

    def process_now(self, message: FlowMessage) -> list[FlowMessage] | Later:
        """`process` without a coroutine, for steps that can often finish without waiting
        (validation, transforms, routing, a cached lookup, an output into the batch's
        outbox): most messages of a flow then run every step as plain calls. A step that
        would have to wait returns a `Later` before it has done anything."""
        return Later(partial(self.process, message))

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (timeouts); most steps have none."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and close connections."""


class StepRunner(abc.ABC):
    """A built list of steps (a flow's, or a branch's)."""

    @abc.abstractmethod
    async def run(self, messages: list[FlowMessage]) -> list[FlowMessage]:
        """Run the steps; returns what comes out of the last one."""

    @abc.abstractmethod
    def run_now(self, messages: list[FlowMessage]) -> list[FlowMessage] | Later:
        """`run` as far as it gets without waiting (see `Step.process_now`)."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class BuildContext:
    """What a step may use when it is built."""

    endpoint: EndpointContext
    label: str
    """Where the step is in the flow, e.g. ``steps[2].choice[0].steps[1].enrich``."""
    resume: Resume
    """Continue the flow after this step with these messages (see the module docstring)."""
    build_sink: Callable[[SinkSpec, str], Sink]
    build_steps: Callable[[Sequence[StepSpec], str, Resume], StepRunner]
    """Build a branch: its specs, its label, and what runs after the branch's last step."""
    services: ServiceCaller

    @property
    def namespace(self) -> str:
        """Where a stateful step keeps its state in the store: per flow and per position."""
        return f"flow:{self.endpoint.flow}:{self.label}"


OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass(frozen=True)
class StepKind(Generic[OptionsT]):
    """A step as the config sees it: its key, its options model (which also documents it),
    how to build it, and a one-line summary."""

    key: str
    options: type[OptionsT]
    build: Callable[[OptionsT, BuildContext], Step]
    summary: str
    example: Any = None
