"""A request or response body that is streamed, never held whole unless someone asks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class BodyTooLarge(Exception):
    """The body passed the limit its reader set."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


class Body(Protocol):
    """What a handler sees of a body.

    ``chunks()`` streams it (once); ``read(limit)`` buffers it whole and raises
    ``BodyTooLarge`` past ``limit``; after ``read`` the buffered bytes are kept so that a later
    ``chunks()`` (e.g. the proxy) replays them. ``length`` is the declared Content-Length.
    ``limit`` is the most either may deliver (the route's body limit; None = no limit).
    """

    length: int | None
    limit: int | None

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self, limit: int | None = None) -> bytes: ...


class BytesBody:
    """A body that is already in memory (fixed responses, transformed payloads)."""

    __slots__ = ("data", "length", "limit")

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.length: int | None = len(data)
        self.limit: int | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.data:
            yield self.data

    async def read(self, limit: int | None = None) -> bytes:
        for bound in (limit, self.limit):
            if bound is not None and len(self.data) > bound:
                raise BodyTooLarge(bound)
        return self.data
