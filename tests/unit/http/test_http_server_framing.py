"""HttpServer framing: keep-alive, pipelining order, chunked bodies both ways, HEAD/204/304,
hop-by-hop headers, handler failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from test_http_server_support import (
    assert_problem,
    echo,
    exchange,
    final,
    hello,
    is_closed,
    on_uvloop,
    request,
    serve,
)

from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response


@on_uvloop
async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serve(hello) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(3):
            writer.write(request())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"content-length: 13\r\n" in head
            assert b"connection" not in head
            assert await reader.readexactly(13) == b"Hello, World!"
        assert server.connections == 1
        writer.close()


@on_uvloop
async def test_pipelined_requests_are_answered_in_order() -> None:
    async def slow_first(req: Request) -> Response:
        if req.path == "/1":
            await asyncio.sleep(0.1)
        body = await req.body.read()
        return Response(200, body=req.path.encode() + b":" + body)

    async with serve(slow_first) as server:
        data = b"".join(
            [
                request(target="/1"),
                request("POST", "/2", [("Host", "t"), ("Content-Length", "3")], b"abc"),
                request(
                    "POST",
                    "/3",
                    [("Host", "t"), ("Transfer-Encoding", "chunked")],
                    b"2\r\nxy\r\n0\r\n\r\n",
                ),
                request(target="/4", headers=[("Host", "t"), ("Connection", "close")]),
            ]
        )
        responses = final(await exchange(server.port, data))
        assert [r.body for r in responses] == [b"/1:", b"/2:abc", b"/3:xy", b"/4:"]
        assert responses[-1].header(b"connection") == b"close"


@on_uvloop
async def test_chunked_request_body_in_many_pieces() -> None:
    async with serve(echo) as server:
        body = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
        head = request("POST", "/e", [("Host", "t"), ("Transfer-Encoding", "chunked")])
        raw = head + body
        pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
        responses = final(await exchange(server.port, pieces, wait=1.0))
        assert responses[0].body == b"hello world"


@on_uvloop
async def test_iterator_body_is_chunked_and_handler_length_is_honoured() -> None:
    async def stream(req: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b"ab"
            yield b""  # must not end the chunked body early
            yield b"cd"

        headers = Headers()
        if req.path == "/sized":
            headers.add(b"content-length", b"4")
        return Response(200, headers, gen())

    async with serve(stream) as server:
        data = request(target="/chunked") + request(target="/sized")
        raw = await exchange(server.port, data, wait=0.5)
        chunked, sized = final(raw)
        assert chunked.header(b"transfer-encoding") == b"chunked"
        assert chunked.header(b"content-length") is None
        assert chunked.body == b"abcd" and chunked.chunks == 3  # two data chunks + terminator
        assert (
            sized.header(b"content-length") == b"4" and sized.header(b"transfer-encoding") is None
        )
        assert sized.body == b"abcd"


@on_uvloop
async def test_iterator_longer_than_declared_length_closes_the_connection() -> None:
    async def liar(req: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b"abcdef"

        return Response(200, Headers([(b"content-length", b"3")]), gen())

    async with serve(liar) as server:
        raw = await exchange(server.port, request() + request())
        assert raw.count(b"HTTP/1.1 200") == 1
        assert raw.endswith(b"\r\n\r\nabc")


@on_uvloop
async def test_head_204_304_carry_no_body() -> None:
    async def various(req: Request) -> Response:
        if req.path == "/204":
            return Response(204, Headers([(b"content-length", b"10")]), b"ignored")
        if req.path == "/304":
            return Response(304, Headers([(b"etag", b'"x"')]), b"")
        return Response(200, body=b"0123456789")

    async with serve(various) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request("HEAD", "/"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length: 10\r\n" in head
        writer.write(request("GET", "/204"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204") and b"content-length" not in head
        writer.write(request("GET", "/304"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 304") and b'etag: "x"' in head
        # nothing followed any of the heads: the next bytes are the next response
        writer.write(request("GET", "/"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(10) == b"0123456789"
        writer.close()


@on_uvloop
async def test_handler_framing_headers_are_replaced_by_the_servers() -> None:
    async def sneaky(req: Request) -> Response:
        headers = Headers(
            [
                (b"connection", b"close, x-secret"),
                (b"keep-alive", b"timeout=1"),
                (b"transfer-encoding", b"chunked"),
                (b"content-length", b"99"),
                (b"Content-Length", b"98"),  # wrong case must not slip through either
                (b"upgrade", b"h2c"),
                (b"x-kept", b"yes"),
            ]
        )
        return Response(200, headers, b"ok")

    async with serve(sneaky) as server:
        response = final(await exchange(server.port, request(), wait=0.5))[0]
        assert response.header_names() == [b"x-kept", b"content-length"]
        assert response.header(b"content-length") == b"2"
        assert response.body == b"ok"


@on_uvloop
async def test_handler_exception_is_a_500_problem_and_the_connection_survives() -> None:
    async def broken(req: Request) -> Response:
        if req.path == "/boom":
            raise RuntimeError("boom")
        return Response(200, body=b"fine")

    async with serve(broken) as server:
        raw = await exchange(server.port, request(target="/boom") + request(), wait=0.5)
        boom, fine = final(raw)
        assert boom.status == 500
        assert boom.header(b"content-type") == b"application/problem+json"
        assert boom.json()["status"] == 500
        assert fine.body == b"fine"
        assert server.in_flight == 0


@on_uvloop
async def test_header_injection_from_a_handler_becomes_a_500() -> None:
    async def inject(req: Request) -> Response:
        return Response(200, Headers([(b"x-a", b"1\r\nset-cookie: evil=1")]), b"x")

    async with serve(inject) as server:
        raw = await exchange(server.port, request())
        assert b"evil" not in raw
        assert_problem(final(raw)[0], 500)


@on_uvloop
async def test_connection_close_request_gets_close_and_later_bytes_are_ignored() -> None:
    calls = 0

    async def count(req: Request) -> Response:
        nonlocal calls
        calls += 1
        return Response(200, body=b"x")

    async with serve(count) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(headers=[("Host", "t"), ("Connection", "close")]) + request())
        raw = await reader.read(65536)
        assert raw.count(b"HTTP/1.1") == 1 and b"connection: close" in raw
        assert await is_closed(reader)
        assert calls == 1
        writer.close()


@on_uvloop
async def test_absolute_form_target_and_query_split() -> None:
    seen: list[tuple[str, bytes, bytes]] = []

    async def record(req: Request) -> Response:
        seen.append((req.path, req.query, req.raw_target))
        return Response(204)

    async with serve(record) as server:
        data = request(target="http://example.com/a/b?x=1#frag") + request(target="/p?q=%20")
        await exchange(server.port, data, wait=0.3)
        assert seen == [
            ("/a/b", b"x=1", b"http://example.com/a/b?x=1#frag"),
            ("/p", b"q=%20", b"/p?q=%20"),
        ]
