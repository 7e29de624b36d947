"""HttpServer streaming: bounded memory for large uploads (read flow control), 100-continue,
HTTP/1.0 clients, streaming responses (SSE) and write backpressure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from test_http_server_support import (
    exchange,
    final,
    is_closed,
    on_uvloop,
    parse_responses,
    request,
    serve,
)

from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.streaming_body import HIGH_WATER, StreamingBody

MIB = 1024 * 1024


async def _upload(port: int, head: bytes, total: int, *, chunked: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    piece = b"x" * (256 * 1024)
    sent = 0
    while sent < total:
        if chunked:
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            writer.write(piece)
        sent += len(piece)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    return data


@on_uvloop
async def test_large_streamed_upload_keeps_buffered_bytes_bounded() -> None:
    stats: dict[str, int] = {}

    async def count(req: Request) -> Response:
        body = req.body
        assert isinstance(body, StreamingBody)
        body.limit = None  # this route streams without a limit
        total = chunks = 0
        async for chunk in body.chunks():
            total += len(chunk)
            chunks += 1
            if chunks % 16 == 0:
                await asyncio.sleep(0.001)  # a consumer slower than the network
        stats.update(total=total, chunks=chunks, peak=body.peak_buffered)
        return Response(200, body=b"%d" % total)

    async with serve(count) as server:
        size = 64 * MIB
        head = request("POST", "/up", [("Host", "t"), ("Content-Length", str(size))])
        await _upload(server.port, head, size, chunked=False)
        assert stats["total"] == size
        # the buffer never holds more than the high-water mark plus one socket read
        assert stats["peak"] <= HIGH_WATER + 512 * 1024, stats
        stats.clear()
        head = request("POST", "/up", [("Host", "t"), ("Transfer-Encoding", "chunked")])
        await _upload(server.port, head, 16 * MIB, chunked=True)
        assert stats["total"] == 16 * MIB
        assert stats["peak"] <= HIGH_WATER + 512 * 1024, stats


@on_uvloop
async def test_unread_body_pauses_reading_until_the_handler_reads() -> None:
    release = asyncio.Event()
    peak: list[int] = []

    async def late_reader(req: Request) -> Response:
        await release.wait()
        body = req.body
        assert isinstance(body, StreamingBody)
        peak.append(body.peak_buffered)
        data = await body.read(limit=None)
        return Response(200, body=b"%d" % len(data))

    async with serve(late_reader, max_body_bytes=32 * MIB) as server:
        size = 8 * MIB
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request("POST", "/", [("Host", "t"), ("Content-Length", str(size))]))
        writer.write(b"y" * size)
        await asyncio.sleep(0.3)  # the server stopped reading: the rest sits in the kernel
        release.set()
        await writer.drain()
        response = parse_responses(await asyncio.wait_for(reader.read(65536), 5), eof=False)
        assert response[0].body == b"%d" % size
        assert peak[0] <= HIGH_WATER + 512 * 1024
        writer.close()


@on_uvloop
async def test_100_continue_is_sent_when_the_handler_reads() -> None:
    async def reader_handler(req: Request) -> Response:
        return Response(200, body=await req.body.read())

    async with serve(reader_handler) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            request(
                "POST", "/", [("Host", "t"), ("Content-Length", "5"), ("Expect", "100-continue")]
            )
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200") and b"connection" not in head
        assert await reader.readexactly(5) == b"hello"
        writer.close()


@on_uvloop
async def test_100_continue_is_not_sent_when_the_handler_answers_without_reading() -> None:
    async def refuse(req: Request) -> Response:
        return Response(403, body=b"no")

    async with serve(refuse) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            request(
                "POST", "/", [("Host", "t"), ("Content-Length", "5"), ("Expect", "100-continue")]
            )
        )
        raw = await asyncio.wait_for(reader.readuntil(b"no"), 2)
        assert b"100 Continue" not in raw
        assert raw.startswith(b"HTTP/1.1 403") and b"connection: close" in raw
        assert await is_closed(reader)  # the body never came: the framing is unknown
        writer.close()


@on_uvloop
async def test_100_continue_over_the_limit_is_refused_before_continue() -> None:
    async def limited(req: Request) -> Response:
        body = req.body
        assert isinstance(body, StreamingBody)
        body.limit = 10
        await body.read()
        return Response(200)

    async with serve(limited) as server:
        raw = await exchange(
            server.port,
            request(
                "POST", "/", [("Host", "t"), ("Content-Length", "50"), ("Expect", "100-continue")]
            ),
        )
        assert b"100 Continue" not in raw
        assert final(raw)[0].status == 413


@on_uvloop
async def test_http10_gets_close_delimited_stream_and_keep_alive_only_when_asked() -> None:
    async def stream(req: Request) -> Response:
        if req.path == "/fixed":
            return Response(200, body=b"fixed")

        async def gen() -> AsyncIterator[bytes]:
            yield b"one,"
            yield b"two"

        return Response(200, body=gen())

    async with serve(stream) as server:
        raw = await exchange(server.port, request(target="/s", headers=[], version="1.0"))
        assert b"transfer-encoding" not in raw and b"content-length" not in raw
        assert b"connection: close" in raw and raw.endswith(b"\r\n\r\none,two")

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            request(target="/fixed", headers=[("Connection", "keep-alive")], version="1.0")
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert b"connection: keep-alive" in head and b"content-length: 5" in head
        assert await reader.readexactly(5) == b"fixed"
        writer.write(request(target="/fixed", headers=[], version="1.0"))
        rest = await asyncio.wait_for(reader.read(), 2)
        assert b"connection: close" in rest and rest.endswith(b"fixed")
        writer.close()


@on_uvloop
async def test_server_sent_events_are_written_as_they_come() -> None:
    tick = asyncio.Event()
    stopped = asyncio.Event()

    async def events(req: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"data: 1\n\n"
                await tick.wait()
                yield b"data: 2\n\n"
                await asyncio.Event().wait()  # an idle stream
                yield b"never"
            finally:
                stopped.set()

        return Response(200, body=gen())

    async with serve(events) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request())
        await asyncio.wait_for(reader.readuntil(b"data: 1\n\n\r\n"), 2)
        tick.set()
        await asyncio.wait_for(reader.readuntil(b"data: 2\n\n\r\n"), 2)
        writer.close()  # the client goes away: the idle generator is stopped
        await asyncio.wait_for(stopped.wait(), 2)
        await asyncio.sleep(0.05)
        assert server.in_flight == 0


@on_uvloop
async def test_streaming_response_respects_write_backpressure() -> None:
    produced = 0

    async def firehose(req: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            nonlocal produced
            block = b"z" * 65536
            for _ in range(2000):  # 128 MiB if nobody stopped it
                produced += len(block)
                yield block

        return Response(200, body=gen())

    async with serve(firehose, body_timeout=5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.transport.pause_reading()  # a client that does not read
        writer.write(request())
        await asyncio.sleep(0.5)
        # kernel buffers + the transport's high-water mark, not 128 MiB
        assert produced < 32 * MIB, produced
        writer.transport.resume_reading()
        total = 0
        with contextlib.suppress(TimeoutError):
            while total < 2000 * 65536:
                data = await asyncio.wait_for(reader.read(1 << 20), 5)
                if not data:
                    break
                total += len(data)
        assert total > 2000 * 65536  # everything arrived (plus the chunk framing)
        writer.close()
