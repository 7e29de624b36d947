"""The request a gateway handler and its plugins see."""

from __future__ import annotations

from typing import Any

from sampan.http.body import Body, BytesBody
from sampan.http.headers import Headers


class Request:
    """One HTTP request. ``path`` is normalised (see ``gateway/normalize.py``) and is what
    routing and auth see; ``raw_target`` is exactly what the client sent."""

    __slots__ = (
        "body",
        "client",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "raw_target",
        "received_at",
        "scheme",
        "server",
        "state",
    )

    def __init__(
        self,
        method: str,
        raw_target: bytes,
        path: str,
        query: bytes,
        headers: Headers,
        *,
        http_version: str = "1.1",
        body: Body | None = None,
        client: tuple[str, int] = ("", 0),
        server: tuple[str, int] = ("", 0),
        scheme: str = "http",
        keep_alive: bool = True,
        received_at: float = 0.0,
    ) -> None:
        self.method = method
        self.raw_target = raw_target
        self.path = path
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.body: Body = body if body is not None else BytesBody()
        self.client = client
        self.server = server
        self.scheme = scheme
        self.keep_alive = keep_alive
        self.received_at = received_at
        # Per-request scratch space for plugins: consumer, route params, request id...
        self.state: dict[str, Any] = {}

    @property
    def host(self) -> str:
        """The Host header without port, lowercased ('' when absent)."""
        raw = self.headers.get(b"host")
        if not raw:
            return ""
        host = raw.decode("latin-1").lower()
        if host.startswith("["):  # IPv6 literal
            return host.split("]", 1)[0] + "]"
        return host.rsplit(":", 1)[0] if ":" in host else host
