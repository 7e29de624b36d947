"""A consumer that hands its handler many messages at once.

For handlers whose work per message is short (a flow validating, transforming and routing in
memory), the cost of running each message in its own worker dominates: a wake-up, a
suspension on its own publish and a resumption per message. A batch handler gets the
messages that are ready (at most ``concurrency`` in progress in all), and says per message
what became of it: done (acked with the others), failed (retried or dead-lettered as with
`Consumer`), or still running, as an awaitable this consumer settles when it ends.

Keys stay in order: the backend leases one message per key at a time, so one batch never
holds two messages of a key, and the next message of a key waits for this one's ack.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from sampan.bus.base import Bus, Delivery
from sampan.bus.consumer import (
    _STOP,
    Consumer,
    ConsumerOptions,
    _cancelled_inside,
    _finish_or_cancel,
    _stopping,
)
from sampan.observe.metrics import Metrics

BatchOutcome = BaseException | Awaitable[None] | None
"""None: done; an exception: failed; an awaitable: still running (its outcome decides)."""

BatchHandler = Callable[[list[Delivery]], Awaitable[Sequence[BatchOutcome]]]

WORKERS = 2
"""Batches at once: one runs its handler while the other waits for its outputs' commit; each
takes at most half of ``concurrency``."""


class BatchConsumer(Consumer):
    def __init__(
        self,
        bus: Bus,
        topic: str,
        group: str,
        handler: BatchHandler,
        options: ConsumerOptions | None = None,
        metrics: Metrics | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(bus, topic, group, _no_single_handler, options, metrics, name)
        self.batch_handler = handler
        self._in_progress = 0
        self._capacity = asyncio.Event()
        self._stragglers: set[asyncio.Task[None]] = set()

    def _worker_count(self) -> int:
        return min(WORKERS, self.options.concurrency)

    async def _work(self) -> None:
        ready, idle = self._ready, self._idle
        loop = asyncio.get_running_loop()
        limit = self.options.concurrency
        # A worker takes at most its share, so that while one batch waits for its outputs'
        # commit the other worker has room for the next (taking all of `concurrency` at once
        # left the loop idle during every commit: +4 % in the flows benchmark).
        share = -(-limit // self._worker_count())
        clock, handler = time.perf_counter, self.batch_handler
        observe_many = self._quartet.observe_many
        while True:
            if ready and ready[0] is _STOP:  # before waiting for room: stop does not wait
                ready.popleft()
                return
            room = min(limit - self._in_progress, share)
            if room <= 0:
                self._capacity.clear()
                await self._capacity.wait()
                continue
            if not ready:
                await self._wait_for_work(loop)
                continue
            batch: list[Delivery] = []
            while ready and len(batch) < room and ready[0] is not _STOP:
                batch.append(ready.popleft())
            if ready and idle:  # more than this worker takes: wake another one
                self._hand_out([])
            self._in_progress += len(batch)
            started = clock()
            try:
                outcomes: Sequence[BatchOutcome] = await handler(batch)
                if len(outcomes) != len(batch):
                    raise RuntimeError(
                        f"batch handler gave {len(outcomes)} outcomes for {len(batch)} messages"
                    )
            except asyncio.CancelledError as exc:
                if _stopping():
                    raise
                outcomes = [_cancelled_inside(exc)] * len(batch)
            except Exception as exc:
                outcomes = [exc] * len(batch)
            elapsed = clock() - started
            settled = 0
            failed: list[tuple[Delivery, BaseException]] = []
            for delivery, outcome in zip(batch, outcomes, strict=True):
                if outcome is None:
                    self._to_ack.append(delivery)
                    settled += 1
                elif isinstance(outcome, BaseException):
                    failed.append((delivery, outcome))
                else:
                    task = asyncio.ensure_future(self._settle_later(delivery, outcome, started))
                    self._stragglers.add(task)
                    task.add_done_callback(self._stragglers.discard)
            observe_many(elapsed, settled + len(failed), errors=len(failed))
            # Nacks only once every awaitable is a straggler: a stop that cancels this worker
            # in a nack still finds (and cancels) what runs on.
            for delivery, error in failed:
                await self._failed(delivery, _as_exception(error))
                settled += 1
            self._in_progress -= settled
            self.processed += settled
            if settled:  # the other worker may be waiting for room
                self._capacity.set()
            if self._to_ack and not self._ack_wanted.is_set():
                self._ack_wanted.set()

    def _hand_out(self, deliveries: list[Delivery]) -> None:
        """Wake one idle worker per call: a worker takes every ready message it has room for."""
        self._ready.extend(deliveries)
        if deliveries and deliveries[0] is _STOP:
            self._capacity.set()  # a worker waiting for room sees the stop
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not deliveries or deliveries[0] is not _STOP:
                    return

    async def _settle_later(
        self, delivery: Delivery, running: Awaitable[None], started: float
    ) -> None:
        error: Exception | None = None
        try:
            await running
        except asyncio.CancelledError as exc:
            if _stopping():  # not processed: the delivery is still held and goes back
                self._in_progress -= 1
                self._capacity.set()
                raise
            error = _cancelled_inside(exc)
        except Exception as exc:
            error = exc
        try:
            self._quartet.observe(time.perf_counter() - started, error=error is not None)
            if error is not None:
                await self._failed(delivery, error)
            else:
                self._to_ack.append(delivery)
                if not self._ack_wanted.is_set():
                    self._ack_wanted.set()
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        self._in_progress -= 1
        self.processed += 1
        self._capacity.set()

    async def _finish_stragglers(self, deadline: float) -> None:
        await _finish_or_cancel(list(self._stragglers), deadline - time.monotonic())


def _as_exception(outcome: BaseException) -> Exception:
    if isinstance(outcome, Exception):
        return outcome
    return RuntimeError(f"{type(outcome).__name__}: {outcome}")


async def _no_single_handler(_delivery: Delivery) -> None:
    raise AssertionError("a BatchConsumer runs its batch handler")
