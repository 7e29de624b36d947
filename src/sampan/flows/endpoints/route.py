"""A gateway route as a flow's source: what the route accepts over HTTP (and publishes to
its topic, answering 202) is what the flow consumes."""

from __future__ import annotations

from pydantic import Field

from sampan.flows.endpoint import EndpointKind
from sampan.flows.options import Options


class RouteSourceConfig(Options):
    route: str = Field(
        description="Name of a gateway route whose target is a topic (see `routes:`)."
    )


SOURCE = EndpointKind(
    "route",
    RouteSourceConfig,
    None,
    "Consume what a gateway route receives over HTTP (the route's topic target).",
)
