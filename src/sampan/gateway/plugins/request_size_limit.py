"""request-size-limit: refuse bodies larger than a limit (413), declared or streamed."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sampan.gateway.plugins._support import content_length
from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.units import ByteSize


class RequestSizeLimitOptions(PluginOptions):
    max_bytes: ByteSize = Field(
        1024 * 1024, ge=0, description="Largest request body accepted on the route."
    )
    require_content_length: bool = Field(
        False,
        description="Refuse bodies without Content-Length (chunked uploads) with 411 instead "
        "of enforcing the limit while they stream.",
    )


class RequestSizeLimitPlugin(Plugin):
    """A declared Content-Length over the limit is answered 413 before any byte is read. A
    chunked body has no declared length: the plugin lowers the streaming body's ``limit``
    (when the server's body object exposes one), so whoever reads it (proxy, transformer)
    gets ``BodyTooLarge`` at the limit and the server answers 413."""

    name: ClassVar[str] = "request-size-limit"
    priority: ClassVar[int] = 1950
    Options: ClassVar[type[PluginOptions]] = RequestSizeLimitOptions

    def __init__(self, options: RequestSizeLimitOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._max = options.max_bytes
        self._require = options.require_content_length
        self._detail = f"The request body is larger than {options.max_bytes} bytes."

    async def on_request(self, request: Request) -> Response | None:
        headers = request.headers
        declared = content_length(headers.get(b"content-length"))
        chunked = declared is None and b"transfer-encoding" in headers
        if declared is None and not chunked:
            declared = request.body.length
        if declared is not None:
            if declared > self._max:
                return problem(413, "Content Too Large", self._detail, max_bytes=self._max)
            return None
        if not chunked:
            return None  # no body at all
        if self._require:
            return problem(411, "Length Required", "Send the body with a Content-Length.")
        body = request.body
        if hasattr(body, "limit"):
            current = getattr(body, "limit")  # noqa: B009 - the Body protocol has no limit yet
            if current is None or current > self._max:
                setattr(body, "limit", self._max)  # noqa: B010
        return None
