"""A route table compiled from config: router, plugin chains and targets, swapped as one.

Hot reload builds a whole new table next to the serving one (plugins started, regexes
compiled, keys loaded) and only then swaps the reference, so a request sees either the old
table or the new one, never half of each; a table that fails to build is never served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sampan.bus.base import Bus
from sampan.gateway.config import ConsumerConfig, GatewayConfig, RouteConfig
from sampan.gateway.mesh_proxy import MeshProxy
from sampan.gateway.plugins.base import Plugin, PluginEnvironment
from sampan.gateway.plugins.registry import build_chain
from sampan.gateway.proxy import Proxy, upstream_target
from sampan.gateway.respond_target import FixedResponder
from sampan.gateway.router import RouteMatch, Router
from sampan.gateway.topic_target import TopicPublisher
from sampan.http.client import ConnectionPool
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.mesh.fault import FaultInjector
from sampan.mesh.mesh import Mesh
from sampan.observe.metrics import Metrics, TargetMetrics

# (request, route match, body limit) -> response
Target = Callable[[Request, RouteMatch["CompiledRoute"], int], Awaitable[Response]]


class RouteTableError(Exception):
    """The routes cannot be served (bad pattern, plugin failed to start...)."""


@dataclass(eq=False)
class CompiledRoute:
    name: str
    config: RouteConfig
    target: Target
    body_limit: int
    quartet: TargetMetrics
    fault: FaultInjector | None = None
    plugins: tuple[Plugin, ...] = ()
    request_plugins: tuple[Plugin, ...] = field(default=())
    response_plugins: tuple[Plugin, ...] = field(default=())


class ProxyTarget:
    def __init__(self, proxy: Proxy, route: RouteConfig) -> None:
        self.proxy = proxy
        self.strip_prefix = route.strip_prefix
        self.rewrite = route.rewrite

    async def __call__(
        self, request: Request, match: RouteMatch[CompiledRoute], body_limit: int
    ) -> Response:
        target = upstream_target(
            request, match.prefix, self.strip_prefix, self.rewrite, match.params
        )
        return await self.proxy(request, upstream_path=target.decode("latin-1"))


class SimpleTarget:
    """Adapts the topic and respond targets, which only need the params."""

    def __init__(self, run: Callable[[Request, dict[str, str], int], Awaitable[Response]]) -> None:
        self.run = run

    async def __call__(
        self, request: Request, match: RouteMatch[CompiledRoute], body_limit: int
    ) -> Response:
        return await self.run(request, match.params, body_limit)


class NoBus:
    async def __call__(self, request: Request, params: dict[str, str], body_limit: int) -> Response:
        return problem(503, "Bus unavailable", "this node has no bus for topic targets")


@dataclass
class RouteTable:
    router: Router[CompiledRoute]
    routes: list[CompiledRoute]
    plugins: list[Plugin]

    async def close(self) -> None:
        for plugin in self.plugins:
            with contextlib.suppress(Exception):
                await plugin.close()


async def build_route_table(
    gateway: GatewayConfig,
    routes: list[RouteConfig],
    consumers: list[ConsumerConfig],
    *,
    metrics: Metrics,
    pool: ConnectionPool,
    bus: Bus | None,
    node_name: str = "sampan",
    redis_url: str | None = None,
    mesh: Mesh | None = None,
    deadline_header: str = "x-sampan-deadline-ms",
) -> RouteTable:
    compiled: list[CompiledRoute] = []
    started: list[Plugin] = []

    def environment(route: str | None) -> PluginEnvironment:
        return PluginEnvironment(
            metrics=metrics,
            consumers=consumers,
            route=route,
            node_name=node_name,
            redis_url=redis_url,
        )

    try:
        # Global plugins are built once and shared, so their state (a global rate limit's
        # buckets, a JWKS cache) is one for the whole gateway, not one per route.
        shared = build_chain(gateway.plugins, [], environment(None))
        for plugin in shared:
            await plugin.start()
            started.append(plugin)
        for route in routes:
            chain = build_chain(shared, route.plugins, environment(route.name))
            for plugin in chain:
                if plugin not in started:
                    await plugin.start()
                    started.append(plugin)
            compiled.append(
                CompiledRoute(
                    name=route.name,
                    config=route,
                    target=_target(route, gateway, pool, bus, mesh, deadline_header),
                    body_limit=(
                        route.max_body_bytes
                        if route.max_body_bytes is not None
                        else gateway.limits.max_body_bytes
                    ),
                    quartet=metrics.target("route", route.name),
                    fault=FaultInjector(route.fault) if route.fault is not None else None,
                    plugins=tuple(chain),
                    request_plugins=tuple(p for p in chain if p.handles_requests()),
                    response_plugins=tuple(p for p in reversed(chain) if p.handles_responses()),
                )
            )
        router = Router.build([(route.config.match, route) for route in compiled])
    except Exception as exc:
        for plugin in started:
            with contextlib.suppress(Exception):
                await plugin.close()
        raise RouteTableError(str(exc)) from exc
    return RouteTable(router, compiled, started)


def _target(
    route: RouteConfig,
    gateway: GatewayConfig,
    pool: ConnectionPool,
    bus: Bus | None,
    mesh: Mesh | None,
    deadline_header: str,
) -> Target:
    target = route.target
    if target.service is not None and target.service.service is not None:
        if mesh is None:
            raise RouteTableError(f"route {route.name!r} names a service but the mesh is off")
        mesh_proxy = MeshProxy(
            mesh.service(target.service.service),
            route_name=route.name,
            trusted_proxies=gateway.trusted_proxies,
            deadline_header=deadline_header,
            preserve_host=target.service.preserve_host,
        )
        return ProxyTarget(mesh_proxy, route)
    if target.service is not None:
        proxy = Proxy(
            target.service,
            pool,
            route_name=route.name,
            trusted_proxies=gateway.trusted_proxies,
        )
        return ProxyTarget(proxy, route)
    if target.topic is not None:
        if bus is None:
            return SimpleTarget(NoBus())
        return SimpleTarget(TopicPublisher(target.topic, bus, route_name=route.name))
    assert target.respond is not None
    return SimpleTarget(FixedResponder(target.respond))
