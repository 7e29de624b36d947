"""HttpServer against hostile bytes, each sent exactly over a raw connection: smuggling
ambiguities, malformed framing, header/URL/body limits. Every rejection is problem+json
with ``connection: close`` and the connection is closed after it; no handler completes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from test_http_server_support import (
    Parsed,
    assert_problem,
    final,
    is_closed,
    on_uvloop,
    request,
    serve,
)

from sampan.http.body import BodyTooLarge
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.http.server import MAX_PIPELINE
from sampan.http.streaming_body import StreamingBody

H = b"Host: t\r\n"


async def _rejected(data: bytes | Sequence[bytes], status: int, **limits: int) -> None:
    """``data`` must be answered ``status`` (problem+json, close), and the handler never gets
    a request it can complete (body-framing errors reach it as a failing body read)."""
    calls: list[bytes] = []

    async def handler(req: Request) -> Response:
        await req.body.read()
        calls.append(req.raw_target)
        return Response(200, body=b"ok")

    async with serve(handler, **limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for piece in [data] if isinstance(data, bytes) else data:
            writer.write(piece)
        raw = await asyncio.wait_for(reader.readuntil(b"}"), 3)
        responses = final(raw)
        assert len(responses) == 1, raw
        assert_problem(responses[0], status)
        assert await is_closed(reader), "the connection must close after an error"
        assert calls == []
        writer.close()


SMUGGLING = {
    "cl-te": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nG",
    "te-cl": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"8\r\nSMUGGLED\r\n0\r\n\r\n",
    "duplicate-cl-equal": b"POST / HTTP/1.1\r\n"
    + H
    + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n"
    b"hello",
    "duplicate-cl-different": b"POST / HTTP/1.1\r\n"
    + H
    + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-plus": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello",
    "cl-hex": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello",
    "cl-negative": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    "cl-overflow": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n",
    "te-chunked-chunked": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked, chunked\r\n\r\n"
    b"0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\n",
    "te-in-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n",
    "bare-lf-line-end": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\nX-B: b\r\n\r\n",
    "bare-lf-request-line": b"GET / HTTP/1.1\n" + H + b"\r\n",
    "obs-fold-space": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n\tb\r\n\r\n",
    "control-in-name": b"GET / HTTP/1.1\r\n" + H + b"X\x01A: a\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n",
    "chunk-size-letters": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk-size-negative": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n",
    "chunk-size-0x": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\n",
    "chunk-size-space": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n",
    "chunk-missing-crlf": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-method": b"G\x01T / HTTP/1.1\r\n" + H + b"\r\n",
    "lowercase-method": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
    "control-in-target": b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n",
    "upgrade-with-body": b"POST / HTTP/1.1\r\n"
    + H
    + b"Connection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n\r\nx",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_ambiguous_or_malformed_request_is_a_400(name: str) -> None:
    status = 400

    @on_uvloop
    async def run() -> None:
        await _rejected(SMUGGLING[name], status)

    run()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nabc", 501),
        (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
        (b"GET / HTTP/1.9\r\n" + H + b"\r\n", 400),
        (b"GET /\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\n" + H + b"Expect: teapot\r\nContent-Length: 1\r\n\r\nx", 417),
    ],
    ids=["te-gzip", "te-gzip-chunked", "http2", "http19", "http09", "expect-unknown"],
)
def test_unsupported_protocol_features(data: bytes, status: int) -> None:
    on_uvloop(_rejected)(data, status)


@on_uvloop
async def test_a_smuggled_second_request_never_reaches_the_handler() -> None:
    calls: list[bytes] = []

    async def handler(req: Request) -> Response:
        await req.body.read()
        calls.append(req.raw_target)
        return Response(200, body=b"ok")

    async with serve(handler) as server:
        for attack in (SMUGGLING["cl-te"], SMUGGLING["te-cl"]):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(attack + b"GET /admin HTTP/1.1\r\n" + H + b"\r\n")
            raw = await asyncio.wait_for(reader.read(), 3)
            assert raw.count(b"HTTP/1.1 ") == 1
            writer.close()
        assert calls == []


# -- limits at their exact boundaries ------------------------------------------------------------


def _head_of_size(size: int, url: str = "/") -> bytes:
    """A canonical GET whose head (request line to blank line) is exactly ``size`` bytes."""
    base = request(target=url, headers=[("Host", "t"), ("X-Pad", "")])
    pad = size - len(base)
    assert pad >= 0
    return request(target=url, headers=[("Host", "t"), ("X-Pad", "p" * pad)])


async def _status_of(port: int, data: bytes) -> Parsed:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    writer.close()
    return final(head + b"\r\n")[0] if b"content-length: 0" in head else _parse_head(head)


def _parse_head(head: bytes) -> Parsed:
    status = int(head.split(b" ", 2)[1])
    headers = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:] if line]
    return Parsed(status, [(k, v) for k, v in headers])


async def _ok(req: Request) -> Response:
    return Response(200, body=b"ok")


@on_uvloop
async def test_header_bytes_limit_is_exact() -> None:
    async with serve(_ok, max_header_bytes=1024) as server:
        assert len(_head_of_size(1024)) == 1024
        assert (await _status_of(server.port, _head_of_size(1024))).status == 200
        assert (await _status_of(server.port, _head_of_size(1025))).status == 431


@on_uvloop
async def test_header_count_limit_is_exact() -> None:
    async with serve(_ok, max_header_count=5) as server:
        five = request(headers=[("Host", "t")] + [(f"X-{i}", "v") for i in range(4)])
        six = request(headers=[("Host", "t")] + [(f"X-{i}", "v") for i in range(5)])
        assert (await _status_of(server.port, five)).status == 200
        assert (await _status_of(server.port, six)).status == 431


@on_uvloop
async def test_url_limit_is_exact() -> None:
    async with serve(_ok, max_url_bytes=100) as server:
        assert (await _status_of(server.port, request(target="/" + "u" * 99))).status == 200
        assert (await _status_of(server.port, request(target="/" + "u" * 100))).status == 414


@on_uvloop
async def test_oversized_requests_get_431_and_414_problems() -> None:
    await _rejected(_head_of_size(2000), 431, max_header_bytes=1024)
    await _rejected(request(target="/" + "u" * 200), 414, max_url_bytes=100)
    # one endless header line in small pieces: refused long before it ends
    endless = [b"GET / HTTP/1.1\r\n" + H + b"X-Long: "] + [b"a" * 1000] * 100
    await _rejected(endless, 431, max_header_bytes=1024, max_url_bytes=1024)
    # a chunked trailer section counts like a head
    trailer = (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        + b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(20))
        + b"\r\n"
    )

    calls = 0

    async def reads(req: Request) -> Response:
        nonlocal calls
        calls += 1
        await req.body.read()
        return Response(200)

    async with serve(reads, max_header_bytes=1024) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(trailer)
        raw = await asyncio.wait_for(reader.read(), 3)
        assert_problem(final(raw)[0], 400)  # the handler saw a broken body
        writer.close()


@on_uvloop
async def test_body_limit_set_by_the_handler() -> None:
    async def limited(req: Request) -> Response:
        body = req.body
        assert isinstance(body, StreamingBody)
        body.limit = 10
        if body.length is not None and body.length > body.limit:
            return problem(413, "Content Too Large", "at most 10 bytes")
        try:
            data = b"".join([chunk async for chunk in body.chunks()])
        except BodyTooLarge as exc:
            return problem(413, "Content Too Large", f"at most {exc.limit} bytes")
        return Response(200, body=data)

    async with serve(limited) as server:
        fits = request("POST", "/", [("Host", "t"), ("Content-Length", "10")], b"0123456789")
        assert (await _status_of(server.port, fits)).status == 200
        declared = request("POST", "/", [("Host", "t"), ("Content-Length", "11")], b"01234567890")
        assert (await _status_of(server.port, declared)).status == 413
        chunked = request(
            "POST",
            "/",
            [("Host", "t"), ("Transfer-Encoding", "chunked")],
            b"6\r\n012345\r\n6\r\n012345\r\n0\r\n\r\n",
        )
        assert (await _status_of(server.port, chunked)).status == 413


@on_uvloop
async def test_body_too_large_escaping_the_handler_is_a_413() -> None:
    async def careless(req: Request) -> Response:
        await req.body.read(limit=4)
        return Response(200)

    async with serve(careless) as server:
        data = request("POST", "/", [("Host", "t"), ("Content-Length", "5")], b"hello")
        assert (await _status_of(server.port, data)).status == 413


@on_uvloop
async def test_pipeline_depth_is_bounded() -> None:
    gate = asyncio.Event()
    calls = 0

    async def slow(req: Request) -> Response:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Response(200, body=b"x")

    async with serve(slow) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request() * (MAX_PIPELINE + 40))
        await asyncio.sleep(0.2)
        gate.set()
        raw = await asyncio.wait_for(reader.read(), 3)  # the server closes after the queue
        assert raw.count(b"HTTP/1.1 200") == calls == MAX_PIPELINE + 1
        writer.close()
