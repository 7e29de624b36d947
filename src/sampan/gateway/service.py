"""The gateway as a node service: listener, upstream pool, route table, hot reload."""

from __future__ import annotations

import asyncio
import logging

from sampan.bus.base import Bus
from sampan.config import SampanConfig
from sampan.gateway.app import Gateway
from sampan.gateway.fast_front import GatewayFront, load_front
from sampan.gateway.route_table import RouteTable, RouteTableError, build_route_table
from sampan.http.client import ConnectionPool
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import Handler, HttpServer
from sampan.mesh.identity.authz import AuthorizationGate
from sampan.mesh.mesh import Mesh
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.gateway")


class GatewayService:
    def __init__(
        self,
        config: SampanConfig,
        metrics: Metrics,
        bus: Bus | None,
        *,
        mesh: Mesh | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.bus = bus
        self.mesh = mesh
        self.reuse_port = reuse_port
        self.pool = ConnectionPool()
        self.gateway: Gateway | None = None
        self.server: HttpServer | None = None
        self.front: GatewayFront | None = None
        self._retired: set[asyncio.Task[None]] = set()

    async def _table(self, config: SampanConfig) -> RouteTable:
        return await build_route_table(
            config.gateway,
            config.routes,
            config.consumers,
            metrics=self.metrics,
            pool=self.pool,
            bus=self.bus,
            node_name=config.node.name,
            mesh=self.mesh,
            deadline_header=config.mesh.deadline_header,
        )

    async def start(self, port: int | None = None) -> None:
        table = await self._table(self.config)
        self.gateway = Gateway(self.config.gateway, table, self.metrics)
        listen = self.config.gateway.listen
        handler: Handler = self.gateway.handle
        tls = None
        if listen.mtls:
            if self.mesh is None or self.mesh.server_tls is None:
                raise RouteTableError("gateway.listen.mtls needs mesh.identity")
            tls = self.mesh.server_tls
            handler = self._authorised(self.gateway.handle, self.mesh)
        self.server = HttpServer(
            handler,
            self.config.gateway.limits,
            host=listen.host,
            port=listen.port if port is None else port,
            reuse_port=self.reuse_port,
            ssl=tls,
            scheme="https" if tls is not None else "http",
        )
        module = load_front() if self.config.gateway.fast_path and tls is None else None
        if module is not None:
            self.front = GatewayFront(module, self.server, self.gateway, self.config.gateway)
            self.front.start()
        else:
            await self.server.start()
        log.info(
            "gateway listening on http://%s:%d with %d route(s)",
            listen.host,
            self.server.port,
            len(table.routes),
        )

    def _authorised(self, handler: Handler, mesh: Mesh) -> Handler:
        """Only callers whose SPIFFE ID the policy allows reach the routes."""
        assert mesh.config.identity is not None
        gate = AuthorizationGate(mesh.policy, mesh.config.identity.service, self.metrics)

        async def guarded(request: Request) -> Response:
            denied = gate.authorize(request)
            return denied if denied is not None else await handler(request)

        return guarded

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def reload(self, config: SampanConfig) -> int:
        """Swap in the routes, consumers and plugins of ``config``; returns the route count.

        Raises if the new table cannot be built; the old one keeps serving."""
        assert self.gateway is not None
        unchanged = ("listen", "limits", "workers")
        for name in unchanged:
            if getattr(config.gateway, name) != getattr(self.config.gateway, name):
                log.warning("gateway.%s changed: it takes effect on restart, not on reload", name)
        table = await self._table(config)
        try:
            if self.front is not None:  # raises before anything serves the new table
                self.front.swap(self.front.prepare(table))
        except Exception:
            await table.close()
            raise
        previous = self.gateway.swap(table)  # both paths serve the new table from here on
        self.config = config
        task = asyncio.create_task(self._retire(previous))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        log.info("gateway reloaded: %d route(s)", len(table.routes))
        return len(table.routes)

    async def _retire(self, table: RouteTable) -> None:
        """Close a replaced table once requests that started on it have had time to end."""
        try:
            await asyncio.sleep(self.config.gateway.drain_timeout)
        finally:
            await table.close()

    async def stop(self) -> None:
        if self.front is not None:
            await self.front.drain(self.config.gateway.drain_timeout)
        elif self.server is not None:
            await self.server.drain(self.config.gateway.drain_timeout)
        retired = list(self._retired)
        for task in retired:
            task.cancel()
        await asyncio.gather(*retired, return_exceptions=True)
        if self.gateway is not None:
            await self.gateway.table.close()
        await self.pool.close()
