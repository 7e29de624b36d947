"""Publishes made concurrently to one topic, sent to the bus as one ``publish_batch``.

A flow runs many messages at once (its ``concurrency``), and each ends in a ``to: {topic}``
that must return only once its output is durable. Sent one by one, every output is its own
bus operation: its own round trip to the SQLite writer thread (or a JetStream publish),
its own statement, its own future. Sends that arrive in the same event-loop turn are
instead queued per topic and flushed together at the end of the turn; each caller still
waits for its own message's offset, so "returns once durable" holds per message.

``publish_batch`` is atomic: one message the bus refuses (a reserved header, say) fails the
whole batch. A failed batch is therefore retried message by message, so each caller gets
exactly the outcome a lone ``publish`` would have given it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sampan.bus.base import Bus, OutgoingMessage

_Waiting = tuple[OutgoingMessage, "asyncio.Future[int]"]


class PublishCoalescer:
    def __init__(self, bus: Bus, max_batch: int = 512) -> None:
        self._bus = bus
        self._max_batch = max_batch
        self._pending: dict[str, list[_Waiting]] = {}
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Bus calls made (for tests and benchmarks: messages / batches = coalescing)."""

    async def publish(self, topic: str, message: OutgoingMessage) -> int:
        """Publish ``message``; returns its offset once the bus has it durably."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.setdefault(topic, []).append((message, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for topic, waiting in pending.items():
            for start in range(0, len(waiting), self._max_batch):
                task = asyncio.ensure_future(
                    self._send(topic, waiting[start : start + self._max_batch])
                )
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, topic: str, waiting: Sequence[_Waiting]) -> None:
        self.batches += 1
        try:
            offsets = await self._bus.publish_batch(topic, [message for message, _ in waiting])
        except asyncio.CancelledError:
            for _, future in waiting:
                future.cancel()
            raise
        except Exception as exc:
            if len(waiting) == 1:
                _fail(waiting[0][1], exc)
                return
            # Find out which message the bus refuses: every other one still gets published.
            await asyncio.gather(*(self._send(topic, [one]) for one in waiting))
            return
        for (_, future), offset in zip(waiting, offsets, strict=True):
            if not future.done():
                future.set_result(offset)

    async def close(self) -> None:
        """Wait for batches already handed to the bus (their callers may have gone)."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)


def _fail(future: asyncio.Future[int], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
