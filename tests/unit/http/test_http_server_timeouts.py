"""HttpServer timers and per-client limits: slow heads and bodies (408), idle keep-alive,
connections per client address (503), half-closed clients."""

from __future__ import annotations

import asyncio
import time

from test_http_server_support import (
    assert_problem,
    echo,
    exchange,
    final,
    hello,
    on_uvloop,
    read_all,
    request,
    serve,
)

from sampan.http.request import Request
from sampan.http.response import Response

FAST = {"header_timeout": 0.3, "body_timeout": 0.3, "keepalive_timeout": 0.3}


@on_uvloop
async def test_trickled_head_gets_408_after_the_header_timeout() -> None:
    async with serve(hello, **FAST) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaa":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)  # activity does not extend the head deadline
            if reader.at_eof():
                break
        raw = await read_all(reader, 2)
        elapsed = time.monotonic() - started
        assert_problem(final(raw)[0], 408)
        assert 0.25 <= elapsed < 1.5
        writer.close()


@on_uvloop
async def test_stalled_body_gets_408_after_the_body_timeout() -> None:
    async with serve(echo, **FAST) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request("POST", "/", [("Host", "t"), ("Content-Length", "100")], b"x" * 10))
        # pieces spaced under the timeout keep the body alive...
        for _ in range(4):
            await asyncio.sleep(0.15)
            writer.write(b"y" * 10)
        # ...silence longer than it does not
        raw = await read_all(reader, 2)
        assert_problem(final(raw)[0], 408)
        writer.close()


@on_uvloop
async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    async with serve(hello, **FAST) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request())
        await asyncio.wait_for(reader.readuntil(b"Hello, World!"), 2)
        await asyncio.sleep(0.15)
        writer.write(request())  # activity within the timeout: still served
        await asyncio.wait_for(reader.readuntil(b"Hello, World!"), 2)
        started = time.monotonic()
        assert await reader.read() == b""  # no 408 for an idle connection
        assert 0.2 <= time.monotonic() - started < 1.5
        assert server.connections == 0
        writer.close()


@on_uvloop
async def test_silent_new_connection_is_closed_after_the_header_timeout() -> None:
    async with serve(hello, header_timeout=0.2, keepalive_timeout=5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()


@on_uvloop
async def test_connections_over_the_per_client_limit_get_503() -> None:
    async with serve(hello, max_connections_per_client=2) as server:
        kept = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await asyncio.sleep(0.05)
        raw = await exchange(server.port, request())
        refused = final(raw)[0]
        assert_problem(refused, 503)
        assert refused.header(b"retry-after") == b"1"
        # the admitted ones still work, and a slot frees when one closes
        reader, writer = kept[0]
        writer.write(request())
        await asyncio.wait_for(reader.readuntil(b"Hello, World!"), 2)
        writer.close()
        await asyncio.sleep(0.1)
        raw = await exchange(server.port, request(headers=[("Host", "t"), ("Connection", "close")]))
        assert final(raw)[0].status == 200
        kept[1][1].close()


@on_uvloop
async def test_half_closed_client_still_gets_its_answers() -> None:
    async def slow(req: Request) -> Response:
        await asyncio.sleep(0.05)
        return Response(200, body=req.path.encode())

    async with serve(slow) as server:
        raw = await exchange(
            server.port, request(target="/a") + request(target="/b"), shut_write=True
        )
        responses = final(raw)
        assert [r.body for r in responses] == [b"/a", b"/b"]
        assert responses[-1].header(b"connection") == b"close"


@on_uvloop
async def test_client_that_stops_reading_is_cut_off_after_the_body_timeout() -> None:
    async def firehose(req: Request) -> Response:
        async def gen():  # type: ignore[no-untyped-def]
            while True:
                yield b"z" * 65536

        return Response(200, body=gen())

    async with serve(firehose, body_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.transport.pause_reading()
        writer.write(request())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if server.in_flight == 0:
                break
        assert server.in_flight == 0
        writer.transport.resume_reading()
        started = time.monotonic()
        await read_all(reader, 5)  # what was in flight, then EOF or reset
        assert time.monotonic() - started < 4
        writer.close()
