"""Every way an upstream fails maps to one UpstreamError kind (for the mesh's retry policy)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from test_http_client_fakes import read_request, response, upstream

from sampan.http.client import ConnectionPool, Endpoint, UpstreamError
from sampan.http.headers import Headers


def ep(port: int, tls: bool = False) -> Endpoint:
    return Endpoint("127.0.0.1", port, tls)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fail(
    port: int,
    *,
    tls: bool = False,
    body: object = None,
    read_body: bool = False,
    **timeouts: float,
) -> UpstreamError:
    t = {"connect_timeout": 1.0, "read_timeout": 1.0, "write_timeout": 1.0} | timeouts
    pool = ConnectionPool()
    try:
        with pytest.raises(UpstreamError) as info:
            resp = await pool.request(ep(port, tls), "POST", b"/", Headers(), body, **t)  # type: ignore[arg-type]
            if read_body:
                await resp.body.read()
        await asyncio.sleep(0)
        assert pool.stats()["idle"] == 0
        return info.value
    finally:
        await pool.close()


async def test_refused_is_connect() -> None:
    err = await fail(free_port())
    assert (err.kind, err.phase, err.before_response) == ("connect", "connect", True)


async def test_slow_handshake_is_a_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the TLS ClientHello

    async with upstream(silent) as up:
        err = await fail(up.port, tls=True, connect_timeout=0.2)
    assert (err.kind, err.phase) == ("timeout", "connect")


async def test_no_answer_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with upstream(silent) as up:
        loop = asyncio.get_running_loop()
        started = loop.time()
        err = await fail(up.port, read_timeout=0.2)
        assert 0.15 < loop.time() - started < 1.0
    assert (err.kind, err.phase, err.before_response) == ("timeout", "head", True)


async def test_stalled_body_is_a_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with upstream(stall) as up:
        err = await fail(up.port, read_timeout=0.2, read_body=True)
    assert (err.kind, err.phase, err.before_response) == ("timeout", "body", False)


async def test_upstream_not_reading_is_a_write_timeout() -> None:
    class Endless:
        length = None

        async def chunks(self) -> AsyncIterator[bytes]:
            for _ in range(10_000):
                yield b"x" * 65536

        async def read(self, limit: int | None = None) -> bytes:
            raise NotImplementedError

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with upstream(never_reads) as up:
        err = await fail(up.port, body=Endless(), write_timeout=0.2)
    assert (err.kind, err.phase) == ("timeout", "send")


async def test_close_before_answer_is_reset() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    async with upstream(hang_up) as up:
        err = await fail(up.port)
    assert (err.kind, err.before_response) == ("reset", True)


async def test_close_mid_body_is_reset() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async with upstream(cut) as up:
        err = await fail(up.port, read_body=True)
    assert (err.kind, err.phase, err.before_response) == ("reset", "body", False)


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-many: 1\r\n" * 300 + b"\r\n",
        # A head that never ends, sent in pieces: refused once past the limit.
        b"HTTP/1.1 200 OK\r\n" + b"x-slow: 0123456789\r\n" * 20_000,
    ],
)
async def test_invalid_response_is_protocol(garbage: bytes) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for start in range(0, len(garbage), 16384):
            writer.write(garbage[start : start + 16384])
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()

    async with upstream(bad) as up:
        err = await fail(up.port, read_body=True)
    assert err.kind == "protocol"


async def test_bytes_after_the_response_poison_the_connection() -> None:
    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # unasked
        await writer.drain()
        await reader.read()

    async with upstream(extra) as up:
        pool = ConnectionPool()
        try:
            r = await pool.request(
                ep(up.port),
                "GET",
                b"/",
                Headers(),
                None,
                connect_timeout=1,
                read_timeout=1,
                write_timeout=1,
            )
            assert await r.body.read() == b"ok"
            await asyncio.sleep(0.1)
            assert pool.stats()["idle"] == 0
        finally:
            await pool.close()


async def test_cancelled_request_does_not_return_the_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.3)
        writer.write(response(200, b"late"))
        await writer.drain()
        await reader.read()

    async with upstream(slow) as up:
        pool = ConnectionPool()
        try:
            task = asyncio.ensure_future(
                pool.request(
                    ep(up.port),
                    "GET",
                    b"/",
                    Headers(),
                    None,
                    connect_timeout=1,
                    read_timeout=1,
                    write_timeout=1,
                )
            )
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.01)
            assert pool.stats()["open"] == 0
        finally:
            await pool.close()
