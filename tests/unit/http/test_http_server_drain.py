"""HttpServer lifecycle: graceful drain, force-close at the timeout, hot handler swap,
SO_REUSEPORT and a given socket."""

from __future__ import annotations

import asyncio
import socket
import time

from test_http_server_support import (
    final,
    hello,
    is_closed,
    limits,
    on_uvloop,
    read_all,
    request,
)

from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import HttpServer


@on_uvloop
async def test_drain_closes_idle_lets_in_flight_finish_and_stops_accepting() -> None:
    started = asyncio.Event()

    async def slow(req: Request) -> Response:
        if req.path == "/slow":
            started.set()
            await asyncio.sleep(0.3)
        return Response(200, body=b"done")

    server = HttpServer(slow, limits())
    await server.start()
    port = server.port
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    idle_w.write(request())
    await asyncio.wait_for(idle_r.readuntil(b"done"), 2)
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
    busy_w.write(request(target="/slow"))
    await started.wait()
    assert server.connections == 2 and server.in_flight == 1

    drain = asyncio.create_task(server.drain(5))
    assert await is_closed(idle_r, 1)  # idle: closed at once
    raw = await read_all(busy_r, 2)
    response = final(raw)[0]
    assert response.body == b"done"
    assert response.header(b"connection") == b"close"  # then its connection closes
    await asyncio.wait_for(drain, 2)
    assert server.connections == 0 and server.in_flight == 0
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        pass
    else:
        w.close()
        raise AssertionError("the drained server still accepts connections")
    idle_w.close()
    busy_w.close()


@on_uvloop
async def test_drain_force_closes_what_is_left_at_the_timeout() -> None:
    cancelled = asyncio.Event()

    async def stuck(req: Request) -> Response:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(200)

    server = HttpServer(stuck, limits())
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await server.drain(0.3)
    assert 0.25 <= time.monotonic() - started < 2
    assert cancelled.is_set()
    assert await is_closed(reader, 1)
    assert server.connections == 0 and server.in_flight == 0
    writer.close()


@on_uvloop
async def test_set_handler_swaps_for_new_requests_only() -> None:
    release = asyncio.Event()

    async def old(req: Request) -> Response:
        await release.wait()
        return Response(200, body=b"old")

    async def new(req: Request) -> Response:
        return Response(200, body=b"new")

    server = HttpServer(old, limits())
    await server.start()
    r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
    w1.write(request())
    await asyncio.sleep(0.05)
    server.set_handler(new)
    r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
    w2.write(request())
    assert (await asyncio.wait_for(r2.readuntil(b"new"), 2)).endswith(b"new")
    release.set()
    assert (await asyncio.wait_for(r1.readuntil(b"old"), 2)).endswith(b"old")
    # the old connection's next request uses the new handler
    w1.write(request())
    assert (await asyncio.wait_for(r1.readuntil(b"new"), 2)).endswith(b"new")
    w1.close()
    w2.close()
    await server.drain(1)


@on_uvloop
async def test_reuse_port_and_given_socket() -> None:
    first = HttpServer(hello, limits(), reuse_port=True)
    await first.start()
    second = HttpServer(hello, limits(), port=first.port, reuse_port=True)
    await second.start()  # two workers on one port, as with one process per core
    assert second.port == first.port
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    third = HttpServer(hello, limits(), sock=sock)
    await third.start()
    assert third.port == sock.getsockname()[1]
    for server in (first, third):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request())
        await asyncio.wait_for(reader.readuntil(b"Hello, World!"), 2)
        writer.close()
    for server in (first, second, third):
        await server.drain(0.5)
