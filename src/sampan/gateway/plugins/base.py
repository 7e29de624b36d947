"""The plugin contract: options as a pydantic model, a priority, and two hooks.

Plugins run in priority order (higher first, as in Kong), global ones and route ones merged
into one chain per route at load time. ``on_request`` may answer the request itself (auth
failure, rate limit, preflight) by returning a Response; ``on_response`` may change the
response on its way out. A plugin instance is shared by every request of its route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from sampan.gateway.config import ConsumerConfig
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.observe.metrics import Metrics


class PluginOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class AuthenticatedConsumer:
    """Set in ``request.state["consumer"]`` by an auth plugin."""

    username: str
    groups: frozenset[str]


@dataclass
class PluginEnvironment:
    """What plugins may use from the node."""

    metrics: Metrics
    consumers: list[ConsumerConfig]
    route: str | None
    """The route name, or None for a global plugin."""
    node_name: str = "sampan"
    redis_url: str | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sampan.gateway"))


class Plugin:
    name: ClassVar[str]
    priority: ClassVar[int]
    Options: ClassVar[type[PluginOptions]]

    def __init__(self, options: Any, env: PluginEnvironment) -> None:
        self.options = options
        self.env = env

    async def start(self) -> None:
        """Connect, fetch keys... before the route takes traffic."""

    async def close(self) -> None:
        """Release what ``start`` took."""

    async def on_request(self, request: Request) -> Response | None:
        return None

    def fast_path_spec(self) -> tuple[str, object] | None:
        """How the gateway's compiled front applies this plugin itself, or None when it
        cannot (the route is then served by Python). See gateway/fast_front.py."""
        return None

    async def on_response(self, request: Request, response: Response) -> Response:
        return response

    # Let the chain skip hooks a plugin does not override (each await costs ~1 µs).
    @classmethod
    def handles_requests(cls) -> bool:
        return cls.on_request is not Plugin.on_request

    @classmethod
    def handles_responses(cls) -> bool:
        return cls.on_response is not Plugin.on_response
