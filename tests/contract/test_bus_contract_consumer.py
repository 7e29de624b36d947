"""Bus contract, through the generic Consumer runner: retries, leases, stop, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bus_contract_helpers import fetch_until, offsets, wait_until

from sampan.bus.base import Bus, Delivery, OutgoingMessage
from sampan.bus.batch_consumer import BatchConsumer, BatchOutcome
from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.bus.retry import RetryPolicy, Unretryable
from sampan.observe.metrics import Metrics


def options(**changes: Any) -> ConsumerOptions:
    base: dict[str, Any] = {
        "concurrency": 4,
        "batch": 8,
        "lease_seconds": 10.0,
        "wait_seconds": 0.05,
        "retry": RetryPolicy(max_attempts=3, initial_backoff=0.02, jitter=0.0),
    }
    return ConsumerOptions(**(base | changes))


async def test_consumer_retries_then_dead_letters(bus: Bus, topic: str, group: str) -> None:
    """A handler that keeps failing gets max_attempts deliveries, then the message is dead."""
    good = await bus.publish(topic, b"good")
    bad = await bus.publish(topic, b"bad", key="k")
    attempts: list[tuple[int, int]] = []

    async def handler(d: Delivery) -> None:
        attempts.append((d.offset, d.attempt))
        if d.value == b"bad":
            raise ValueError("cannot handle")

    consumer = Consumer(bus, topic, group, handler, options())
    await consumer.start()
    try:
        await wait_until(lambda: len(attempts) >= 4, within=5)
        await wait_until(lambda: bus.dlq_list(topic), within=5, message="a dead letter")
    finally:
        await consumer.stop(grace=2)
    assert sorted(a for o, a in attempts if o == bad) == [1, 2, 3]
    assert [a for o, a in attempts if o == good] == [1]
    [letter] = await bus.dlq_list(topic)
    assert (letter.original_offset, letter.attempts, letter.group) == (bad, 3, group)
    assert letter.error == "ValueError: cannot handle"
    assert await bus.lag(topic, group) == 0


async def test_unretryable_failure_is_dead_lettered_at_once(
    bus: Bus, topic: str, group: str
) -> None:
    """A handler raising Unretryable gets one delivery: no retry can fix the message."""
    bad = await bus.publish(topic, b"invalid", key="k")
    attempts: list[int] = []

    async def handler(d: Delivery) -> None:
        attempts.append(d.attempt)
        raise Unretryable("fails its schema")

    consumer = Consumer(bus, topic, group, handler, options())
    await consumer.start()
    try:
        await wait_until(lambda: bus.dlq_list(topic), within=5, message="a dead letter")
    finally:
        await consumer.stop(grace=2)
    assert attempts == [1]
    [letter] = await bus.dlq_list(topic)
    assert (letter.original_offset, letter.attempts) == (bad, 1)
    assert letter.error == "Unretryable: fails its schema"


async def test_consumer_renews_leases_of_slow_handlers(bus: Bus, topic: str, group: str) -> None:
    """A handler slower than the lease is not redelivered: the runner extends the lease."""
    await bus.publish(topic, b"slow")
    calls: list[int] = []

    async def handler(d: Delivery) -> None:
        calls.append(d.attempt)
        await asyncio.sleep(0.7)

    consumer = Consumer(bus, topic, group, handler, options(lease_seconds=0.3))
    await consumer.start()
    try:
        await wait_until(lambda: consumer.processed >= 1, within=5)
        await asyncio.sleep(0.1)
    finally:
        await consumer.stop(grace=2)
    assert calls == [1]
    assert await bus.lag(topic, group) == 0


async def test_consumer_stop_finishes_running_and_releases_unstarted(
    bus: Bus, topic: str, group: str
) -> None:
    """stop(): no new work, running handlers finish, acks flushed, unstarted work released."""
    published = await bus.publish_batch(
        topic, [OutgoingMessage(f"m{i}".encode(), key=f"k{i}") for i in range(10)]
    )
    started: list[int] = []
    finished: list[int] = []
    gate = asyncio.Event()

    async def handler(d: Delivery) -> None:
        started.append(d.offset)
        await gate.wait()
        await asyncio.sleep(0.05)
        finished.append(d.offset)

    consumer = Consumer(bus, topic, group, handler, options(concurrency=2, batch=10))
    await consumer.start()
    await wait_until(lambda: len(started) == 2, message="two handlers running")
    stopping = asyncio.create_task(consumer.stop(grace=3))
    await asyncio.sleep(0.02)
    gate.set()
    await stopping
    assert sorted(finished) == sorted(started), "running handlers did not finish"
    assert len(started) == 2, "a handler started after stop()"
    assert await bus.lag(topic, group) == 8, "acks of finished handlers were not flushed"
    # Released work is available at once, and the release did not count an attempt.
    again = await bus.fetch(topic, group, consumer="next", max_messages=20, lease_seconds=10)
    assert sorted(offsets(again)) == sorted(set(published) - set(started))
    assert all(d.attempt == 1 for d in again)


async def test_consumer_stop_cancels_handlers_past_grace(bus: Bus, topic: str, group: str) -> None:
    """A handler still running after the grace period is cancelled and its message released."""
    offset = await bus.publish(topic, b"stuck")
    running = asyncio.Event()

    async def handler(d: Delivery) -> None:
        running.set()
        await asyncio.sleep(30)

    consumer = Consumer(bus, topic, group, handler, options())
    await consumer.start()
    await asyncio.wait_for(running.wait(), 5)
    await asyncio.wait_for(consumer.stop(grace=0.1), 5)
    [again] = await bus.fetch(topic, group, consumer="next", max_messages=5, lease_seconds=10)
    assert again.offset == offset


class SlowFetchBus:
    """Delegates to a bus; each non-empty fetch reaches the caller ``delay`` seconds after the
    backend leased it (as over a network). ``fetched`` is set when a lease was taken."""

    def __init__(self, inner: Bus, delay: float) -> None:
        self._inner = inner
        self._delay = delay
        self.fetched = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def fetch(self, *args: Any, **kwargs: Any) -> list[Delivery]:
        found = await self._inner.fetch(*args, **kwargs)
        if found:
            self.fetched.set()
            try:
                await asyncio.sleep(self._delay)
            except asyncio.CancelledError:
                await self._inner.release(found)  # as `Bus.fetch` promises when cancelled
                raise
        return found


async def test_consumer_stop_during_a_fetch_does_not_strand_leases(
    bus: Bus, topic: str, group: str
) -> None:
    """Messages leased by a fetch that stop() interrupts are released, not left leased."""
    slow = SlowFetchBus(bus, delay=0.2)
    handled: list[int] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.offset)

    consumer = Consumer(slow, topic, group, handler, options())  # type: ignore[arg-type]
    await consumer.start()
    published = await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(3)])
    await asyncio.wait_for(slow.fetched.wait(), 5)
    await consumer.stop(grace=2)
    again = await bus.fetch(topic, group, consumer="next", max_messages=10, lease_seconds=10)
    assert sorted(offsets(again) + handled) == published
    assert all(d.attempt == 1 for d in again)


@pytest.mark.parametrize("batched", [False, True], ids=["consumer", "batch_consumer"])
async def test_consumer_stop_does_not_wait_out_a_long_poll(
    bus: Bus, topic: str, group: str, batched: bool
) -> None:
    """stop() with nothing in flight returns at once, not when the pending fetch's long
    poll (``wait_seconds``) ends; the cancelled poll leased nothing."""
    slow = options(wait_seconds=10.0)
    consumer = (
        BatchConsumer(bus, topic, group, _never_called_batch, slow)
        if batched
        else Consumer(bus, topic, group, _never_called, slow)
    )
    await consumer.start()
    await asyncio.sleep(0.2)  # the fetch is waiting for messages
    started = time.monotonic()
    await consumer.stop(grace=2)
    assert time.monotonic() - started < 0.5
    offset = await bus.publish(topic, b"after the stop")
    [d] = await fetch_until(bus, topic, group, consumer="next")
    assert (d.offset, d.attempt) == (offset, 1)


async def test_a_cancelled_fetch_leaves_nothing_leased(bus: Bus, topic: str, group: str) -> None:
    """A fetch cancelled at any point (waiting, or while it leases) hands back what it took:
    the next fetch gets every message, none counted as an attempt (what lets a consumer's
    stop cancel its long poll)."""
    await bus.create_group(topic, group)
    published = await bus.publish_batch(
        topic, [OutgoingMessage(f"m{i}".encode(), key=f"k{i}") for i in range(5)]
    )
    ended = turns = 0  # fetches that ended before their cancellation came; loop turns
    while turns < 60 or ended < 3:  # every turn at first, then (on a slow machine) longer
        assert turns < 100_000, "no fetch ended before its cancellation"
        fetch = asyncio.create_task(
            bus.fetch(
                topic, group, consumer="c1", max_messages=10, lease_seconds=30.0, wait_seconds=5.0
            )
        )
        for _ in range(turns):  # cancel it after this many turns of the event loop
            await asyncio.sleep(0)
        fetch.cancel()
        try:
            taken = await fetch
        except asyncio.CancelledError:
            taken = []
        else:
            ended += 1
        got = taken + await fetch_until(
            bus, topic, group, count=len(published) - len(taken), consumer="c2"
        )
        assert sorted(offsets(got)) == published, f"cancelled after {turns} turns"
        assert all(d.attempt == 1 for d in got), f"cancelled after {turns} turns"
        await bus.release(got)
        turns = turns + 1 if turns < 60 else turns * 2


async def _never_called(d: Delivery) -> None:
    raise AssertionError(f"nothing was published, yet {d} was handled")


async def _never_called_batch(batch: list[Delivery]) -> list[BatchOutcome]:
    raise AssertionError(f"nothing was published, yet {batch} was handled")


async def test_metrics_after_a_run(bus: Bus, topic: str, group: str, metrics: Metrics) -> None:
    """After a run the topic throughput, the group quartet and the ack counter are exposed."""
    await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(5)])
    calls = 0

    async def handler(d: Delivery) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first one fails")

    consumer = Consumer(bus, topic, group, handler, options(), metrics=metrics)
    await consumer.start()
    try:
        await wait_until(lambda: consumer.processed >= 6)
        await wait_until(lambda: _lag_is_zero(bus, topic, group))
    finally:
        await consumer.stop(grace=2)
    text = metrics.render().decode()
    name = f'kind="group",name="{topic}/{group}"'
    assert f'sampan_requests_total{{kind="topic",name="{topic}"}} 5\n' in text
    assert f"sampan_requests_total{{{name}}} 6\n" in text
    assert f"sampan_errors_total{{{name}}} 1\n" in text
    assert f"sampan_latency_seconds_count{{{name}}} 6\n" in text
    assert f"sampan_cost_total{{{name}," in text
    assert f'sampan_bus_acked_total{{group="{group}",topic="{topic}"}} 5\n' in text
    assert f'sampan_bus_retried_total{{group="{group}",topic="{topic}"}} 1\n' in text
    assert f'sampan_bus_redelivered_total{{group="{group}",topic="{topic}"}} 1\n' in text


async def _lag_is_zero(bus: Bus, topic: str, group: str) -> bool:
    return await bus.lag(topic, group) == 0


async def test_consumer_processes_everything_exactly_once_without_failures(
    bus: Bus, topic: str, group: str
) -> None:
    """With healthy handlers and long leases every message is handled once and acked."""
    published = await bus.publish_batch(
        topic, [OutgoingMessage(b"x", key=f"k{i % 7}") for i in range(200)]
    )
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.offset)

    consumer = Consumer(bus, topic, group, handler, options(concurrency=8, batch=32))
    await consumer.start()
    try:
        await wait_until(lambda: _lag_is_zero(bus, topic, group), within=10)
    finally:
        await consumer.stop(grace=2)
    assert sorted(seen) == published
    assert await bus.fetch(topic, group, consumer="x", max_messages=10, lease_seconds=1) == []


async def test_subscribe_runs_a_consumer_that_records_into_the_bus_metrics(
    bus: Bus, topic: str, group: str, metrics: Metrics
) -> None:
    """bus.subscribe starts a Consumer: success acks, and the quartet lands in bus.metrics."""
    await bus.publish_batch(topic, [OutgoingMessage(b"x") for _ in range(3)])
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.offset)

    consumer = await bus.subscribe(topic, group, handler, options())
    try:
        await wait_until(lambda: _lag_is_zero(bus, topic, group))
    finally:
        await consumer.stop(grace=2)
    assert len(seen) == 3
    assert bus.metrics is metrics
    assert f'sampan_requests_total{{kind="group",name="{topic}/{group}"}} 3\n' in (
        metrics.render().decode()
    )


async def test_a_cancelled_error_from_inside_a_handler_is_a_failure_not_a_stop(
    bus: Bus, topic: str, group: str
) -> None:
    """Handler code that lets a CancelledError out (an inner call somebody cancelled) fails
    its message, which is retried; the worker lives on (one worker here: the rest would
    stall if it ended)."""
    await bus.publish_batch(topic, [OutgoingMessage(b"%d" % i, key=f"k{i}") for i in range(3)])
    attempts: list[tuple[bytes, int]] = []

    async def handler(d: Delivery) -> None:
        attempts.append((d.value, d.attempt))
        if d.value == b"0" and d.attempt == 1:
            raise asyncio.CancelledError()

    consumer = Consumer(bus, topic, group, handler, options(concurrency=1))
    await consumer.start()
    try:
        await wait_until(lambda: len(attempts) >= 4, within=5, message="a retry and the rest")
    finally:
        await consumer.stop(grace=2)
    assert sorted(attempts) == [(b"0", 1), (b"0", 2), (b"1", 1), (b"2", 1)]
    assert await bus.lag(topic, group) == 0
