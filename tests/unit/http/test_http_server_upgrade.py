"""HttpServer protocol upgrades: 101 + RawConnection hand-over, declined upgrades."""

from __future__ import annotations

import asyncio

from test_http_server_support import (
    assert_problem,
    exchange,
    final,
    is_closed,
    on_uvloop,
    request,
    serve,
)

from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import RawConnection, Response

UPGRADE_HEADERS = [("Host", "t"), ("Connection", "Upgrade"), ("Upgrade", "echo")]


async def echo_upgrade(req: Request) -> Response:
    if req.headers.get(b"upgrade") != b"echo":
        return Response(426, Headers([(b"upgrade", b"echo")]), b"upgrade required")

    async def run(conn: RawConnection) -> None:
        while True:
            data = await conn.read()
            if not data or data == b"bye":
                break
            conn.write(data.upper())
            await conn.drain()
        conn.write(b"BYE")
        await conn.drain()

    return Response(101, Headers([(b"upgrade", b"echo")]), upgrade=run)


@on_uvloop
async def test_upgrade_hands_the_socket_over_with_early_bytes_first() -> None:
    async with serve(echo_upgrade) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # the client speaks the new protocol right after the request, before the 101
        writer.write(request(headers=UPGRADE_HEADERS) + b"early")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"upgrade: echo\r\n" in head and b"connection: upgrade\r\n" in head
        assert await asyncio.wait_for(reader.readexactly(5), 2) == b"EARLY"
        # not HTTP any more: this would be a 400 on an HTTP connection
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(18), 2) == b"GET / HTTP/1.1\r\n\r\n"
        await asyncio.sleep(0.05)
        writer.write(b"bye")
        assert await asyncio.wait_for(reader.readexactly(3), 2) == b"BYE"
        assert await is_closed(reader)
        writer.close()
        await asyncio.sleep(0.05)
        assert server.in_flight == 0


@on_uvloop
async def test_upgrade_backpressure_on_a_large_relay() -> None:
    async with serve(echo_upgrade) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(headers=UPGRADE_HEADERS))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        payload = b"a" * (8 * 1024 * 1024)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        sender = asyncio.create_task(send())
        received = 0
        while received < len(payload):
            data = await asyncio.wait_for(reader.read(1 << 20), 5)
            assert data and set(data) == {ord("A")}
            received += len(data)
        await sender
        writer.close()


@on_uvloop
async def test_declined_upgrade_is_answered_and_the_connection_closed() -> None:
    async with serve(echo_upgrade) as server:
        headers = [("Host", "t"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
        raw = await exchange(server.port, request(headers=headers) + request())
        responses = final(raw)
        assert len(responses) == 1  # the bytes after an upgrade request are never parsed
        assert responses[0].status == 426
        assert responses[0].header(b"upgrade") == b"echo"
        assert responses[0].header(b"connection") == b"close"


@on_uvloop
async def test_101_without_an_upgrade_request_is_a_500() -> None:
    async def rogue(req: Request) -> Response:
        async def run(conn: RawConnection) -> None:
            conn.close()

        return Response(101, upgrade=run)

    async with serve(rogue) as server:
        raw = await exchange(server.port, request())
        assert_problem(final(raw)[0], 500)


@on_uvloop
async def test_upgrade_request_with_a_body_is_rejected() -> None:
    async with serve(echo_upgrade) as server:
        headers = [*UPGRADE_HEADERS, ("Content-Length", "5")]
        raw = await exchange(server.port, request(headers=headers, body=b"hello"))
        assert_problem(final(raw)[0], 400)
