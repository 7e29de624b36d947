"""What a connector implements: a `Source` (``from``) or a `Sink` (``to``).

Sources other than bus topics never run a flow's steps themselves: they land what they
receive on the flow's durable ingress topic (``emit``) and acknowledge their origin only
after that, so every source gets the bus's retries, dead letters, per-key ordering and
crash safety, and "acked at the source" always means "durable in sampan".

A sink's ``send`` returns only once the destination has the message (a durable publish, a
2xx answer, a committed row, an MQTT PUBACK, a renamed file); otherwise it raises, and the
source message is retried.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from sampan.bus.base import Bus, OutgoingMessage
from sampan.flows.message import FlowMessage
from sampan.observe.metrics import Metrics
from sampan.store.base import StateStore

if TYPE_CHECKING:
    from sampan.mesh.mesh import Mesh

Emit = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]
"""Publish to the flow's ingress topic; returns once durable. Give each message a
``dedupe_key`` naming its origin (row id, file name and mtime, MQTT message id) so that a
source that crashes between emitting and acknowledging does not emit twice."""


@dataclass(frozen=True)
class EndpointContext:
    """What a connector may use from the node it runs in."""

    flow: str
    bus: Bus
    store: StateStore
    metrics: Metrics
    base_dir: Path
    """Directory of the config file: relative paths in the config are relative to it."""
    data_dir: Path
    node: str = "sampan"
    """The node's name: per-node consumer groups (lookup tables) are named after it."""
    mesh: Mesh | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Source(abc.ABC):
    @abc.abstractmethod
    async def start(self, emit: Emit) -> None:
        """Begin receiving; returns once running (work continues in tasks)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop receiving; anything not yet emitted stays at the origin."""


class Sink(abc.ABC):
    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections; the default has nothing to open."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Close connections; the default has nothing to close."""

    @abc.abstractmethod
    async def send(self, message: FlowMessage) -> None:
        """Deliver one message; raise if the destination does not have it."""

    def send_now(self, message: FlowMessage, label: str) -> bool:
        """Take the message without waiting, if this sink can (a topic sink queues it in
        its batch's outbox, see `sampan.flows.outbox`; ``label`` names the step in the error
        if the bus refuses it there); False: call `send`."""
        return False


ConfigT = TypeVar("ConfigT", bound=BaseModel)
PartT = TypeVar("PartT", Source, Sink)


@dataclass(frozen=True)
class EndpointKind(Generic[ConfigT, PartT]):
    """A connector as the config sees it: the key that names it in ``from``/``to``, the
    model of its options (which also documents it) and how to build it."""

    key: str
    config: type[ConfigT]
    build: Callable[[ConfigT, EndpointContext], PartT] | None
    """None for a source the flow consumes from the bus itself (a topic, a route's topic)."""
    summary: str
