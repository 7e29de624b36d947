"""request-transformer: change headers, query and JSON body before the request is proxied."""

from __future__ import annotations

from typing import ClassVar

import orjson
from pydantic import Field

from sampan.gateway.plugins._support import is_json
from sampan.gateway.plugins._transform import (
    BodyOps,
    BodyTransform,
    HeaderOps,
    HeaderTransform,
    QueryOps,
    QueryTransform,
)
from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.body import BodyTooLarge, BytesBody
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.units import ByteSize


class RequestTransformerOptions(PluginOptions):
    headers: HeaderOps = Field(default_factory=HeaderOps, description="Header operations.")
    query: QueryOps = Field(default_factory=QueryOps, description="Query-string operations.")
    body: BodyOps = Field(
        default_factory=BodyOps,
        description="JSON body operations; applied only when the request's Content-Type is "
        "JSON (`application/json`, `*/*+json`) and the body is an object.",
    )
    max_body_bytes: ByteSize = Field(
        1024 * 1024,
        ge=0,
        description="Bodies are read whole to be transformed; larger ones get 413.",
    )


class RequestTransformerPlugin(Plugin):
    """A JSON body that does not parse gets 400 problem+json (the request says it is JSON);
    a JSON array or scalar is passed on untouched. The new body is sent with a fresh
    Content-Length (and without Transfer-Encoding)."""

    name: ClassVar[str] = "request-transformer"
    priority: ClassVar[int] = 801
    Options: ClassVar[type[PluginOptions]] = RequestTransformerOptions

    def __init__(self, options: RequestTransformerOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._headers = HeaderTransform(options.headers)
        self._query = QueryTransform(options.query)
        self._body = BodyTransform(options.body)
        self._max = options.max_body_bytes

    async def on_request(self, request: Request) -> Response | None:
        headers = request.headers
        if not self._body.empty and is_json(headers.get(b"content-type")):
            try:
                data = await request.body.read(self._max)
            except BodyTooLarge:
                return problem(
                    413,
                    "Content Too Large",
                    f"JSON bodies on this route are limited to {self._max} bytes.",
                )
            if data:
                try:
                    changed = self._body.apply(data)
                except orjson.JSONDecodeError:
                    return problem(400, "Bad Request", "The request body is not valid JSON.")
                if changed is not None:
                    request.body = BytesBody(changed)
                    headers.remove(b"transfer-encoding")
                    headers.set(b"content-length", b"%d" % len(changed))
        self._headers.apply(headers)
        if not self._query.empty:
            request.query = self._query.apply(request.query)
        return None
