"""Proxy streams: SSE without buffering, large streamed downloads, WebSocket tunnels."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from test_http_client_fakes import read_request, response, upstream

from sampan.gateway.config import ServiceTarget
from sampan.gateway.proxy import Proxy
from sampan.http.body import BytesBody
from sampan.http.client import ConnectionPool, UpstreamError
from sampan.http.headers import Headers
from sampan.http.request import Request

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def make_request(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(
        method,
        path.encode(),
        path,
        b"",
        Headers(headers),
        body=BytesBody(b""),
        client=("203.0.113.7", 40000),
    )


def proxy_for(url: str, pool: ConnectionPool, read_timeout: float = 5.0) -> Proxy:
    return Proxy(
        ServiceTarget(endpoints=[url], read_timeout=read_timeout),
        pool,
        route_name="live",
        trusted_proxies=[],
    )


async def test_sse_first_event_reaches_the_client_before_the_second_is_sent() -> None:
    second_sent = asyncio.Event()
    may_send_second = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        writer.write(b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await asyncio.wait_for(may_send_second.wait(), 5)
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
        await writer.drain()
        second_sent.set()
        await reader.read()

    async with upstream(sse) as up:
        pool = ConnectionPool()
        try:
            resp = await proxy_for(up.url, pool)(
                make_request("GET", "/events", [(b"accept", b"text/event-stream")]),
                upstream_path="/events",
            )
            assert resp.status == 200
            assert resp.headers.get(b"content-type") == b"text/event-stream"
            assert resp.headers.get(b"transfer-encoding") is None
            body = resp.body
            assert not isinstance(body, bytes)
            first = await asyncio.wait_for(anext(body), 2)
            assert first == b"data: first\n\n"
            assert not second_sent.is_set()  # relayed before the upstream sent more
            may_send_second.set()
            assert await asyncio.wait_for(anext(body), 2) == b"data: second\n\n"
            with pytest.raises(StopAsyncIteration):
                await anext(body)
            await asyncio.sleep(0.01)
            assert pool.stats()["idle"] == 1  # read to the end: reusable
        finally:
            await pool.close()


async def test_streamed_download_keeps_content_length_and_failure_mid_body_raises() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
        writer.write(b"x" * 300_000)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with upstream(cut) as up:
        pool = ConnectionPool()
        try:
            resp = await proxy_for(up.url, pool)(make_request("GET", "/f", []), upstream_path="/f")
            assert resp.headers.get(b"content-length") == b"1000000"
            body = resp.body
            assert not isinstance(body, bytes)
            got = 0
            with pytest.raises(UpstreamError):
                async for chunk in body:
                    got += len(chunk)
            assert 0 < got < 1_000_000
        finally:
            await pool.close()


async def test_abandoned_stream_closes_the_upstream_connection() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(1000):
            writer.write(b"5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with upstream(endless) as up:
        pool = ConnectionPool()
        try:
            resp = await proxy_for(up.url, pool)(make_request("GET", "/", []), upstream_path="/")
            body = resp.body
            assert not isinstance(body, bytes)
            assert await anext(body)
            await body.aclose()  # type: ignore[attr-defined]  # what the server does
            await asyncio.sleep(0.01)
            assert pool.stats()["open"] == 0
        finally:
            await pool.close()


class FakeClientSocket:
    """The server side's RawConnection, driven by the test."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False

    async def read(self) -> bytes:
        return await self.inbox.get()

    def write(self, data: bytes) -> None:
        self.outbox.put_nowait(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.closed = True


async def ws_echo_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal WebSocket server: the real handshake answer, then echo raw bytes."""
    seen = await read_request(reader)
    assert seen is not None
    key = seen.header(b"sec-websocket-key")
    if key is None or seen.header(b"upgrade") != b"websocket":
        writer.write(response(400, b"not a websocket handshake"))
        await writer.drain()
        return
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    await writer.drain()
    for _ in range(10_000):
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()


def ws_request(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> Request:
    return make_request(
        "GET",
        "/ws",
        [
            (b"host", b"api.example.vn"),
            (b"connection", b"Upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-key", key),
            (b"sec-websocket-version", b"13"),
        ],
    )


async def test_websocket_is_tunnelled_both_ways_until_a_side_closes() -> None:
    async with upstream(ws_echo_upstream) as up:
        pool = ConnectionPool()
        try:
            resp = await proxy_for(up.url, pool)(ws_request(), upstream_path="/ws")
            assert resp.status == 101
            assert resp.upgrade is not None
            assert resp.headers.get(b"upgrade") == b"websocket"
            assert resp.headers.get(b"sec-websocket-accept") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            assert resp.headers.get(b"via") == b"1.1 sampan"
            client = FakeClientSocket()
            relay = asyncio.ensure_future(resp.upgrade(client))
            for message in (b"\x81\x05hello", b"\x81\x05world"):
                client.inbox.put_nowait(message)
                assert await asyncio.wait_for(client.outbox.get(), 2) == message
            client.inbox.put_nowait(b"")  # the client closed
            await asyncio.wait_for(relay, 2)
            assert client.closed
            assert pool.stats()["open"] == 0
        finally:
            await pool.close()


async def test_websocket_upstream_close_ends_the_tunnel() -> None:
    async def greet_and_go(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"\r\nbye"
        )
        await writer.drain()
        writer.close()

    async with upstream(greet_and_go) as up:
        pool = ConnectionPool()
        try:
            resp = await proxy_for(up.url, pool)(ws_request(), upstream_path="/ws")
            assert resp.upgrade is not None
            client = FakeClientSocket()
            await asyncio.wait_for(resp.upgrade(client), 2)
            assert client.outbox.get_nowait() == b"bye"
            assert client.closed
        finally:
            await pool.close()


async def test_idle_tunnel_is_closed_after_the_read_timeout() -> None:
    async with upstream(ws_echo_upstream) as up:
        pool = ConnectionPool()
        try:
            resp = await proxy_for(up.url, pool, read_timeout=0.2)(ws_request(), upstream_path="/")
            assert resp.upgrade is not None
            client = FakeClientSocket()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(resp.upgrade(client), 2)
            assert 0.15 < loop.time() - started < 1.5
            assert client.closed
        finally:
            await pool.close()


async def test_refused_websocket_is_passed_back() -> None:
    async with upstream(ws_echo_upstream) as up:
        pool = ConnectionPool()
        try:
            request = ws_request()
            request.headers.remove(b"sec-websocket-key")
            resp = await proxy_for(up.url, pool)(request, upstream_path="/ws")
            assert resp.status == 400
            assert resp.upgrade is None
            assert resp.body == b"not a websocket handshake"
        finally:
            await pool.close()
