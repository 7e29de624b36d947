"""The request body the server hands to handlers: streamed as it arrives, with flow control.

The server feeds bytes in as the parser produces them; the handler takes them out with
``chunks()`` or ``read()``. When more than ``HIGH_WATER`` bytes wait unread the server stops
reading the socket (TCP pushes back on the client) and starts again once the handler has
taken the buffer down to ``LOW_WATER`` — so a 1 GiB upload through a streaming handler costs
a few hundred KiB, never the whole body.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from sampan.http.body import BodyTooLarge

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class BodyReadError(Exception):
    """The body cannot be read to its end; ``status`` is what the server answers if the
    handler lets the error escape (0: nobody to answer, the client is gone)."""

    status = 400
    title = "Bad Request"


class ClientDisconnected(BodyReadError):
    status = 0
    title = "Client Closed Request"


class BodyTimeout(BodyReadError):
    status = 408
    title = "Request Timeout"


class MalformedBody(BodyReadError):
    status = 400
    title = "Bad Request"


class BodyFlow(Protocol):
    """What the body asks of its connection (implemented by the server protocol)."""

    def body_pause(self) -> None:
        """Too much is buffered: stop reading the socket."""

    def body_resume(self) -> None:
        """The handler caught up: read the socket again."""

    def body_started(self, body: StreamingBody) -> None:
        """The handler asked for the body for the first time (sends ``100 Continue``)."""


class StreamingBody:
    """A request body fed by the server and read once by the handler.

    ``limit`` (bytes, ``None`` = no limit) is enforced by ``chunks()`` and ``read()``:
    a declared ``length`` over it fails before anything is read (and before ``100 Continue``
    is sent), a chunked body fails as soon as the running total passes it.
    """

    __slots__ = (
        "_chunks",
        "_data",
        "_done",
        "_error",
        "_flow",
        "_paused",
        "_started",
        "_waiter",
        "buffered",
        "expect_continue",
        "length",
        "limit",
        "peak_buffered",
        "received",
    )

    def __init__(
        self, length: int | None, limit: int | None, flow: BodyFlow, *, done: bool = False
    ) -> None:
        self.length = length
        self.limit = limit
        self.expect_continue = False
        self.buffered = 0  # bytes received and not yet taken by the handler
        self.peak_buffered = 0
        self.received = 0
        self._chunks: deque[bytes] = deque()
        self._done = done
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flow = flow
        self._paused = False
        self._started = False
        self._data: bytes | None = None

    @property
    def done(self) -> bool:
        """The whole body has been received (it may still sit in the buffer)."""
        return self._done

    @property
    def started(self) -> bool:
        return self._started

    # -- the server's side ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        size = self.buffered + len(data)
        self.buffered = size
        self.received += len(data)
        self.peak_buffered = max(self.peak_buffered, size)
        if size > HIGH_WATER and not self._paused:
            self._paused = True
            self._flow.body_pause()
        self._wake()

    def feed_eof(self) -> None:
        self._done = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        """Fail the readers (client gone, timeout, bad framing); ignored once complete."""
        if self._done or self._error is not None:
            return
        self._error = exc
        self._wake()

    def discard(self) -> None:
        """Drop what the handler left unread (the request is over); lifts a read pause."""
        self._chunks.clear()
        self.buffered = 0
        if self._paused:
            self._paused = False
            self._flow.body_resume()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the handler's side -----------------------------------------------------------------

    def _start(self, limit: int | None) -> None:
        if limit is not None and self.length is not None and self.length > limit:
            raise BodyTooLarge(limit)
        if not self._started:
            self._started = True
            if self.expect_continue and not self._done:
                self._flow.body_started(self)

    def _take(self) -> bytes:
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        if self._paused and self.buffered <= LOW_WATER:
            self._paused = False
            self._flow.body_resume()
        return chunk

    async def _next(self) -> bytes:
        """The next chunk; b"" at the end."""
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                return self._take()
            if self._done:
                return b""
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            await waiter

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._data is not None:  # read() kept it: replay
            self._start(self.limit)
            if self.limit is not None and len(self._data) > self.limit:
                raise BodyTooLarge(self.limit)
            if self._data:
                yield self._data
            return
        if self._started:
            raise RuntimeError("the request body was already consumed")
        limit = self.limit
        self._start(limit)
        total = 0
        while True:
            chunk = await self._next()
            if not chunk:
                return
            total += len(chunk)
            if limit is not None and total > limit:
                raise BodyTooLarge(limit)
            yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        if self.limit is not None and (limit is None or self.limit < limit):
            limit = self.limit
        if self._data is not None:
            if limit is not None and len(self._data) > limit:
                raise BodyTooLarge(limit)
            return self._data
        if self._started:
            raise RuntimeError("the request body was already consumed")
        self._start(limit)
        if self._done and self._error is None:  # common case: it all came with the head
            parts: list[bytes] = list(self._chunks)
            total = self.buffered
            self._chunks.clear()
            self.buffered = 0
            if self._paused:
                self._paused = False
                self._flow.body_resume()
            if limit is not None and total > limit:
                raise BodyTooLarge(limit)
        else:
            parts = []
            total = 0
            while True:
                chunk = await self._next()
                if not chunk:
                    break
                total += len(chunk)
                if limit is not None and total > limit:
                    raise BodyTooLarge(limit)
                parts.append(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._data = data
        return data

    def __repr__(self) -> str:
        return (
            f"StreamingBody(length={self.length}, limit={self.limit}, "
            f"received={self.received}, done={self._done})"
        )
