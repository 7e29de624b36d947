"""Byte-for-byte controllable upstream servers for the client and proxy tests (plus tests of
the fakes themselves). Imported by tests/unit/gateway/test_gateway_proxy_*.py too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

MAX_REQUESTS_PER_CONNECTION = 10_000


@dataclass
class SeenRequest:
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False
    raw_head: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


async def read_request(reader: asyncio.StreamReader) -> SeenRequest | None:
    """One request from the stream, body decoded (content-length or chunked); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    seen = SeenRequest(method.decode(), target, headers, b"", raw_head=head)
    length = seen.header(b"content-length")
    if seen.header(b"transfer-encoding") == b"chunked":
        seen.chunked = True
        parts = []
        for _ in range(1_000_000):
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        seen.body = b"".join(parts)
    elif length is not None:
        seen.body = await reader.readexactly(int(length))
    return seen


def response(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    reason: bytes = b"OK",
    length: bool = True,
) -> bytes:
    head = [b"HTTP/1.1 %d %s" % (status, reason)]
    for name, value in headers or []:
        head.append(name + b": " + value)
    if length:
        head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Upstream:
    """A TCP server on 127.0.0.1 running ``handler`` per connection."""

    handler: Handler
    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    requests: list[SeenRequest] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> Upstream:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.writers.append(writer)
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


def keep_alive(
    respond: Callable[[SeenRequest], bytes | Awaitable[bytes]],
    requests: list[SeenRequest] | None = None,
) -> Handler:
    """A keep-alive handler answering each request with ``respond(request)``'s bytes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            seen = await read_request(reader)
            if seen is None:
                return
            if requests is not None:
                requests.append(seen)
            out = respond(seen)
            data = out if isinstance(out, bytes) else await out
            writer.write(data)
            await writer.drain()
            if seen.header(b"connection") == b"close":
                return

    return handler


@contextlib.asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[Upstream]:
    server = await Upstream(handler).start()
    try:
        yield server
    finally:
        await server.close()


async def test_fake_keep_alive_answers_two_requests() -> None:
    seen: list[SeenRequest] = []
    async with upstream(keep_alive(lambda r: response(200, r.body), seen)) as up:
        reader, writer = await asyncio.open_connection("127.0.0.1", up.port)
        writer.write(b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi")
        writer.write(b"GET /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
        data = b""
        for _ in range(100):
            data += await reader.read(65536)
            if data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"x"):
                break
        writer.close()
    assert [s.body for s in seen] == [b"hi", b"x"]
    assert seen[1].chunked
