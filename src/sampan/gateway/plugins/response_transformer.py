"""response-transformer: change headers and the JSON body of responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import orjson
from pydantic import Field

from sampan.gateway.plugins._support import content_length, is_json
from sampan.gateway.plugins._transform import BodyOps, BodyTransform, HeaderOps, HeaderTransform
from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.units import ByteSize


class ResponseTransformerOptions(PluginOptions):
    headers: HeaderOps = Field(default_factory=HeaderOps, description="Header operations.")
    body: BodyOps = Field(
        default_factory=BodyOps,
        description="JSON body operations (JSON objects only, uncompressed, within "
        "`max_body_bytes`; see above).",
    )
    max_body_bytes: ByteSize = Field(
        1024 * 1024,
        ge=0,
        description="Larger bodies are passed through untouched (never buffered past this).",
    )


async def _replay(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    async for chunk in rest:
        yield chunk


class ResponseTransformerPlugin(Plugin):
    """The body is transformed only when the response is JSON (`application/json`,
    `*/*+json`), not compressed (no Content-Encoding other than identity), a JSON object, and
    at most ``max_body_bytes``. A streamed body is buffered up to that size: past it, or
    when it turns out not to be a JSON object, the buffered chunks and the rest of the
    stream are passed through unchanged. Otherwise the new body is sent with a fresh
    Content-Length."""

    name: ClassVar[str] = "response-transformer"
    priority: ClassVar[int] = 800
    Options: ClassVar[type[PluginOptions]] = ResponseTransformerOptions

    def __init__(self, options: ResponseTransformerOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._headers = HeaderTransform(options.headers)
        self._body = BodyTransform(options.body)
        self._max = options.max_body_bytes

    def _wants_body(self, request: Request, response: Response) -> bool:
        if self._body.empty or request.method == "HEAD" or response.status in (204, 304):
            return False
        headers = response.headers
        if not is_json(headers.get(b"content-type")):
            return False
        encoding = headers.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            return False
        declared = content_length(headers.get(b"content-length"))
        return declared is None or declared <= self._max

    async def on_response(self, request: Request, response: Response) -> Response:
        if self._wants_body(request, response):
            await self._transform_body(response)
        self._headers.apply(response.headers)
        return response

    async def _transform_body(self, response: Response) -> None:
        body = response.body
        if isinstance(body, bytes):
            data = body
            if len(data) > self._max:
                return
        else:
            chunks: list[bytes] = []
            size = 0
            iterator = body.__aiter__()
            async for chunk in iterator:
                chunks.append(chunk)
                size += len(chunk)
                if size > self._max:
                    response.body = _replay(chunks, iterator)
                    return
            data = b"".join(chunks)
            response.body = data  # the stream is consumed: from now on it is these bytes
            response.headers.remove(b"transfer-encoding")
        try:
            changed = self._body.apply(data)
        except orjson.JSONDecodeError:
            changed = None
        if changed is None:
            return
        response.body = changed
        headers = response.headers
        headers.remove(b"transfer-encoding")
        headers.set(b"content-length", b"%d" % len(changed))
