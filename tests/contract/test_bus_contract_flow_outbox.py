"""Flows on every backend: a batch's topic outputs go out in one publish (see
`sampan.flows.outbox`); when that publish fails, the messages are retried through the bus, and
per-key order must survive the retry."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from unittest import mock

import pytest
from bus_contract_helpers import unique, wait_until

from sampan.bus.base import Bus, BusError, OutgoingMessage
from sampan.config import parse_config_text
from sampan.flows.service import FlowService
from sampan.observe.metrics import Metrics
from sampan.store.factory import open_store

KEYS = 4
PER_KEY = 12


@pytest.mark.parametrize("after_the_output", ["", "      - delay: 1ms\n"], ids=["now", "waits"])
async def test_a_failed_outbox_publish_keeps_per_key_order(
    bus: Bus,
    make_topic: Callable[[], Awaitable[str]],
    metrics: Metrics,
    tmp_path: Path,
    after_the_output: str,
) -> None:
    """Publishes of a flow's outputs fail now and then, before they reach the bus or after
    (a lost acknowledgement). The failed messages are retried; a later message of the same
    key must not be published before them: per key, the output topic holds every message,
    duplicates at most, never one out of order. (The next message of a key is leased only
    once the failed one is acked, see `Bus`; ``waits``: the messages go on after their
    batch, settled by the batch consumer when they end.)"""
    source, output = await make_topic(), await make_topic()
    await bus.create_group(output, "check")
    calls = 0
    real = bus.publish_batch

    async def flaky(topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
        nonlocal calls
        if topic != output:
            return await real(topic, messages)
        calls += 1
        if calls % 4 == 1:
            raise BusError("transient: the bus did not take it")
        offsets = await real(topic, messages)
        if calls % 4 == 3:
            raise BusError("transient: the acknowledgement was lost")
        return offsets

    config = parse_config_text(
        "bus: {retry: {max_attempts: 50, initial_backoff: 5ms, max_backoff: 20ms}}\n"
        f"flows:\n  - name: {unique('f')}\n    from: {{topic: {source}}}\n    steps:\n"
        f"      - to: {{topic: {output}}}\n{after_the_output}",
        base_dir=tmp_path,
    )
    store = open_store("memory://", tmp_path)
    await store.start()
    service = FlowService(
        config.flows,
        bus=bus,
        store=store,
        metrics=metrics,
        base_dir=tmp_path,
        data_dir=tmp_path,
        node="contract",
        default_retry=config.bus.retry,
        fetch_batch=16,
        lease_seconds=10.0,
        start_sources=False,
    )
    seen: dict[str, list[int]] = {f"k{k}": [] for k in range(KEYS)}
    try:
        with mock.patch.object(bus, "publish_batch", flaky):
            await service.start()
            await real(
                source,
                [
                    OutgoingMessage(json.dumps({"n": n}).encode(), key=f"k{k}")
                    for n in range(PER_KEY)
                    for k in range(KEYS)
                ],
            )

            async def all_out() -> bool:
                got = await bus.fetch(
                    output, "check", consumer="check", max_messages=500, lease_seconds=30
                )
                for d in got:
                    assert d.key is not None
                    seen[d.key].append(json.loads(d.value)["n"])
                await bus.ack(got)  # the next output of a key comes once this one is acked
                return all(set(ns) == set(range(PER_KEY)) for ns in seen.values())

            await wait_until(all_out, within=20, message="every output")
            await service.stop(2.0)
    finally:
        await store.close()
    assert calls > 4, "no publish failed"
    for key, ns in seen.items():
        assert ns == sorted(ns), f"{key}: outputs out of order: {ns}"
