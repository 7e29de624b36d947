"""Fixtures of the Bus contract suite: every test runs once per backend in ``BACKENDS``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from bus_contract_helpers import BACKEND_PARAMS, EXACT_RETENTION_TESTS, Backend, unique

from sampan.bus.base import Bus, Retention
from sampan.bus.factory import open_bus
from sampan.observe.metrics import Metrics


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    backend: Backend = request.param
    return backend


@pytest.fixture
def bus_url(backend: Backend, tmp_path: Path) -> str:
    return backend.url.format(tmp=tmp_path)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def bus(bus_url: str, metrics: Metrics) -> AsyncIterator[Bus]:
    """A started bus of the backend under test; closed after the test."""
    instance = open_bus(bus_url, metrics=metrics)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
async def open_another_bus(bus_url: str) -> AsyncIterator[Callable[[], Awaitable[Bus]]]:
    """Open (and start) another bus instance on the same URL; all are closed after the test."""
    opened: list[Bus] = []

    async def open_() -> Bus:
        instance = open_bus(bus_url)
        await instance.start()
        opened.append(instance)
        return instance

    yield open_
    for instance in opened:
        await instance.close()


@pytest.fixture
async def make_topic(bus: Bus) -> Callable[..., Awaitable[str]]:
    """Create a topic with a unique name (optionally with a retention); returns its name."""

    async def make(retention: Retention | None = None) -> str:
        name = unique("t")
        await bus.create_topic(name, retention=retention)
        return name

    return make


@pytest.fixture
async def topic(make_topic: Callable[..., Awaitable[str]]) -> str:
    """A fresh topic with a unique name."""
    return await make_topic()


@pytest.fixture
def group() -> str:
    return unique("g")


@pytest.fixture(autouse=True)
async def _redis_cleanup(backend: Backend, bus_url: str) -> AsyncIterator[None]:
    """Delete the keys a redis-backed test created (its URL carries a private prefix)."""
    yield
    if backend.name != "redis":
        return
    from sampan.bus.redis import delete_all_keys

    await delete_all_keys(bus_url)


@pytest.fixture(autouse=True)
def _capabilities(backend: Backend, request: pytest.FixtureRequest) -> None:
    """Skip, with the reason, tests of semantics the backend cannot provide."""
    name = request.node.originalname
    if not backend.exact_retention and name in EXACT_RETENTION_TESTS:
        pytest.skip(f"{backend.name} lacks exact_retention: {EXACT_RETENTION_TESTS[name]}")


@pytest.fixture(autouse=True)
async def _shared_server_cleanup(backend: Backend, bus_url: str) -> AsyncIterator[None]:
    """Delete the topics (streams) a test created on a shared server."""
    if not backend.shared_server:
        yield
        return
    probe = open_bus(bus_url)
    await probe.start()
    try:
        before = {t.name for t in await probe.topics()}
    finally:
        await probe.close()
    yield
    probe = open_bus(bus_url)
    await probe.start()
    try:
        for info in await probe.topics():
            if info.name not in before:
                await probe.delete_topic(info.name)
    finally:
        await probe.close()
