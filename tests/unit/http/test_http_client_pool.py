"""ConnectionPool: keep-alive reuse, idle limits and timeouts, bodiless responses, stale
connections retried once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_http_client_fakes import (
    SeenRequest,
    keep_alive,
    read_request,
    response,
    upstream,
)

from sampan.http.body import BytesBody
from sampan.http.client import ConnectionPool, Endpoint, UpstreamError
from sampan.http.headers import Headers

T = {"connect_timeout": 2.0, "read_timeout": 2.0, "write_timeout": 2.0}


def ep(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port)


async def get(pool: ConnectionPool, port: int, target: bytes = b"/", **kw: object) -> bytes:
    resp = await pool.request(ep(port), "GET", target, Headers(), **T)  # type: ignore[arg-type]
    return await resp.body.read()


async def test_keep_alive_reuses_one_connection() -> None:
    seen: list[SeenRequest] = []
    async with upstream(keep_alive(lambda r: response(200, b"ok:" + r.target), seen)) as up:
        pool = ConnectionPool()
        try:
            for i in range(5):
                assert await get(pool, up.port, b"/n%d" % i) == b"ok:/n%d" % i
            assert up.connections == 1
            stats = pool.stats()
            assert stats["created"] == 1
            assert stats["reused"] == 4
            assert stats["idle"] == 1
            assert stats["open"] == 1
        finally:
            await pool.close()
    assert seen[0].header(b"host") == b"127.0.0.1:%d" % up.port
    assert pool.stats()["open"] == 0


async def test_fast_path_keeps_small_body_as_bytes() -> None:
    async with upstream(keep_alive(lambda r: response(200, b'{"a":1}'))) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), "GET", b"/", Headers(), **T)
            assert resp.content == b'{"a":1}'
            assert resp.status == 200
            assert resp.http_version == "1.1"
            assert resp.headers.get(b"content-length") == b"7"
            # Already back in the pool before the body is even read.
            assert pool.stats()["idle"] == 1
            chunks = [c async for c in resp.body.chunks()]
            assert chunks == [b'{"a":1}']
        finally:
            await pool.close()


async def test_concurrent_requests_open_parallel_connections_then_reuse() -> None:
    async def slow(r: SeenRequest) -> bytes:
        await asyncio.sleep(0.05)
        return response(200, b"x")

    async with upstream(keep_alive(slow)) as up:
        pool = ConnectionPool()
        try:
            results = await asyncio.gather(*(get(pool, up.port) for _ in range(4)))
            assert results == [b"x"] * 4
            assert pool.stats()["created"] == 4
            results = await asyncio.gather(*(get(pool, up.port) for _ in range(4)))
            assert pool.stats()["created"] == 4
            assert pool.stats()["reused"] == 4
        finally:
            await pool.close()


async def test_idle_connections_are_capped_per_endpoint() -> None:
    async def slow(r: SeenRequest) -> bytes:
        await asyncio.sleep(0.05)
        return response(200, b"x")

    async with upstream(keep_alive(slow)) as up:
        pool = ConnectionPool(max_idle_per_endpoint=2)
        try:
            await asyncio.gather(*(get(pool, up.port) for _ in range(5)))
            await asyncio.sleep(0.01)
            stats = pool.stats()
            assert stats["created"] == 5
            assert stats["idle"] == 2
            assert stats["open"] == 2
        finally:
            await pool.close()


async def test_idle_timeout_closes_connections() -> None:
    async with upstream(keep_alive(lambda r: response(200, b"x"))) as up:
        pool = ConnectionPool(idle_timeout=0.1)
        try:
            await get(pool, up.port)
            assert pool.stats()["idle"] == 1
            await asyncio.sleep(0.3)
            assert pool.stats()["idle"] == 0
            assert pool.stats()["open"] == 0
            await get(pool, up.port)
            assert pool.stats()["created"] == 2
        finally:
            await pool.close()


async def test_connection_close_from_either_side_is_not_reused() -> None:
    async with upstream(
        keep_alive(lambda r: response(200, b"x", [(b"connection", b"close")]))
    ) as up:
        pool = ConnectionPool()
        try:
            await get(pool, up.port)
            await get(pool, up.port)
            assert pool.stats()["created"] == 2
            assert pool.stats()["reused"] == 0
        finally:
            await pool.close()
    async with upstream(keep_alive(lambda r: response(200, b"x"))) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(
                ep(up.port), "GET", b"/", Headers([(b"connection", b"close")]), **T
            )
            assert resp.keep_alive is False
            await resp.body.read()
            await asyncio.sleep(0.01)
            assert pool.stats()["idle"] == 0
        finally:
            await pool.close()


async def test_http10_close_delimited_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\npart1-")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part2")
        await writer.drain()
        writer.close()

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), "GET", b"/", Headers(), **T)
            assert resp.http_version == "1.0"
            assert await resp.body.read() == b"part1-part2"
            assert pool.stats()["idle"] == 0
        finally:
            await pool.close()


@pytest.mark.parametrize(
    ("method", "status", "extra"),
    [
        ("HEAD", 200, [(b"content-length", b"1234")]),
        ("HEAD", 200, []),
        ("GET", 204, []),
        ("GET", 304, [(b"etag", b'"x"')]),
    ],
)
async def test_bodiless_responses_and_reuse(
    method: str, status: int, extra: list[tuple[bytes, bytes]]
) -> None:
    def respond(r: SeenRequest) -> bytes:
        if r.target == b"/after":
            return response(200, b"after")
        return response(status, b"", extra, length=False)

    async with upstream(keep_alive(respond)) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), method, b"/", Headers(), **T)
            assert resp.status == status
            assert await resp.body.read() == b""
            if extra:
                assert resp.headers.get(extra[0][0]) == extra[0][1]
            # The connection stays in sync: the next response is read correctly.
            assert await get(pool, up.port, b"/after") == b"after"
            assert up.connections == 1
        finally:
            await pool.close()


async def test_informational_responses_are_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
        writer.write(response(201, b"made"))
        await writer.drain()
        await reader.read()

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            resp = await pool.request(ep(up.port), "POST", b"/", Headers(), BytesBody(b"data"), **T)
            assert resp.status == 201
            assert resp.headers.get(b"link") is None
            assert await resp.body.read() == b"made"
        finally:
            await pool.close()


async def test_request_framing_headers() -> None:
    seen: list[SeenRequest] = []
    async with upstream(keep_alive(lambda r: response(200), seen)) as up:
        pool = ConnectionPool()
        try:
            hdrs = Headers([(b"host", b"api.example"), (b"content-length", b"999")])
            await (await pool.request(ep(up.port), "POST", b"/a", hdrs, None, **T)).body.read()
            await (await pool.request(ep(up.port), "GET", b"/b", Headers(), None, **T)).body.read()
            body = BytesBody(b"abc")
            await (await pool.request(ep(up.port), "PUT", b"/c", Headers(), body, **T)).body.read()
        finally:
            await pool.close()
    post, get_, put = seen
    assert post.header(b"host") == b"api.example"
    assert post.all(b"content-length") == [b"0"]
    assert get_.header(b"content-length") is None
    assert put.body == b"abc"
    assert put.all(b"content-length") == [b"3"]


async def test_header_injection_is_refused() -> None:
    pool = ConnectionPool()
    with pytest.raises(ValueError, match="CR, LF"):
        await pool.request(ep(1), "GET", b"/", Headers([(b"x-a", b"1\r\nx-b: 2")]), **T)
    with pytest.raises(ValueError):
        await pool.request(ep(1), "GET", b"/ HTTP/1.1\r\nx: y", Headers(), **T)
    await pool.close()


async def _stale_pair(
    body_factory: object, method: str = "PUT", headers: Headers | None = None
) -> tuple[int, int, dict[str, int], list[SeenRequest]]:
    """An upstream that answers once then closes the connection *without* telling us
    (keep-alive promised), so the pooled connection is stale on the next request."""
    seen: list[SeenRequest] = []
    close_next = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await read_request(reader)
        assert first is not None
        seen.append(first)
        writer.write(response(200, b"first"))
        await writer.drain()
        await close_next.wait()
        # Read the next request, then slam the door before answering.
        await read_request(reader)
        writer.transport.abort()

    async def second_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handler(reader, writer)

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            assert await get(pool, up.port) == b"first"
            close_next.set()
            body = body_factory() if callable(body_factory) else None
            try:
                resp = await pool.request(
                    ep(up.port), method, b"/", headers or Headers(), body, **T
                )
                status = resp.status
            except UpstreamError as exc:
                status = -1 if exc.kind == "reset" else -2
            return status, up.connections, pool.stats(), seen
        finally:
            await pool.close()


async def test_stale_connection_is_retried_once_for_replayable_bodies() -> None:
    status, connections, stats, _ = await _stale_pair(lambda: BytesBody(b"again"))
    # The retry went to a fresh connection, which answered "first" (its first request).
    assert status == 200
    assert connections == 2
    assert stats["retried"] == 1


async def test_stale_connection_is_not_retried_for_a_non_idempotent_method() -> None:
    """The upstream may have acted on a POST before the reset: it is not sent twice."""
    status, connections, stats, _ = await _stale_pair(lambda: BytesBody(b"again"), "POST")
    assert status == -1  # UpstreamError(kind="reset"), surfaced to the caller (502)
    assert connections == 1
    assert stats["retried"] == 0


async def test_stale_connection_is_retried_for_a_post_with_an_idempotency_key() -> None:
    """The key is the sender's promise that a second copy is harmless (the gateway's
    idempotency plugin, for one, answers it from its store)."""
    key = Headers([(b"idempotency-key", b"DH00000042")])
    status, connections, stats, seen = await _stale_pair(lambda: BytesBody(b"again"), "POST", key)
    assert status == 200
    assert connections == 2
    assert stats["retried"] == 1
    resent = seen[-1]  # what the fresh connection received: the same POST, key and body
    assert (resent.method, resent.body) == ("POST", b"again")
    assert resent.header(b"idempotency-key") == b"DH00000042"


async def test_stale_connection_with_streamed_body_is_not_retried() -> None:
    class OnceBody:
        length = None

        async def chunks(self) -> AsyncIterator[bytes]:
            yield b"stream"

        async def read(self, limit: int | None = None) -> bytes:
            return b"stream"

    status, _, stats, _ = await _stale_pair(OnceBody)
    assert status == -1  # UpstreamError(kind="reset")
    assert stats["retried"] == 0


async def test_idle_connection_closed_by_upstream_is_noticed_before_reuse() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"once"))
        await writer.drain()
        writer.close()  # closes while we hold it idle

    async with upstream(handler) as up:
        pool = ConnectionPool()
        try:
            assert await get(pool, up.port) == b"once"
            await asyncio.sleep(0.05)
            assert pool.stats()["idle"] == 0  # connection_lost took it out of the pool
            assert await get(pool, up.port) == b"once"
            assert pool.stats()["retried"] == 0
            assert up.connections == 2
        finally:
            await pool.close()


async def test_pool_refuses_after_close() -> None:
    pool = ConnectionPool()
    await pool.close()
    with pytest.raises(RuntimeError):
        await pool.request(ep(1), "GET", b"/", Headers(), **T)
