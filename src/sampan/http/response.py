"""The response a handler returns; the server writes it (length-delimited or chunked)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from sampan.http.headers import Headers


class RawConnection(Protocol):
    """A client socket handed over after a 101 response (WebSocket and other upgrades)."""

    async def read(self) -> bytes:
        """Next bytes from the client; b"" at end of stream. Bytes the client sent right
        after the upgrade request come first."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None:
        """Wait until the written bytes are handed to the kernel (backpressure)."""
        ...

    def close(self) -> None: ...


# Called once the server has written the 101 response; it owns the socket until it returns.
UpgradeHandler = Callable[[RawConnection], Awaitable[None]]


class Response:
    """``body`` is bytes (sent with Content-Length) or an async iterator of chunks (sent
    chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0 ones, or with the given
    Content-Length header when the producer knows it)."""

    __slots__ = ("body", "headers", "status", "upgrade")

    def __init__(
        self,
        status: int = 200,
        headers: Headers | None = None,
        body: bytes | AsyncIterator[bytes] = b"",
        *,
        upgrade: UpgradeHandler | None = None,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.upgrade = upgrade


def json_response(status: int, payload: Any, headers: Headers | None = None) -> Response:
    out = headers if headers is not None else Headers()
    out.set(b"content-type", b"application/json")
    return Response(status, out, orjson.dumps(payload))


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    headers: Headers | None = None,
    **extensions: Any,
) -> Response:
    """An RFC 9457 problem+json response: the one error shape of the data plane."""
    payload: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        payload["detail"] = detail
    payload.update(extensions)
    out = headers if headers is not None else Headers()
    out.set(b"content-type", b"application/problem+json")
    return Response(status, out, orjson.dumps(payload))
