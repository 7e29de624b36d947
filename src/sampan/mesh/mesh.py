"""All of a node's services, its identity and its authorisation policy, with one lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from starlette.routing import BaseRoute

from sampan.http.client import ConnectionPool
from sampan.mesh.config import MeshConfig, ServiceConfig
from sampan.mesh.identity.authz import AuthorizationPolicy
from sampan.mesh.identity.rotation import CertificateRotator
from sampan.mesh.identity.tls import check_peer_id, client_context, server_context
from sampan.mesh.registration import Registry, registration_routes
from sampan.mesh.service import MeshService
from sampan.observe.metrics import Metrics

REGISTRY_SWEEP = 1.0


class Mesh:
    def __init__(self, config: MeshConfig, services: list[ServiceConfig], metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        identity = config.identity
        self.client_tls: ssl.SSLContext | None = None
        self.server_tls: ssl.SSLContext | None = None
        self.rotator: CertificateRotator | None = None
        if identity is not None:
            self.client_tls = client_context(identity)
            self.server_tls = server_context(identity)
            self.rotator = CertificateRotator(
                identity,
                [self.client_tls, self.server_tls],
                reissue=identity.ca_key is not None,
            )
        self.policy = AuthorizationPolicy.parse(config.authorization, config.trust_domain)
        self.pool = ConnectionPool(ssl_context=self.client_tls, peer_verifier=check_peer_id)
        self.services = {
            s.name: MeshService(s, self.pool, metrics, trust_domain=config.trust_domain)
            for s in services
        }
        self.registry = Registry({name: svc.endpoints for name, svc in self.services.items()})
        for service in services:
            if service.registration.enabled:
                self.registry.enable(service.name, service.registration.ttl)
        self._sweeper: asyncio.Task[None] | None = None

    def service(self, name: str) -> MeshService:
        return self.services[name]

    def admin_routes(self) -> list[BaseRoute]:
        return list(registration_routes(self.registry, self.services))

    async def start(self) -> None:
        if self.rotator is not None:
            await self.rotator.start()
        for service in self.services.values():
            await service.start()
        self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(REGISTRY_SWEEP)
            with contextlib.suppress(Exception):
                self.registry.expire(time.monotonic())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for service in self.services.values():
            await service.stop()
        if self.rotator is not None:
            await self.rotator.stop()
        await self.pool.close()
