"""Bulkhead: concurrency cap, bounded FIFO queue, immediate rejection, cancellation safety."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.mesh.bulkhead import Bulkhead, BulkheadFull
from sampan.mesh.config import BulkheadConfig


def bulkhead(max_concurrent: int, max_pending: int) -> Bulkhead:
    return Bulkhead(BulkheadConfig(max_concurrent=max_concurrent, max_pending=max_pending))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(b: Bulkhead, gate: asyncio.Event, log: list[str], name: str) -> None:
    async with b.slot():
        log.append(name)
        await gate.wait()


async def test_queues_then_rejects_immediately() -> None:
    b = bulkhead(2, 1)
    gate = asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(hold(b, gate, log, n)) for n in "abc"]
    await settle()
    assert (b.active, b.pending) == (2, 1)
    assert log == ["a", "b"]
    with pytest.raises(BulkheadFull):
        async with b.slot():
            pass
    assert b.rejected == 1
    gate.set()
    await asyncio.gather(*tasks)
    assert log == ["a", "b", "c"]
    assert (b.active, b.pending, b.admitted) == (0, 0, 3)


async def test_no_queue_when_max_pending_is_zero() -> None:
    b = bulkhead(1, 0)
    async with b.slot():
        with pytest.raises(BulkheadFull) as info:
            await b.acquire()
        assert info.value.status == 503
    async with b.slot():
        pass


async def test_waiters_are_served_first_in_first_out() -> None:
    b = bulkhead(1, 10)
    order: list[int] = []
    gate = asyncio.Event()
    first = asyncio.create_task(hold(b, gate, [], "first"))
    await settle()

    async def waiter(i: int) -> None:
        async with b.slot():
            order.append(i)
            await asyncio.sleep(0)

    waiters = []
    for i in range(5):
        waiters.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)
    gate.set()
    # a newcomer arriving while the queue drains must not overtake it
    await asyncio.sleep(0)
    late = asyncio.create_task(waiter(99))
    await asyncio.gather(first, *waiters, late)
    assert order == [0, 1, 2, 3, 4, 99]


async def test_cancelled_waiter_leaves_the_queue() -> None:
    b = bulkhead(1, 2)
    gate = asyncio.Event()
    holder = asyncio.create_task(hold(b, gate, [], "h"))
    await settle()
    log: list[str] = []
    doomed = asyncio.create_task(hold(b, asyncio.Event(), log, "doomed"))
    survivor = asyncio.create_task(hold(b, gate, log, "survivor"))
    await settle()
    assert b.pending == 2
    doomed.cancel()
    await settle()
    assert b.pending == 1
    gate.set()
    await asyncio.gather(holder, survivor)
    assert doomed.cancelled()
    assert log == ["survivor"]
    assert (b.active, b.pending) == (0, 0)


async def test_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    b = bulkhead(1, 2)
    await b.acquire()
    doomed = asyncio.create_task(b.acquire())
    nxt = asyncio.create_task(b.acquire())
    await settle()
    b.release()  # the slot is handed to `doomed`...
    doomed.cancel()  # ...which is cancelled before it gets to run
    await settle()
    assert doomed.cancelled()
    assert nxt.done()  # the slot went on to the next waiter
    assert (b.active, b.pending) == (1, 0)
    b.release()
    assert b.active == 0


async def test_waiter_cancelled_and_skipped_by_release() -> None:
    b = bulkhead(1, 2)
    await b.acquire()
    doomed = asyncio.create_task(b.acquire())
    await settle()
    doomed.cancel()  # its future is cancelled, the task has not run its handler yet
    b.release()  # skips the cancelled waiter
    await settle()
    assert doomed.cancelled()
    assert (b.active, b.pending) == (0, 0)


async def test_an_exception_in_the_block_releases_the_slot() -> None:
    b = bulkhead(1, 0)
    with pytest.raises(RuntimeError):
        async with b.slot():
            raise RuntimeError("boom")
    assert b.active == 0


@settings(max_examples=60, deadline=None)
@given(
    max_concurrent=st.integers(1, 4),
    max_pending=st.integers(0, 4),
    jobs=st.lists(
        st.tuples(
            st.integers(0, 3),  # yields before arriving
            st.integers(0, 4),  # yields holding the slot
            st.sampled_from([None, 0, 1, 3]),  # cancel after this many yields
        ),
        max_size=25,
    ),
)
def test_never_exceeds_max_concurrent_and_never_leaks(
    max_concurrent: int, max_pending: int, jobs: list[tuple[int, int, int | None]]
) -> None:
    async def scenario() -> None:
        b = bulkhead(max_concurrent, max_pending)
        inside = 0
        peak = 0

        async def job(arrive: int, work: int) -> None:
            nonlocal inside, peak
            for _ in range(arrive):
                await asyncio.sleep(0)
            try:
                async with b.slot():
                    inside += 1
                    peak = max(peak, inside)
                    assert b.active <= max_concurrent
                    try:
                        for _ in range(work):
                            await asyncio.sleep(0)
                    finally:
                        inside -= 1
            except BulkheadFull:
                pass

        async def cancel_later(task: asyncio.Task[None], after: int) -> None:
            for _ in range(after):
                await asyncio.sleep(0)
            task.cancel()

        tasks = []
        for arrive, work, cancel in jobs:
            task = asyncio.create_task(job(arrive, work))
            tasks.append(task)
            if cancel is not None:
                tasks.append(asyncio.create_task(cancel_later(task, cancel)))
            assert b.pending <= max_pending
        await asyncio.gather(*tasks, return_exceptions=True)
        assert peak <= max_concurrent
        assert (b.active, b.pending) == (0, 0)

    asyncio.run(scenario())
