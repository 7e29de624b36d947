"""``sampan sidecar``: the mesh in front of an existing service, without changing it.

Inbound: an mTLS listener that authorises each caller's SPIFFE ID against the policy and
forwards to the app on localhost. Outbound: a plain localhost listener the app calls with
``Host: <service>``; the sidecar sends the call through the mesh (balancing, retries,
deadlines, breakers, mTLS) to that service.
"""

from __future__ import annotations

import logging
import time

from sampan.config import SampanConfig
from sampan.gateway.config import ServiceTarget
from sampan.gateway.forwarded import client_ip
from sampan.gateway.mesh_proxy import MeshProxy
from sampan.gateway.normalize import BadPath, normalize_path
from sampan.gateway.proxy import Proxy, upstream_target
from sampan.http.client import ConnectionPool
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.http.server import HttpServer
from sampan.mesh.identity.authz import AuthorizationGate
from sampan.mesh.mesh import Mesh
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.sidecar")


class Sidecar:
    def __init__(
        self,
        config: SampanConfig,
        *,
        service: str,
        app_url: str,
        inbound: tuple[str, int],
        outbound: tuple[str, int] | None,
        metrics: Metrics,
    ) -> None:
        if config.mesh.identity is None:
            raise ValueError("the sidecar needs mesh.identity (certificate, key, CA)")
        self.config = config
        self.service = service
        self.metrics = metrics
        self.mesh = Mesh(config.mesh, config.services, metrics)
        self.gate = AuthorizationGate(self.mesh.policy, service, metrics)
        self.app_pool = ConnectionPool()
        self.app = Proxy(
            ServiceTarget(endpoints=[app_url]),
            self.app_pool,
            route_name=f"{service}-inbound",
            trusted_proxies=[],
        )
        self.inbound_quartet = metrics.target("route", f"{service}-inbound")
        self.outbound_proxies = {
            name: MeshProxy(
                svc,
                route_name=f"{service}-outbound:{name}",
                trusted_proxies=["127.0.0.1/32", "::1/128"],
                deadline_header=config.mesh.deadline_header,
                preserve_host=False,
            )
            for name, svc in self.mesh.services.items()
        }
        limits = config.gateway.limits
        self.inbound_server = HttpServer(
            self._inbound,
            limits,
            host=inbound[0],
            port=inbound[1],
            ssl=self.mesh.server_tls,
            scheme="https",
        )
        self.outbound_server = (
            HttpServer(self._outbound, limits, host=outbound[0], port=outbound[1])
            if outbound is not None
            else None
        )

    async def start(self) -> None:
        await self.mesh.start()
        await self.inbound_server.start()
        if self.outbound_server is not None:
            await self.outbound_server.start()
        log.info(
            "sidecar for %s: inbound mTLS on %d, outbound on %s",
            self.service,
            self.inbound_server.port,
            self.outbound_server.port if self.outbound_server else "-",
        )

    async def stop(self) -> None:
        drain = self.config.gateway.drain_timeout
        if self.outbound_server is not None:
            await self.outbound_server.drain(drain)
        await self.inbound_server.drain(drain)
        await self.mesh.stop()
        await self.app_pool.close()

    async def _inbound(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._forward_inbound(request)
        self.inbound_quartet.observe(time.perf_counter() - started, error=response.status >= 500)
        return response

    async def _forward_inbound(self, request: Request) -> Response:
        denied = self.gate.authorize(request)
        if denied is not None:
            return denied
        target = _prepared_target(request)
        if isinstance(target, Response):
            return target
        return await self.app(request, upstream_path=target)

    async def _outbound(self, request: Request) -> Response:
        name = request.host
        proxy = self.outbound_proxies.get(name)
        if proxy is None:
            return problem(
                404,
                "Unknown service",
                f"no service named {name!r} (set Host to one of: "
                f"{', '.join(sorted(self.outbound_proxies)) or 'none'})",
            )
        target = _prepared_target(request)
        if isinstance(target, Response):
            return target
        return await proxy(request, upstream_path=target)


def _prepared_target(request: Request) -> bytes | Response:
    """Normalise the path (a sidecar is as strict as the gateway) and build the target."""
    try:
        request.path = normalize_path(request.path, encoded_slash="reject")
    except BadPath as exc:
        return problem(400, "Bad request path", exc.reason)
    request.state["client_ip"] = client_ip(request, [])
    return upstream_target(request, None, False, None, {})
