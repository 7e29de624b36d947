"""How flows call services: through the mesh in a node, from fixtures in `sampan flow test`.

Enrichers and ``to: {service: ...}`` only need "send this request to that service, give me
the status and body"; keeping that behind a small interface lets declarative flow tests
answer from fixtures while a node sends every call through the mesh (balancing, retries
within budget, breakers, deadlines, mTLS).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sampan.http.body import BytesBody
from sampan.http.headers import Headers
from sampan.mesh.deadline import Deadline
from sampan.mesh.mesh import Mesh
from sampan.mesh.service import CallOptions, MeshError
from sampan.mesh.tracing import next_traceparent

MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    status: int
    body: bytes
    content_type: str = ""


class ServiceUnavailable(Exception):
    """The mesh could not get an answer (no endpoint, shed, deadline, connection failed)."""


class ServiceCaller(abc.ABC):
    @abc.abstractmethod
    async def call(
        self,
        service: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ServiceAnswer: ...

    def knows(self, service: str) -> bool:
        """Whether calls to ``service`` can be answered at all."""
        return True


class MeshServiceCaller(ServiceCaller):
    def __init__(self, mesh: Mesh | None) -> None:
        self._mesh = mesh

    def knows(self, service: str) -> bool:
        return self._mesh is not None and service in self._mesh.services

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ServiceAnswer:
        if self._mesh is None or service not in self._mesh.services:
            raise ServiceUnavailable(f"no service named {service!r} in `services:`")
        target = self._mesh.service(service)
        request_headers = Headers(
            [(b"host", service.encode("ascii")), (b"accept", b"application/json")]
        )
        if body is not None:
            request_headers.add(b"content-type", b"application/json")
        for name, value in (headers or {}).items():
            request_headers.set(name.lower().encode("latin-1"), value.encode("latin-1"))
        request_headers.set(b"traceparent", next_traceparent(None))
        deadline_header = self._mesh.config.deadline_header.lower().encode("latin-1")
        options = CallOptions(
            Deadline.after(time.monotonic(), target.config.timeouts.total), deadline_header
        )
        try:
            response = await target.call(
                method,
                path.encode("latin-1"),
                request_headers,
                BytesBody(body) if body else None,
                options,
            )
        except MeshError as exc:
            raise ServiceUnavailable(f"{service}: {exc.status} {exc.title}: {exc.detail}") from None
        try:
            data = response.content
            if data is None:
                chunks = []
                size = 0
                async for chunk in response.body.chunks():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise ServiceUnavailable(
                            f"{service}: answer larger than {MAX_ANSWER_BYTES} bytes"
                        )
                    chunks.append(chunk)
                data = b"".join(chunks)
        finally:
            await response.aclose()
        content_type = (response.headers.get_str(b"content-type") or "").split(";")[0].strip()
        return ServiceAnswer(response.status, data, content_type)
