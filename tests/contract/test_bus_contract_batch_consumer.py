"""Bus contract, through the BatchConsumer runner: per-message outcomes of a batch, messages
still running after their batch, the concurrency bound, key order and stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any
from unittest import mock

from bus_contract_helpers import wait_until

from sampan.bus.base import Bus, Delivery, OutgoingMessage
from sampan.bus.batch_consumer import BatchConsumer, BatchOutcome
from sampan.bus.consumer import ConsumerOptions
from sampan.bus.retry import RetryPolicy


def options(**changes: Any) -> ConsumerOptions:
    base: dict[str, Any] = {
        "concurrency": 8,
        "batch": 16,
        "lease_seconds": 10.0,
        "wait_seconds": 0.05,
        "retry": RetryPolicy(max_attempts=2, initial_backoff=0.02, jitter=0.0),
    }
    return ConsumerOptions(**(base | changes))


async def _until_cancelled(cancelled: asyncio.Event) -> None:
    """Runs until cancelled, and says so through ``cancelled``."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def _later(seconds: float, fail: bool = False) -> None:
    await asyncio.sleep(seconds)
    if fail:
        raise ValueError("failed after waiting")


async def test_each_outcome_of_a_batch_is_settled_on_its_own(
    bus: Bus, topic: str, group: str
) -> None:
    """Done is acked, an exception is retried then dead-lettered, and a message still running
    after its batch is settled by its own outcome."""
    values = [b"ok", b"bad", b"slow", b"slow-bad", b"ok"]
    await bus.publish_batch(topic, [OutgoingMessage(v, key=f"k{i}") for i, v in enumerate(values)])
    seen: list[tuple[bytes, int]] = []

    async def handler(batch: list[Delivery]) -> Sequence[BatchOutcome]:
        outcomes: list[BatchOutcome] = []
        for d in batch:
            seen.append((d.value, d.attempt))
            if d.value == b"bad":
                outcomes.append(ValueError("cannot handle"))
            elif d.value.startswith(b"slow"):
                outcomes.append(asyncio.ensure_future(_later(0.05, d.value == b"slow-bad")))
            else:
                outcomes.append(None)
        return outcomes

    consumer = BatchConsumer(bus, topic, group, handler, options())
    await consumer.start()
    try:
        await wait_until(lambda: _dead(bus, topic, 2), within=10, message="2 dead letters")
        await wait_until(lambda: _lag_is(bus, topic, group, 0), within=10, message="lag 0")
    finally:
        await consumer.stop(grace=2)
    assert sorted(a for v, a in seen if v == b"ok") == [1, 1]
    assert sorted(a for v, a in seen if v == b"bad") == [1, 2]
    assert sorted(a for v, a in seen if v == b"slow") == [1]
    assert sorted(a for v, a in seen if v == b"slow-bad") == [1, 2]
    errors = sorted(letter.error for letter in await bus.dlq_list(topic))
    assert errors == ["ValueError: cannot handle", "ValueError: failed after waiting"]


async def _dead(bus: Bus, topic: str, count: int) -> bool:
    return len(await bus.dlq_list(topic)) >= count


async def _lag_is(bus: Bus, topic: str, group: str, lag: int) -> bool:
    return await bus.lag(topic, group) == lag


async def test_in_progress_stays_within_concurrency_and_keys_keep_order(
    bus: Bus, topic: str, group: str
) -> None:
    total, keys = 120, 6
    await bus.publish_batch(
        topic, [OutgoingMessage(b"%d" % i, key=f"k{i % keys}") for i in range(total)]
    )
    in_progress = 0
    most = 0
    largest_batch = 0
    order: dict[str | None, list[int]] = {}

    async def finish() -> None:
        nonlocal in_progress
        await asyncio.sleep(0.002)
        in_progress -= 1

    async def handler(batch: list[Delivery]) -> Sequence[BatchOutcome]:
        nonlocal in_progress, most, largest_batch
        assert len({d.key for d in batch}) == len(batch), "one message per key in a batch"
        in_progress += len(batch)
        most = max(most, in_progress)
        largest_batch = max(largest_batch, len(batch))
        outcomes: list[BatchOutcome] = []
        for i, d in enumerate(batch):
            order.setdefault(d.key, []).append(int(d.value))
            if i % 2:
                outcomes.append(asyncio.ensure_future(finish()))
            else:
                in_progress -= 1
                outcomes.append(None)
        return outcomes

    consumer = BatchConsumer(bus, topic, group, handler, options(concurrency=4))
    await consumer.start()
    try:
        await wait_until(lambda: _lag_is(bus, topic, group, 0), within=20, message="lag 0")
    finally:
        await consumer.stop(grace=2)
    assert 1 <= most <= 4
    # Each of the two workers takes at most half: one batch can run while the other's wait.
    assert largest_batch == 2
    assert sum(len(v) for v in order.values()) == total
    for handled in order.values():
        assert handled == sorted(handled)


async def test_stop_cancels_what_outlives_the_grace_and_hands_it_back(
    bus: Bus, topic: str, group: str
) -> None:
    """A message still running when the grace ends is released: the next consumer gets it
    again, without counting a failed attempt."""
    await bus.publish(topic, b"stuck", key="k")
    cancelled = asyncio.Event()

    first_attempts: list[int] = []

    async def stuck(batch: list[Delivery]) -> Sequence[BatchOutcome]:
        first_attempts.extend(d.attempt for d in batch)
        return [asyncio.ensure_future(_until_cancelled(cancelled)) for _ in batch]

    consumer = BatchConsumer(bus, topic, group, stuck, options())
    await consumer.start()
    await wait_until(lambda: bool(first_attempts), within=10, message="a delivery")
    await consumer.stop(grace=0.2)
    assert cancelled.is_set()

    again: list[Delivery] = []

    async def done(batch: list[Delivery]) -> Sequence[Awaitable[None] | None]:
        again.extend(batch)
        return [None] * len(batch)

    consumer = BatchConsumer(bus, topic, group, done, options())
    await consumer.start()
    try:
        await wait_until(lambda: bool(again), within=10, message="the redelivery")
    finally:
        await consumer.stop(grace=2)
    assert [(d.value, d.attempt) for d in again] == [(b"stuck", 1)]


async def test_stop_after_a_busy_spell_does_not_wait_out_the_grace(
    bus: Bus, topic: str, group: str
) -> None:
    """While one worker's batch fills the concurrency, the other waits for room; the slots
    that batch frees must wake it, or it sleeps through the stop until the grace ends."""
    await bus.publish_batch(topic, [OutgoingMessage(b"%d" % i, key=f"k{i}") for i in range(16)])
    handled = 0

    async def handler(batch: list[Delivery]) -> Sequence[BatchOutcome]:
        nonlocal handled
        await asyncio.sleep(0.001)  # an outbox flush, say: the other worker runs meanwhile
        handled += len(batch)
        return [None] * len(batch)

    consumer = BatchConsumer(bus, topic, group, handler, options(concurrency=4))
    await consumer.start()
    try:
        await wait_until(lambda: _lag_is(bus, topic, group, 0), within=10, message="lag 0")
    finally:
        started = time.monotonic()
        await consumer.stop(grace=5)
    assert handled == 16
    assert time.monotonic() - started < 2.0


async def test_stop_cancels_what_still_runs_even_if_a_nack_of_its_batch_hangs(
    bus: Bus, topic: str, group: str
) -> None:
    """A batch with a failure and a message still running: the grace ends while the nack of
    the failure hangs. The running one must still be cancelled (and handed back), not left
    to run on unsettled."""
    await bus.publish_batch(
        topic, [OutgoingMessage(b"bad", key="a"), OutgoingMessage(b"slow", key="b")]
    )
    cancelled = asyncio.Event()
    nacking = asyncio.Event()

    async def handler(batch: list[Delivery]) -> Sequence[BatchOutcome]:
        return [
            ValueError("bad")
            if d.value == b"bad"
            else asyncio.ensure_future(_until_cancelled(cancelled))
            for d in batch
        ]

    async def hanging_nack(*_args: Any) -> bool:
        nacking.set()
        await asyncio.sleep(3600)
        return False

    consumer = BatchConsumer(bus, topic, group, handler, options())
    with mock.patch.object(bus, "nack", hanging_nack):
        await consumer.start()
        await asyncio.wait_for(nacking.wait(), 10)
        await consumer.stop(grace=0.2)
    assert cancelled.is_set()


async def test_a_cancelled_error_from_inside_is_a_failure_not_a_stop(
    bus: Bus, topic: str, group: str
) -> None:
    """A CancelledError nobody asked the consumer for — out of the batch handler, or out of
    a message still running after its batch — fails those messages (retried); the workers
    and their concurrency slots live on."""
    await bus.publish_batch(
        topic, [OutgoingMessage(v, key=v.decode()) for v in (b"batch", b"straggler", b"ok")]
    )
    attempts: list[tuple[bytes, int]] = []

    async def cancelled_later() -> None:
        await asyncio.sleep(0.01)
        raise asyncio.CancelledError()

    async def handler(batch: list[Delivery]) -> Sequence[BatchOutcome]:
        attempts.extend((d.value, d.attempt) for d in batch)
        if any(d.value == b"batch" and d.attempt == 1 for d in batch):
            raise asyncio.CancelledError()
        return [
            asyncio.ensure_future(cancelled_later())
            if d.value == b"straggler" and d.attempt == 1
            else None
            for d in batch
        ]

    consumer = BatchConsumer(bus, topic, group, handler, options(concurrency=3))
    await consumer.start()
    try:
        await wait_until(lambda: _lag_is(bus, topic, group, 0), within=10, message="lag 0")
    finally:
        await consumer.stop(grace=2)
    finished = {value for value, _ in attempts}
    assert finished == {b"batch", b"straggler", b"ok"}
    assert (b"batch", 2) in attempts
    assert (b"straggler", 2) in attempts or (b"straggler", 1) in attempts
    assert consumer._in_progress == 0
