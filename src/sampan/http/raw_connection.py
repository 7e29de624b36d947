"""The client socket after a ``101 Switching Protocols``: bytes in, bytes out, no HTTP.

The server keeps the transport and feeds this object whatever arrives; reading pauses when
the upgrade handler falls ``HIGH_WATER`` bytes behind and writes wait in ``drain()`` while
the kernel buffer is full, so a WebSocket relay cannot be made to buffer without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from sampan.http.streaming_body import HIGH_WATER, LOW_WATER


class RawFlow(Protocol):
    """What the raw connection needs from the server protocol that owns the transport."""

    def raw_pause(self) -> None: ...

    def raw_resume(self) -> None: ...

    async def drain_writes(self) -> None: ...

    def write_raw(self, data: bytes) -> None: ...

    def close_raw(self) -> None: ...


class SocketRawConnection:
    """``RawConnection`` over the server's transport; see ``sampan.http.response``."""

    __slots__ = ("_buffered", "_chunks", "_eof", "_flow", "_paused", "_waiter")

    def __init__(self, flow: RawFlow, initial: list[bytes]) -> None:
        self._flow = flow
        self._chunks: deque[bytes] = deque(c for c in initial if c)
        self._buffered = sum(len(c) for c in self._chunks)
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        if self._buffered > HIGH_WATER:
            self._paused = True
            flow.raw_pause()

    # -- fed by the server ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._eof or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._flow.raw_pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the upgrade handler's side ---------------------------------------------------------

    async def read(self) -> bytes:
        while not self._chunks:
            if self._eof:
                return b""
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            await waiter
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= LOW_WATER:
            self._paused = False
            self._flow.raw_resume()
        return chunk

    def write(self, data: bytes) -> None:
        self._flow.write_raw(data)

    async def drain(self) -> None:
        await self._flow.drain_writes()

    def close(self) -> None:
        self._flow.close_raw()
