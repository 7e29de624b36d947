"""Runs a handler over one consumer group, the same way on every bus backend.

The backend guarantees that, within a group, only one message per key is leased at a time;
this runner adds bounded concurrency across keys, batched acks, lease renewal for slow
handlers, retries through ``nack`` and a graceful stop that hands unstarted work back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from sampan.bus.base import Bus, Delivery, Handler, StartPosition
from sampan.bus.retry import NO_RETRY, RetryPolicy, Unretryable
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.bus.consumer")


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    concurrency: int = 16
    """Handlers running at once (always on different keys)."""
    batch: int = 256
    """Messages leased per fetch; up to two batches are held at once."""
    lease_seconds: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    start: StartPosition = "earliest"
    wait_seconds: float = 1.0
    """How long one fetch waits for messages before it asks again."""


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Consumer:
    def __init__(
        self,
        bus: Bus,
        topic: str,
        group: str,
        handler: Handler,
        options: ConsumerOptions | None = None,
        metrics: Metrics | None = None,
        name: str | None = None,
    ) -> None:
        self.bus = bus
        self.topic = topic
        self.group = group
        self.handler = handler
        self.options = options or ConsumerOptions()
        self.name = name or consumer_name()
        metrics = metrics or Metrics()
        labels = {"topic": topic, "group": group}
        self._quartet = metrics.target("group", f"{topic}/{group}")
        self._acked = metrics.counter("sampan_bus_acked", "Messages acked.", **labels)
        self._retried = metrics.counter(
            "sampan_bus_retried", "Handler failures scheduled for retry.", **labels
        )
        self._dead = metrics.counter(
            "sampan_bus_dead_lettered", "Messages moved to the dead-letter topic.", **labels
        )
        self._redelivered = metrics.counter(
            "sampan_bus_redelivered",
            "Deliveries after the first (retries, expired leases).",
            **labels,
        )
        # Leased, not yet started; idle workers wait on a future each. (An asyncio.Queue costs
        # a coroutine and a wake-up bookkeeping per message, measurable at 100k msg/s.)
        self._ready: deque[Delivery] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._held: dict[int, tuple[Delivery, float]] = {}
        self._to_ack: list[Delivery] = []
        self._ack_wanted = asyncio.Event()
        self._ack_lock = asyncio.Lock()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._fetch: asyncio.Future[list[Delivery]] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.processed = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.create_group(self.topic, self.group, start=self.options.start)
        self._room.set()
        self._workers = [
            asyncio.create_task(self._work(), name=f"consume:{self.topic}/{self.group}:{i}")
            for i in range(self._worker_count())
        ]
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"fetch:{self.topic}/{self.group}"),
            asyncio.create_task(self._ack_loop(), name=f"ack:{self.topic}/{self.group}"),
            asyncio.create_task(self._renew_loop(), name=f"renew:{self.topic}/{self.group}"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work; finish what runs (up to ``grace``), hand the rest back."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        fetcher = self._tasks[0] if self._tasks else None
        if fetcher is not None:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
        unstarted: list[Delivery] = []
        fetch, self._fetch = self._fetch, None
        if fetch is not None:
            # A pending long poll would hold the stop for up to wait_seconds: cancel it (a
            # cancelled fetch releases what it leased, see `Bus.fetch`). One that already
            # ended holds leases the loop never saw: hand them back.
            fetch.cancel()
            await asyncio.wait([fetch])
            if not fetch.cancelled() and fetch.exception() is None:
                unstarted.extend(fetch.result())
        unstarted.extend(self._ready)
        self._ready.clear()
        for d in unstarted:
            self._held.pop(d.offset, None)
        self._hand_out([_STOP] * len(self._workers))
        deadline = time.monotonic() + grace
        await _finish_or_cancel(self._workers, grace)
        await self._finish_stragglers(deadline)
        # Under the lock: an ack already on its way finishes before the loop is cancelled.
        await self._flush_acks()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        unstarted.extend(d for d, _ in self._held.values())  # only what was never acked
        self._held.clear()
        if unstarted:
            with contextlib.suppress(Exception):
                await self.bus.release(unstarted)

    def _worker_count(self) -> int:
        return self.options.concurrency

    async def _finish_stragglers(self, deadline: float) -> None:
        """Work still running once the workers have stopped (none here; see BatchConsumer)."""

    # -- fetching -----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        limit = self.options.batch * 2
        while not self._stopping.is_set():
            room = limit - len(self._held)
            if room < self.options.batch // 2 or room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            # Shielded: cancelling the loop (stop) must not drop messages already leased.
            self._fetch = asyncio.ensure_future(
                self.bus.fetch(
                    self.topic,
                    self.group,
                    consumer=self.name,
                    max_messages=min(room, self.options.batch),
                    lease_seconds=self.options.lease_seconds,
                    wait_seconds=self.options.wait_seconds,
                )
            )
            try:
                found = await asyncio.shield(self._fetch)
                self._fetch = None
            except asyncio.CancelledError:
                raise
            except Exception:
                self._fetch = None
                log.exception("fetch from %s/%s failed; retrying", self.topic, self.group)
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            held = self._held
            redelivered = 0
            for d in found:
                held[d.offset] = (d, now)
                if d.attempt > 1:
                    redelivered += 1
            if redelivered:
                self._redelivered.inc(redelivered)
            self._hand_out(found)

    # -- handling -----------------------------------------------------------------------------

    def _hand_out(self, deliveries: list[Delivery]) -> None:
        self._ready.extend(deliveries)
        idle = self._idle
        for _ in range(min(len(deliveries), len(idle))):
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_work(self, loop: asyncio.AbstractEventLoop) -> None:
        """Park this worker until deliveries are handed out (``_hand_out``); a cancelled
        worker leaves the idle list so nothing is handed to it."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._idle.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._idle.remove(waiter)
            raise

    async def _work(self) -> None:
        ready = self._ready
        loop = asyncio.get_running_loop()
        # Bound once: this loop runs per message.
        clock, observe, handler, ack_wanted = (
            time.perf_counter,
            self._quartet.observe,
            self.handler,
            self._ack_wanted,
        )
        while True:
            if not ready:
                await self._wait_for_work(loop)
                continue
            d = ready.popleft()
            if d is _STOP:
                return
            started = clock()
            try:
                await handler(d)
            except asyncio.CancelledError as exc:
                if _stopping():
                    raise
                observe(clock() - started, error=True)
                await self._failed(d, _cancelled_inside(exc))
            except Exception as exc:
                observe(clock() - started, error=True)
                await self._failed(d, exc)
            else:
                observe(clock() - started)
                self._to_ack.append(d)
                if not ack_wanted.is_set():
                    ack_wanted.set()
            self.processed += 1

    async def _failed(self, d: Delivery, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        policy = NO_RETRY if isinstance(exc, Unretryable) else self.options.retry
        try:
            dead = await self.bus.nack(d, error, policy)
        except Exception:
            log.exception(
                "nack of %s/%s@%d failed; the lease will expire", d.topic, d.group, d.offset
            )
            dead = False
        else:
            (self._dead if dead else self._retried).inc()
        if dead:
            log.warning(
                "dead-lettered %s@%d for %s after %d attempts: %s",
                d.topic,
                d.offset,
                d.group,
                d.attempt,
                error,
            )
        self._release_slot(d)

    def _release_slot(self, d: Delivery) -> None:
        self._held.pop(d.offset, None)
        self._room.set()

    # -- acking and leases --------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wanted.wait()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        async with self._ack_lock:
            self._ack_wanted.clear()
            if not self._to_ack:
                return
            batch, self._to_ack = self._to_ack, []
            try:
                await self.bus.ack(batch)
            except Exception:
                log.exception("ack of %d messages failed; they will be redelivered", len(batch))
            else:
                self._acked.inc(len(batch))
            held = self._held
            for d in batch:
                held.pop(d.offset, None)
            self._room.set()

    async def _renew_loop(self) -> None:
        lease = self.options.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            cutoff = time.monotonic() - lease / 3
            old = [d for d, fetched in self._held.values() if fetched <= cutoff]
            if not old:
                continue
            try:
                await self.bus.extend(old, lease)
            except Exception:
                log.exception("lease renewal failed")
                continue
            now = time.monotonic()
            for d in old:
                if d.offset in self._held:
                    self._held[d.offset] = (d, now)


def _stopping() -> bool:
    """Whether this task itself is being cancelled (a stop). A CancelledError from handler
    code that nobody asked this task for (an inner call that was cancelled) is a failure of
    that message: re-raised, it would end a worker and leave the message held."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _cancelled_inside(exc: asyncio.CancelledError) -> Exception:
    return RuntimeError(f"the handler was cancelled from inside: {exc!r}")


async def _finish_or_cancel(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Wait up to ``seconds`` for the tasks, then cancel what still runs."""
    if not tasks:
        return
    _, still_running = await asyncio.wait(tasks, timeout=max(seconds, 0.0))
    for task in still_running:
        task.cancel()
    if still_running:
        await asyncio.gather(*still_running, return_exceptions=True)


_STOP = Delivery("", "", -1, None, b"", {}, 0.0, 0)
