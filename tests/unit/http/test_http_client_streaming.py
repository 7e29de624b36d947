"""Streaming both ways: chunked request and response bodies, incremental delivery, large
bodies with bounded memory, write backpressure. Runs on uvloop (the production loop)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator, Callable, Coroutine

import pytest
import uvloop
from test_http_client_fakes import SeenRequest, keep_alive, read_request, response, upstream

from sampan.http.client import ConnectionPool, Endpoint
from sampan.http.headers import Headers
from sampan.http.upstream_body import HIGH_WATER

T = {"connect_timeout": 2.0, "read_timeout": 5.0, "write_timeout": 5.0}


def on_uvloop(test: Callable[[], Coroutine[None, None, None]]) -> Callable[[], None]:
    """Run an async test on a fresh uvloop loop (pytest-asyncio uses the default loop)."""

    @functools.wraps(test)
    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(test(), 60))

    return run


class StreamBody:
    """A request body produced piece by piece (like the server's streamed body)."""

    def __init__(self, pieces: list[bytes], length: int | None = None) -> None:
        self.pieces = pieces
        self.length = length
        self.produced = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.produced += 1
            await asyncio.sleep(0)
            yield piece

    async def read(self, limit: int | None = None) -> bytes:
        return b"".join(self.pieces)


def ep(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port)


@on_uvloop
async def test_request_body_without_length_goes_chunked_and_with_length_as_is() -> None:
    seen: list[SeenRequest] = []
    async with upstream(keep_alive(lambda r: response(200, b"%d" % len(r.body)), seen)) as up:
        pool = ConnectionPool()
        try:
            body = StreamBody([b"ab", b"", b"cde"])
            resp = await pool.request(ep(up.port), "POST", b"/", Headers(), body, **T)
            assert await resp.body.read() == b"5"
            body2 = StreamBody([b"xy", b"z"], length=3)
            resp = await pool.request(ep(up.port), "PUT", b"/", Headers(), body2, **T)
            assert await resp.body.read() == b"3"
            assert up.connections == 1
        finally:
            await pool.close()
    assert seen[0].chunked and seen[0].body == b"abcde"
    assert seen[0].header(b"content-length") is None
    assert not seen[1].chunked and seen[1].body == b"xyz"


@on_uvloop
async def test_declared_length_mismatch_is_an_error_not_a_hang() -> None:
    async with upstream(keep_alive(lambda r: response(200))) as up:
        pool = ConnectionPool()
        try:
            from sampan.http.client import UpstreamError

            with pytest.raises(UpstreamError) as info:
                await pool.request(
                    ep(up.port), "PUT", b"/", Headers(), StreamBody([b"ab"], length=5), **T
                )
            assert info.value.kind == "protocol"
        finally:
            await pool.close()


@on_uvloop
async def test_chunked_response_streams_each_chunk_before_the_next_is_sent() -> None:
    step = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.wait_for(step.wait(), 5)
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), "GET", b"/", Headers(), **T)
            assert resp.content is None
            it = resp.body.chunks()
            assert await anext(it) == b"first"
            step.set()
            assert await anext(it) == b"second"
            with pytest.raises(StopAsyncIteration):
                await anext(it)
            await asyncio.sleep(0.01)
            assert pool.stats()["idle"] == 1  # read to the end -> back in the pool
        finally:
            await pool.close()


@on_uvloop
async def test_unread_body_is_discarded_by_aclose() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        await reader.read()

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), "GET", b"/", Headers(), **T)
            await resp.aclose()
            await asyncio.sleep(0.01)
            assert pool.stats()["created"] == 1
            assert pool.stats()["open"] == 0
        finally:
            await pool.close()


@on_uvloop
async def test_large_bodies_both_ways_with_bounded_buffering() -> None:
    """64 MiB up and 64 MiB down through the client; the response is read slowly so flow
    control must hold the upstream back instead of buffering it."""
    size = 64 * 1024 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB
    digest_up = hashlib.sha256()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length: %d" % size in head
        remaining = size
        while remaining:  # bounded by size
            data = await reader.read(min(remaining, 1 << 20))
            assert data
            digest_up.update(data)
            remaining -= len(data)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        await reader.read()

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            body = StreamBody([piece] * (size // len(piece)), length=size)
            resp = await pool.request(ep(up.port), "POST", b"/", Headers(), body, **T)
            assert resp.body.length == size
            got = 0
            digest_down = hashlib.sha256()
            peak = 0
            stream = resp.body._stream  # type: ignore[attr-defined]
            async for chunk in resp.body.chunks():
                got += len(chunk)
                digest_down.update(chunk)
                peak = max(peak, stream._buffered)
                if got < 4 * 1024 * 1024:
                    await asyncio.sleep(0.001)  # a slow reader at first
            assert got == size
            assert digest_down.digest() == hashlib.sha256(piece * (size // len(piece))).digest()
            # Buffered never grows past the high-water mark plus one socket read or so.
            assert peak < HIGH_WATER + 1024 * 1024
        finally:
            await pool.close()
    assert digest_up.digest() == hashlib.sha256(piece * (size // len(piece))).digest()


@on_uvloop
async def test_sse_events_arrive_one_by_one() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
        )
        writer.write(b"data: one\n\n")
        await writer.drain()
        await asyncio.wait_for(gate.wait(), 5)
        writer.write(b"data: two\n\n")
        await writer.drain()
        writer.close()

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), "GET", b"/events", Headers(), **T)
            it = resp.body.chunks()
            assert await anext(it) == b"data: one\n\n"
            gate.set()
            assert await anext(it) == b"data: two\n\n"
        finally:
            await pool.close()
