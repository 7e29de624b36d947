"""What a flow refers to outside itself (services, routes, topics), with where it says so:
`sampan validate` reports a missing service or route at the exact key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, RootModel

from sampan.flows.config import FlowConfig
from sampan.flows.endpoints.route import RouteSourceConfig
from sampan.flows.endpoints.service import ServiceSinkConfig
from sampan.flows.endpoints.topic import TopicSinkConfig, TopicSourceConfig
from sampan.flows.spec import EndpointSpec, StepSpec
from sampan.flows.steps.enrich import EnrichOptions

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Reference:
    kind: Literal["service", "route", "topic"]
    name: str
    loc: Loc


def references(flow: FlowConfig, loc: Loc) -> Iterator[Reference]:
    yield from _walk(flow.source, (*loc, "from"))
    for index, step in enumerate(flow.steps):
        yield from _walk(step, (*loc, "steps", index))


def _walk(node: Any, loc: Loc) -> Iterator[Reference]:
    if isinstance(node, StepSpec):
        yield from _walk(node.options, (*loc, node.kind))
        if node.on_error is not None and node.on_error.to is not None:
            yield from _walk(node.on_error.to, (*loc, "on_error", "to"))
        return
    if isinstance(node, EndpointSpec):
        yield from _walk(node.options, loc)
        return
    if isinstance(node, TopicSourceConfig):
        yield Reference("topic", node.topic, (*loc, "topic"))
    elif isinstance(node, RouteSourceConfig):
        yield Reference("route", node.route, (*loc, "route"))
    elif isinstance(node, ServiceSinkConfig):
        yield Reference("service", node.service, (*loc, "service"))
    elif isinstance(node, EnrichOptions):
        if node.service is not None:
            yield Reference("service", node.service, (*loc, "service"))
        if node.table is not None:
            yield Reference("topic", node.table, (*loc, "table"))
    elif isinstance(node, TopicSinkConfig) and "{" not in node.topic:
        yield Reference("topic", node.topic, (*loc, "topic"))
    if isinstance(node, RootModel):
        yield from _walk(node.root, loc)
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), (*loc, _field_key(type(node), name)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, (*loc, index))


def _field_key(model: type[BaseModel], name: str) -> str:
    alias = model.model_fields[name].alias
    return alias or name
