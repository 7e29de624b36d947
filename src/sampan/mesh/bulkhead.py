"""The bulkhead: at most ``max_concurrent`` requests in flight to one service, at most
``max_pending`` more waiting for a slot; beyond that a request fails at once with
:class:`BulkheadFull` (the caller answers 503), so one slow service cannot take every
connection and task of the node with it.

Waiters get slots in arrival order (FIFO): a released slot is handed directly to the
oldest waiter, so a newcomer cannot overtake the queue. Cancellation-safe: a waiter
cancelled while queued leaves the queue; one cancelled after it was handed a slot but
before it ran passes the slot on, so no slot is ever leaked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sampan.mesh.config import BulkheadConfig

__all__ = ["Bulkhead", "BulkheadFull"]


class BulkheadFull(Exception):
    """No slot free and the waiting queue is full: shed the request (503)."""

    status = 503


class Bulkhead:
    __slots__ = ("_waiters", "active", "admitted", "config", "rejected")

    def __init__(self, config: BulkheadConfig) -> None:
        self.config = config
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.active = 0
        """Slots held (including ones handed to a waiter that has not resumed yet)."""
        self.admitted = 0
        self.rejected = 0

    @property
    def pending(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of the block; raises :class:`BulkheadFull`."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; pair with :meth:`release`."""
        if self.active < self.config.max_concurrent and not self._waiters:
            self.active += 1
            self.admitted += 1
            return
        if len(self._waiters) >= self.config.max_pending:
            self.rejected += 1
            raise BulkheadFull(f"{self.active} requests in flight and {len(self._waiters)} waiting")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # we were handed a slot but will not use it: pass it on
            elif waiter in self._waiters:  # release() may already have skipped it
                self._waiters.remove(waiter)
            raise
        self.admitted += 1

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; `active` is unchanged
                return
        self.active -= 1
