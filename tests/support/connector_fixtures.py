"""Fixtures of the connector tests (unit and live): an in-memory bus, a context, and an emit
that records. Each connector test directory's conftest imports them from here."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from sampan.bus.base import Bus, Delivery, OutgoingMessage
from sampan.bus.factory import open_bus
from sampan.flows.endpoint import EndpointContext
from sampan.observe.metrics import Metrics
from sampan.store.base import StateStore

TOPIC = "flow.f1.in"


class Emitter:
    """An ``Emit`` publishing to the memory bus; ``fail`` makes the next calls raise, before
    (``after=False``) or after (``after=True``) the publish.

    Stands in for the flow engine's ingress emit. The bus refuses ``sampan-`` headers from
    ordinary publishers, so this one publishes without headers and keeps every message it
    was given in ``messages`` (headers included) for the tests to inspect."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.messages: list[OutgoingMessage] = []
        self.calls = 0
        self.fail = 0
        self.after = False
        self._groups = itertools.count()

    async def __call__(self, messages: Sequence[OutgoingMessage]) -> None:
        self.calls += 1
        if self.fail and not self.after:
            self.fail -= 1
            raise RuntimeError("emit failed (test)")
        self.messages.extend(messages)
        await self.bus.publish_batch(TOPIC, [replace(m, headers=None) for m in messages])
        if self.fail and self.after:
            self.fail -= 1
            raise RuntimeError("crashed after emit (test)")

    async def published(self) -> list[Delivery]:
        """Everything on the topic (a fresh group per call); in order per key."""
        group = f"check{next(self._groups)}"
        try:
            await self.bus.create_group(TOPIC, group, start="earliest")
        except Exception:
            return []
        out: list[Delivery] = []
        while True:
            batch = await self.bus.fetch(
                TOPIC, group, consumer="t", max_messages=1000, lease_seconds=60
            )
            if not batch:
                return out
            out.extend(batch)
            await self.bus.ack(batch)  # per-key ordering holds back a key's next until acked


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    bus = open_bus("memory://")
    await bus.start()
    await bus.create_topic(TOPIC)
    yield bus
    await bus.close()


@pytest.fixture
def emitter(bus: Bus) -> Emitter:
    return Emitter(bus)


@pytest.fixture
def ctx(tmp_path: Path, bus: Bus) -> EndpointContext:
    return EndpointContext(
        flow="f1",
        bus=bus,
        store=cast(StateStore, object()),  # no connector here uses the store
        metrics=Metrics(),
        base_dir=tmp_path,
        data_dir=tmp_path / "data",
    )
