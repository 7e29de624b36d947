"""The proxy behind the real HttpServer: a client socket -> server -> Proxy -> upstream, for
the cases where the server's part matters (WebSocket bytes both ways, SSE timing, HEAD)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from test_http_client_fakes import keep_alive, read_request, response, upstream

from sampan.gateway.config import LimitsConfig, ServiceTarget
from sampan.gateway.proxy import Proxy
from sampan.http.client import ConnectionPool
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import HttpServer

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@asynccontextmanager
async def gateway(url: str) -> AsyncIterator[int]:
    pool = ConnectionPool()
    proxy = Proxy(ServiceTarget(endpoints=[url]), pool, route_name="e2e", trusted_proxies=[])

    async def handler(request: Request) -> Response:
        return await proxy(request, upstream_path=request.raw_target)

    server = HttpServer(handler, LimitsConfig(), host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server.port
    finally:
        await server.drain(1.0)
        await pool.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    lines = head[:-4].split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields


async def ws_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    seen = await read_request(reader)
    assert seen is not None
    key = seen.header(b"sec-websocket-key") or b""
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"sec-websocket-accept: " + accept + b"\r\n\r\n"
    )
    await writer.drain()
    for _ in range(10_000):
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()


async def test_websocket_through_the_server() -> None:
    async with upstream(ws_echo) as up, gateway(up.url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /chat HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        status, fields = await read_head(reader)
        assert status.startswith(b"HTTP/1.1 101")
        assert fields[b"sec-websocket-accept"] == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert fields[b"upgrade"] == b"websocket"
        assert fields[b"connection"].lower() == b"upgrade"
        for frame in (b"\x81\x02hi", b"\x82\x03\x00\x01\x02" * 1000):
            writer.write(frame)
            got = await asyncio.wait_for(reader.readexactly(len(frame)), 2)
            assert got == frame
        writer.close()


async def test_sse_through_the_server_is_not_buffered() -> None:
    gate = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n"
        )
        await writer.drain()
        await asyncio.wait_for(gate.wait(), 5)
        writer.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with upstream(sse) as up, gateway(up.url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nhost: gw\r\naccept: text/event-stream\r\n\r\n")
        status, fields = await read_head(reader)
        assert status.startswith(b"HTTP/1.1 200")
        assert fields[b"transfer-encoding"] == b"chunked"
        first = await asyncio.wait_for(reader.readuntil(b"data: one\n\n\r\n"), 2)
        assert first.endswith(b"data: one\n\n\r\n")
        gate.set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 2)
        assert b"data: two" in rest
        writer.close()


async def test_head_and_keep_alive_through_the_server() -> None:
    def respond(r: object) -> bytes:
        if getattr(r, "method", "") == "HEAD":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        return response(200, b"hello", [(b"content-type", b"text/plain")])

    async with upstream(keep_alive(respond)) as up, gateway(up.url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD / HTTP/1.1\r\nhost: gw\r\n\r\nGET / HTTP/1.1\r\nhost: gw\r\n\r\n")
        status, fields = await read_head(reader)
        assert status.startswith(b"HTTP/1.1 200") and fields[b"content-length"] == b"5"
        status, fields = await read_head(reader)
        assert fields[b"content-length"] == b"5"
        assert fields[b"via"] == b"1.1 sampan"
        assert await asyncio.wait_for(reader.readexactly(5), 2) == b"hello"
        writer.close()
