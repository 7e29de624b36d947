"""The proxy step for a route whose target names a mesh service.

Header handling is the plain proxy's; what differs is where the request goes: the mesh
service picks the endpoint and applies deadlines, retries, breakers and balancing, and its
refusals (no healthy endpoint, shed, deadline passed) become problem+json naming the service.
"""

from __future__ import annotations

import time

from sampan.gateway.forwarded import TrustedProxies
from sampan.gateway.proxy import Proxy
from sampan.http.body import Body
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.mesh.balancer import hash_key
from sampan.mesh.deadline import Deadline
from sampan.mesh.service import CallOptions, MeshError, MeshService
from sampan.mesh.tracing import next_traceparent


class MeshProxy(Proxy):
    __slots__ = ("_deadline_header", "_service")

    def __init__(
        self,
        service: MeshService,
        *,
        route_name: str,
        trusted_proxies: list[str],
        deadline_header: str,
        preserve_host: bool,
        via: str = "1.1 sampan",
    ) -> None:
        # The plain proxy's state, minus its endpoint list: the mesh service owns endpoints.
        timeouts = service.config.timeouts
        self._upstreams = []
        self._pool = service.pool
        self.route_name = route_name
        self._trusted = TrustedProxies(trusted_proxies).networks
        self._via = via.encode("latin-1")
        self._preserve_host = preserve_host
        self._connect_timeout = float(timeouts.connect)
        self._read_timeout = float(timeouts.per_try)
        self._write_timeout = float(timeouts.per_try)
        self._next = 0
        self._service = service
        self._deadline_header = deadline_header.lower().encode("latin-1")

    async def __call__(self, request: Request, *, upstream_path: str | bytes) -> Response:
        service = self._service
        target = (
            upstream_path if isinstance(upstream_path, bytes) else upstream_path.encode("latin-1")
        )
        headers, upgrade = self._request_headers(request, service.name.encode("ascii"))
        headers.set(b"traceparent", next_traceparent(request.headers.get(b"traceparent")))
        now = time.monotonic()
        key = hash_key(service.config.balancer, request, str(request.state.get("client_ip", "")))
        if upgrade is not None:
            try:
                endpoint = service.pick(now, key)
            except MeshError as exc:
                return self._refused(exc)
            path = endpoint.base_path.encode("ascii") + target if endpoint.base_path else target
            return await self._upgrade(request, endpoint.endpoint, path, headers, upgrade)
        deadline = Deadline.from_header(
            request.headers.get(self._deadline_header),
            now=now,
            default_total=service.config.timeouts.total,
        )
        body: Body | None = request.body
        if body is not None and body.length == 0:
            body = None
        try:
            response = await service.call(
                request.method,
                target,
                headers,
                body,
                CallOptions(deadline, self._deadline_header, key),
            )
        except MeshError as exc:
            return self._refused(exc)
        return self._response(request, response)

    def _refused(self, exc: MeshError) -> Response:
        return problem(
            exc.status, exc.title, exc.detail, service=self._service.name, route=self.route_name
        )
