"""All the flows of a node, started after the bus and the gateway and stopped before them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sampan.bus.base import Bus
from sampan.bus.retry_config import RetryConfig
from sampan.flows.config import FlowConfig
from sampan.flows.endpoint import EndpointContext, Sink
from sampan.flows.flow import Flow
from sampan.flows.service_caller import MeshServiceCaller, ServiceCaller
from sampan.observe.metrics import Metrics
from sampan.store.base import StateStore

if TYPE_CHECKING:
    from sampan.gateway.config import RouteConfig
    from sampan.mesh.mesh import Mesh

log = logging.getLogger("sampan.flows")


def route_topics(routes: list[RouteConfig]) -> dict[str, str]:
    """Route name -> the topic it publishes to (routes with a topic target only)."""
    return {
        route.name: route.target.topic.name for route in routes if route.target.topic is not None
    }


class FlowService:
    def __init__(
        self,
        flows: list[FlowConfig],
        *,
        bus: Bus,
        store: StateStore,
        metrics: Metrics,
        base_dir: Path,
        data_dir: Path,
        node: str,
        default_retry: RetryConfig,
        routes: list[RouteConfig] | None = None,
        mesh: Mesh | None = None,
        services: ServiceCaller | None = None,
        fetch_batch: int = 256,
        lease_seconds: float = 30.0,
        start_sources: bool = True,
        replace_sink: Callable[[str], Sink] | None = None,
    ) -> None:
        caller = services or MeshServiceCaller(mesh)
        topics = route_topics(routes or [])
        self.flows: list[Flow] = []
        for config in flows:
            ctx = EndpointContext(
                flow=config.name,
                bus=bus,
                store=store,
                metrics=metrics,
                base_dir=base_dir,
                data_dir=data_dir,
                node=node,
                mesh=mesh,
                extra={"services": caller},
            )
            self.flows.append(
                Flow(
                    config,
                    ctx,
                    caller,
                    retry=(config.retry or default_retry).policy(),
                    fetch_batch=fetch_batch,
                    lease_seconds=lease_seconds,
                    route_topics=topics,
                    start_source=start_sources,
                    replace_sink=replace_sink,
                )
            )

    async def start(self) -> None:
        started: list[Flow] = []
        try:
            for flow in self.flows:
                await flow.start()
                started.append(flow)
        except BaseException:
            await asyncio.gather(*(flow.stop(1.0) for flow in started), return_exceptions=True)
            raise

    async def stop(self, grace: float = 10.0) -> None:
        results = await asyncio.gather(
            *(flow.stop(grace) for flow in self.flows), return_exceptions=True
        )
        for flow, result in zip(self.flows, results, strict=True):
            if isinstance(result, BaseException):
                log.error("flow %s did not stop cleanly: %s", flow.name, result)
