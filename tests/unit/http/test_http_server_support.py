"""Helpers shared by the HttpServer tests (no tests here): a server on uvloop, a raw client
that sends exact bytes, and a response parser that splits a byte stream into responses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
import uvloop

from sampan.gateway.config import LimitsConfig
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import Handler, HttpServer


def on_uvloop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop loop, the production loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return run


def limits(**overrides: Any) -> LimitsConfig:
    return LimitsConfig(**overrides)


@contextlib.asynccontextmanager
async def serve(handler: Handler, **overrides: Any) -> AsyncIterator[HttpServer]:
    server = HttpServer(handler, limits(**overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.drain(0.5)


async def hello(request: Request) -> Response:
    return Response(200, Headers([(b"content-type", b"text/plain")]), b"Hello, World!")


async def echo(request: Request) -> Response:
    data = await request.body.read()
    return Response(200, Headers([(b"x-path", request.raw_target)]), data)


async def exchange(
    port: int,
    pieces: bytes | Sequence[bytes],
    *,
    pause: float = 0.0,
    wait: float = 3.0,
    shut_write: bool = False,
) -> bytes:
    """Send ``pieces`` (with ``pause`` seconds between them), read until the server closes
    or ``wait`` seconds pass; returns everything read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate([pieces] if isinstance(pieces, bytes) else pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        if shut_write and writer.can_write_eof():
            writer.write_eof()
        return await read_all(reader, wait)
    finally:
        writer.close()


async def read_all(reader: asyncio.StreamReader, wait: float) -> bytes:
    """Read until EOF, a reset, or ``wait`` seconds (whatever came so far)."""
    out = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return bytes(out)
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except (TimeoutError, ConnectionError):
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


async def is_closed(reader: asyncio.StreamReader, wait: float = 2.0) -> bool:
    """True once the server closed the connection (EOF or reset) within ``wait`` seconds."""
    try:
        data = await asyncio.wait_for(reader.read(65536), wait)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


@dataclass
class Parsed:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunks: int = 0

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def header_names(self) -> list[bytes]:
        return [key.lower() for key, _ in self.headers]

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class _Collector:
    responses: list[Parsed] = field(default_factory=list)
    current: Parsed | None = None
    parser: Any = None

    def on_message_begin(self) -> None:
        self.current = Parsed(0, [])

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_chunk_header(self) -> None:
        assert self.current is not None
        self.current.chunks += 1

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.responses.append(self.current)
        self.current = None


def parse_responses(raw: bytes, *, eof: bool = True) -> list[Parsed]:
    """Split a server's byte stream into responses (1xx included). Raises on malformed
    framing; a close-delimited body is completed by ``eof``."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    parser.feed_data(raw)
    if eof and collector.current is not None and collector.current.status:
        # close-delimited body (HTTP/1.0 streaming): the end of the stream ends it
        collector.responses.append(collector.current)
    return collector.responses


def final(raw: bytes) -> list[Parsed]:
    """The final (non-1xx) responses in ``raw``."""
    return [r for r in parse_responses(raw) if r.status >= 200]


def request(
    method: str = "GET",
    target: str = "/",
    headers: Sequence[tuple[str, str]] = (("Host", "t"),),
    body: bytes = b"",
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_problem(response: Parsed, status: int) -> None:
    assert response.status == status, (response.status, response.body)
    assert response.header(b"content-type") == b"application/problem+json"
    assert response.header(b"connection") == b"close"
    payload = response.json()
    assert payload["status"] == status
    assert payload["title"]
