"""request-id: give every request an id (or keep the caller's), for logs and traces."""

from __future__ import annotations

import os
import re
import time
from typing import ClassVar, Literal

from pydantic import Field

from sampan.gateway.plugins._support import HeaderName
from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.request import Request
from sampan.http.response import Response


class RequestIdOptions(PluginOptions):
    header_name: HeaderName = Field(
        "x-request-id", description="Header carrying the id (request, upstream and response)."
    )
    trust_incoming: bool = Field(
        True,
        description="Keep a well-formed id sent by the client (or a proxy in front); false "
        "always generates a new one.",
    )
    generator: Literal["uuid4", "time-ordered"] = Field(
        "uuid4",
        description="`uuid4`: random UUIDv4 as 32 hex digits; `time-ordered`: UUIDv7 layout "
        "(48-bit millisecond timestamp first, so ids sort by time) as 32 hex digits.",
    )
    max_length: int = Field(
        128,
        ge=8,
        le=1024,
        description="Longest incoming id accepted. Incoming ids must be 1..max_length of "
        "`A-Z a-z 0-9 . _ - : + = / @`; anything else (spaces, quotes, control characters) is "
        "replaced by a generated id, so ids can be logged and echoed safely.",
    )
    echo_downstream: bool = Field(True, description="Add the id to the response.")


def _uuid4_hex() -> str:
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _uuid7_hex() -> str:
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


class RequestIdPlugin(Plugin):
    """Sets ``request.state["request_id"]`` (str), the upstream header and the response
    header."""

    name: ClassVar[str] = "request-id"
    priority: ClassVar[int] = 100000
    Options: ClassVar[type[PluginOptions]] = RequestIdOptions

    def __init__(self, options: RequestIdOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._header = options.header_name.encode()
        self._trust = options.trust_incoming
        self._valid = re.compile(rb"[A-Za-z0-9._\-:+=/@]{1,%d}" % options.max_length).fullmatch
        self._generate = _uuid4_hex if options.generator == "uuid4" else _uuid7_hex
        self._echo = options.echo_downstream

    def fast_path_spec(self) -> tuple[str, object] | None:
        options = self.options
        assert isinstance(options, RequestIdOptions)
        return (
            self.name,
            (
                self._header,
                self._trust,
                options.generator == "time-ordered",
                options.max_length,
                self._echo,
            ),
        )

    async def on_request(self, request: Request) -> Response | None:
        header = self._header
        headers = request.headers
        incoming: bytes | None = None
        count = 0
        for key, value in headers.items:
            if key == header:
                incoming = value
                count += 1
        if self._trust and count == 1 and incoming is not None and self._valid(incoming):
            request.state["request_id"] = incoming.decode("ascii")
            return None
        request_id = self._generate()
        request.state["request_id"] = request_id
        if count:
            headers.set(header, request_id.encode())
        else:
            headers.items.append((header, request_id.encode()))
        return None

    async def on_response(self, request: Request, response: Response) -> Response:
        if self._echo:
            request_id = request.state.get("request_id")
            if isinstance(request_id, str):
                response.headers.set(self._header, request_id.encode())
        return response
