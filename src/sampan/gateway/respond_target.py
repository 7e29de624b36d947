"""The `respond` target: a fixed response (mocks, health checks), built once at load time."""

from __future__ import annotations

import orjson

from sampan.gateway.config import RespondTarget
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response


class FixedResponder:
    def __init__(self, target: RespondTarget) -> None:
        self.status = target.status
        if target.json_body is not None:
            self.body = orjson.dumps(target.json_body)
            content_type: bytes | None = b"application/json"
        elif target.body is not None:
            self.body = target.body.encode()
            content_type = b"text/plain; charset=utf-8"
        else:
            self.body = b""
            content_type = None
        items = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in target.headers.items()
        ]
        if content_type is not None and not any(k == b"content-type" for k, _ in items):
            items.append((b"content-type", content_type))
        self.headers = tuple(items)

    async def __call__(self, request: Request, params: dict[str, str], body_limit: int) -> Response:
        return Response(self.status, Headers(self.headers), self.body)
