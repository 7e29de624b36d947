"""Review of batched flows (Flow.handle_batch, the Outbox, BatchConsumer): an output queued in
the batch's outbox is what the message was when it was sent, and each message is settled
only once all its outputs are durable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from unittest import mock

import pytest
from flow_case import flows_config, run_flow_case

from sampan.bus.base import Bus, BusError, DeadLetter, OutgoingMessage
from sampan.bus.factory import open_bus
from sampan.config import parse_config_text
from sampan.flows.service import FlowService
from sampan.observe.metrics import Metrics
from sampan.store.factory import open_store

PublishBatch = Callable[[str, Sequence[OutgoingMessage]], Awaitable[list[int]]]


@asynccontextmanager
async def running_flow(
    tmp_path: Path, steps: str, publish_batch: Callable[[PublishBatch], PublishBatch]
) -> AsyncIterator[tuple[Bus, FlowService]]:
    """Flow ``f`` (``in`` -> steps) started on an in-memory bus whose ``publish_batch`` is
    wrapped by ``publish_batch`` (to fail or hold publishes); the caller stops the flow."""
    config = parse_config_text(flows_config(steps), base_dir=tmp_path)
    metrics = Metrics()
    bus = open_bus("memory://", metrics=metrics)
    store = open_store("memory://", tmp_path)
    await bus.start()
    await store.start()
    service = FlowService(
        config.flows,
        bus=bus,
        store=store,
        metrics=metrics,
        base_dir=tmp_path,
        data_dir=tmp_path,
        node="review",
        default_retry=config.bus.retry.model_copy(update={"initial_backoff": 0.01}),
        lease_seconds=5.0,
        start_sources=False,
    )
    try:
        with mock.patch.object(bus, "publish_batch", publish_batch(bus.publish_batch)):
            await service.start()
            yield bus, service
    finally:
        await store.close()
        await bus.close()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_output_in_the_outbox_keeps_the_headers_it_was_sent_with(
    tmp_path: Path,
) -> None:
    """A step after a ``to`` changes the message's headers in place; the output already
    queued in the batch's outbox must not change with them (it would have been published
    as it was, one message at a time)."""
    config = flows_config(
        "      - set_headers: {stage: \"'early'\"}\n"
        "      - to: {topic: first}\n"
        "      - set_headers: {stage: \"'late'\"}\n"
        "      - to: {topic: second}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "headers as sent",
            "input": [{"key": "a", "data": {"n": 1}}],
            "expect": {
                "first": [{"data": {"n": 1}, "headers": {"stage": "early"}}],
                "second": [{"data": {"n": 1}, "headers": {"stage": "late"}}],
            },
        },
    )
    assert result.passed, result.problems


async def test_a_stop_that_cancels_a_batch_in_its_flush_cancels_its_waiting_messages(
    tmp_path: Path,
) -> None:
    """The grace ends while a batch's outbox flush hangs: the worker is cancelled and the
    delivery handed back. Its message that went on waiting (in a task of its own) must stop
    too, not run on after the stop and publish beside the redelivered copy."""
    published: list[str] = []
    flushing = asyncio.Event()

    def wrap(real: PublishBatch) -> PublishBatch:
        async def publish_batch(topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
            if topic == "before":
                flushing.set()
                await asyncio.sleep(3600)  # the bus does not answer
            if topic != "in":
                published.append(topic)
            return await real(topic, messages)

        return publish_batch

    # The wait outlasts the stop.
    steps = "      - to: {topic: before}\n      - delay: 2s\n      - to: {topic: after}\n"
    async with running_flow(tmp_path, steps, wrap) as (bus, service):
        await bus.publish("in", b'{"n": 1}', key="a")
        await asyncio.wait_for(flushing.wait(), 5)
        waits_until = time.monotonic() + 2.3
        await service.stop(0.05)
        await asyncio.sleep(waits_until - time.monotonic())
        assert published == []


async def test_a_message_that_waits_is_counted_once_in_the_flow_metrics(tmp_path: Path) -> None:
    """A message that goes on after its batch is observed when it ends (with its outcome),
    not also as a success with its batch: two messages are two units of work."""
    (tmp_path / "n.json").write_text('{"properties": {"n": {"maximum": 3}}}')
    steps = "      - delay: 10ms\n      - validate: {schema: n.json}\n"
    async with running_flow(tmp_path, steps, lambda real: real) as (bus, service):
        await bus.publish_batch(
            "in", [OutgoingMessage(b'{"n": 1}', key="a"), OutgoingMessage(b'{"n": 9}', key="b")]
        )
        flow = service.flows[0]
        quartet = flow.ctx.metrics.target("flow", flow.name)
        await until(lambda: quartet.snapshot().errors >= 1)
        await asyncio.sleep(0.1)
        await service.stop(1.0)
        snapshot = quartet.snapshot()
    assert (snapshot.count, snapshot.errors) == (2, 1)


async def test_a_dead_letter_for_an_output_the_bus_refuses_names_the_to_step(
    tmp_path: Path,
) -> None:
    """Dead letters name the failing step (see `sampan.flows.flow`), also when the output
    was refused as part of its batch's outbox."""
    config = flows_config(
        "      - set_headers: {sampan-forged: \"'x'\"}\n      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "refused output",
            "input": [{"key": "a", "data": {"n": 1}}],
            "expect": {"dlq": [{"error_contains": "steps[1].to: "}]},
        },
    )
    assert result.passed, result.problems


@pytest.mark.parametrize(
    "steps",
    [
        "      - to: {topic: out}\n",
        "      - to: {topic: out}\n      - delay: 1ms\n",
        "      - delay: 1ms\n      - to: {topic: out}\n",
    ],
    ids=["outbox", "outbox_then_waits", "in_the_step"],
)
async def test_a_to_that_fails_at_flush_counts_as_a_step_error(tmp_path: Path, steps: str) -> None:
    """The bus refuses every publish to ``out``: whether the ``to`` failed in its step (after
    a wait the outbox is closed) or when its batch's outbox was flushed, each failed attempt
    is a step error in the flow's metrics, and the dead letter names the step."""

    def wrap(real: PublishBatch) -> PublishBatch:
        async def publish_batch(topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
            if topic == "out":
                raise BusError("the bus is down")
            return await real(topic, messages)

        return publish_batch

    async with running_flow(tmp_path, steps, wrap) as (bus, service):
        await bus.publish("in", b'{"n": 1}', key="a")
        letters: list[DeadLetter] = []
        while not letters:  # dead-lettered after max_attempts (2)
            await asyncio.sleep(0.01)
            letters = await asyncio.wait_for(bus.dlq_list("in"), 5)
        await service.stop(1.0)
        step_errors = service.flows[0].ctx.metrics.counter(
            "sampan_flow_step_errors", "Step failures (before retries).", flow="f"
        )
    label = "steps[1].to" if steps.startswith("      - delay") else "steps[0].to"
    assert [letter.error.split(": ")[1] for letter in letters] == [label]
    assert step_errors.value == 2  # one per failed delivery, as for any failing step
