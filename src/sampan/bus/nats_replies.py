"""Replies to many NATS requests on one wildcard inbox, with one timer for all of them.

nats-py's ``request`` spends a random token (an ``os.urandom`` call), a timer and a
``wait_for`` on every call. The NATS bus sends hundreds of requests at once (a batch's
publishes waiting for their PubAcks, the confirmations of a batch's acks), so it keeps its own
inbox instead: tokens from a counter, a dict of futures, and a sweep that fails the futures
whose deadline has passed. Callers await the futures (one ``gather`` for a whole batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sampan.bus.base import BusError


class ReplyTimeout(BusError):
    """No reply arrived within the inbox's timeout (server down, slow or reconnecting)."""


class ReplyInbox:
    def __init__(self, nc: NatsClient, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        self._sweeper = asyncio.create_task(self._sweep(), name="sampan-nats-replies")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(BusError("the bus is closed"))

    def expect(self) -> tuple[str, asyncio.Future[Msg]]:
        """A reply subject to send a request with, and the future its reply resolves."""
        if self._sub is None:
            raise BusError("the bus is not started")
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, time.monotonic() + self._timeout)
        return self._prefix + token, future

    @property
    def pending(self) -> int:
        return len(self._waiting)

    async def _on_reply(self, msg: Msg) -> None:
        found = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if found is not None and not found[0].done():
            found[0].set_result(msg)

    async def _sweep(self) -> None:
        """Fail what is past its deadline; a cancelled caller's futures are dropped here too."""
        interval = max(0.05, min(1.0, self._timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            expired = [t for t, (f, deadline) in self._waiting.items() if deadline <= now]
            for token in expired:
                future, _ = self._waiting.pop(token)
                if not future.done():
                    future.set_exception(
                        ReplyTimeout(f"no reply from NATS within {self._timeout:g} s")
                    )
