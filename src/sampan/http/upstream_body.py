"""What the caller of the upstream client reads: a streamed response body, or the raw byte
stream of an upgraded (101) connection, and the error both raise.

Both are fed by the connection's ``data_received`` and read by one consumer. Reading is
flow-controlled: past ``HIGH_WATER`` buffered bytes the connection stops reading from the
socket (so the upstream's TCP window closes and a slow client slows the upstream down) and
resumes below ``LOW_WATER``. Memory per stream is therefore bounded by about
``HIGH_WATER`` plus one socket read, whatever the body size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal, Protocol

from sampan.http.body import BodyTooLarge

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

ErrorKind = Literal["connect", "timeout", "reset", "protocol"]
Phase = Literal["connect", "send", "head", "body", "tunnel"]


class UpstreamError(Exception):
    """The upstream could not be used for this request.

    ``kind``: ``connect`` (refused, unresolvable, TLS handshake failed), ``timeout`` (connect,
    write or read timeout), ``reset`` (the connection closed or broke mid-exchange),
    ``protocol`` (the upstream's bytes are not valid HTTP/1.1).
    ``phase``: where it happened. ``before_response`` is True when no byte of the response
    had arrived — with ``phase`` in (``connect``, ``send``, ``head``) it tells a retry policy
    whether the upstream may have seen (``send``/``head``) or cannot have seen (``connect``)
    the request.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        phase: Phase,
        before_response: bool = True,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.phase: Phase = phase
        self.before_response = before_response


class StreamOwner(Protocol):
    """What a stream needs from the connection that feeds it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None: ...


class _Stream:
    """A one-consumer byte queue with a read timeout per wait."""

    __slots__ = ("_buffer", "_buffered", "_done", "_exc", "_owner", "_paused", "_waiter")

    def __init__(self, owner: StreamOwner | None) -> None:
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._exc: BaseException | None = None
        self._owner = owner
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- producer side (the connection) -------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self._owner is not None:
            self._paused = True
            self._owner.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._done = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._exc = exc
        self._wake()

    def detach(self) -> None:
        """The connection went back to the pool: the stream no longer controls it."""
        self._owner = None
        self._paused = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side --------------------------------------------------------------------

    def _pop(self) -> bytes:
        data = self._buffer.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < LOW_WATER:
            self._paused = False
            if self._owner is not None:
                self._owner.resume_reading()
        return data

    def _on_timeout(self, timeout: float, phase: Phase) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                UpstreamError(
                    "timeout",
                    f"no data from the upstream for {timeout:g}s",
                    phase=phase,
                    before_response=False,
                )
            )
        if self._owner is not None:
            self._owner.abort()

    async def _wait(self, max_wait: float | None, phase: Phase) -> None:
        """Wait until data, end of stream or an error arrives (one state change)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = (
            loop.call_later(max_wait, self._on_timeout, max_wait, phase)
            if max_wait is not None
            else None
        )
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _next(self, max_wait: float | None, phase: Phase) -> bytes:
        """The next piece, or b"" at the end. Every wake-up is a state change, so one wait
        is enough: no loop."""
        if self._buffer:
            return self._pop()
        if self._exc is not None:
            raise self._exc
        if self._done:
            return b""
        await self._wait(max_wait, phase)
        if self._buffer:
            return self._pop()
        if self._exc is not None:
            raise self._exc
        return b""


class UpstreamBody:
    """A response body read from an upstream connection (implements ``http.body.Body``).

    Read it to the end (``chunks()`` or ``read()``) or call ``aclose()``: a connection whose
    body was not read to the end cannot be reused and is closed by ``aclose()``. When the
    whole body arrived with the head, ``data`` holds it and no connection is involved.
    ``read_timeout`` bounds every wait for the next piece (as nginx's proxy_read_timeout).
    """

    __slots__ = ("_iterating", "_read_timeout", "_stream", "data", "length")

    def __init__(
        self,
        stream: _Stream | None,
        length: int | None,
        read_timeout: float | None,
        data: bytes | None = None,
    ) -> None:
        self._stream = stream
        self._read_timeout = read_timeout
        self._iterating = False
        self.length = length
        self.data = data

    @classmethod
    def complete(cls, data: bytes) -> UpstreamBody:
        return cls(None, len(data), None, data)

    @property
    def finished(self) -> bool:
        """True when nothing is left to read from the connection."""
        stream = self._stream
        return stream is None or (stream._done and not stream._buffer) or stream._exc is not None

    def chunks(self) -> AsyncIterator[bytes]:
        if self.data is not None:
            return _once(self.data)
        if self._iterating:
            raise RuntimeError("the upstream body is streamed once; use read() to keep it")
        self._iterating = True
        return self

    def __aiter__(self) -> UpstreamBody:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if stream is None:
            raise StopAsyncIteration
        chunk = await stream._next(self._read_timeout, "body")
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self, limit: int | None = None) -> bytes:
        if self.data is None:
            if self._iterating:
                raise RuntimeError("the upstream body is already being streamed")
            self._iterating = True
            parts: list[bytes] = []
            size = 0
            stream = self._stream
            while stream is not None:  # bounded: each round consumes data or ends
                chunk = await stream._next(self._read_timeout, "body")
                if not chunk:
                    break
                size += len(chunk)
                if limit is not None and size > limit:
                    await self.aclose()
                    raise BodyTooLarge(limit)
                parts.append(chunk)
            self.data = b"".join(parts)
            self._stream = None
        if limit is not None and len(self.data) > limit:
            raise BodyTooLarge(limit)
        return self.data

    async def aclose(self) -> None:
        """Stop reading: if the body has not arrived whole, the connection is closed."""
        stream = self._stream
        if stream is None:
            return
        self._stream = None
        if not (stream._done and stream._exc is None) and stream._owner is not None:
            stream._owner.abort()
        stream._buffer.clear()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


class UpstreamTunnel:
    """The upstream side of an upgraded connection (a ``RawConnection``): bytes both ways
    until either side closes."""

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: TunnelOwner, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    async def read(self, max_wait: float | None = None) -> bytes:
        """The next bytes from the upstream; b"" once it closed. ``max_wait`` bounds the wait
        (UpstreamError kind="timeout", which also closes the connection)."""
        return await self._stream._next(max_wait, "tunnel")

    def write(self, data: bytes) -> None:
        self._conn.write(data)

    async def drain(self) -> None:
        await self._conn.drain()

    def close(self) -> None:
        self._conn.close()

    @property
    def closed(self) -> bool:
        return self._conn.closed


class TunnelOwner(StreamOwner, Protocol):
    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...
