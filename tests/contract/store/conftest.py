"""Fixtures of the StateStore contract suite: every test runs once per backend in ``BACKENDS``.

Redis and PostgreSQL tests use the local servers and a namespace of their own; the
``_store_cleanup`` fixture deletes that namespace's keys and rows afterwards and touches
nothing else on the shared servers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from store_contract_helpers import BACKEND_PARAMS, StoreBackend

from sampan.store.base import StateStore, StoreError
from sampan.store.factory import open_store


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers `redis` but not `postgres`; --strict-markers needs both.
    config.addinivalue_line("markers", "postgres: needs the local PostgreSQL server")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the PostgreSQL runs `postgres` (before `-m` deselects by marks)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = None if callspec is None else callspec.params.get("store_backend")
        if isinstance(backend, StoreBackend) and backend.name == "postgres":
            item.add_marker("postgres")


# The parent conftest's autouse fixtures belong to the Bus suite (they need its `backend`);
# overriding them here keeps them out of this suite.
@pytest.fixture(autouse=True)
def _redis_cleanup() -> None:
    return None


@pytest.fixture(autouse=True)
def _capabilities() -> None:
    return None


@pytest.fixture(autouse=True)
def _shared_server_cleanup() -> None:
    return None


@pytest.fixture(params=BACKEND_PARAMS)
def store_backend(request: pytest.FixtureRequest) -> StoreBackend:
    backend: StoreBackend = request.param
    return backend


@pytest.fixture
def store_url(store_backend: StoreBackend, tmp_path: Path) -> str:
    return store_backend.url.format(tmp=tmp_path)


@pytest.fixture
def ns() -> str:
    """A namespace no other test (or run) uses; ``ns + "-anything"`` is the test's too."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def open_started(
    store_url: str, tmp_path: Path, store_backend: StoreBackend, ns: str
) -> AsyncIterator[Callable[[], Awaitable[StateStore]]]:
    """Open and start a store on the URL under test (call it twice for two instances sharing
    the state); all are closed, and the test's namespace cleaned, afterwards."""
    opened: list[StateStore] = []

    async def open_() -> StateStore:
        instance = open_store(store_url, tmp_path)
        try:
            await instance.start()
        except StoreError as exc:
            if store_backend.name in ("redis", "postgres") and "cannot connect" in str(exc):
                pytest.skip(f"{store_backend.name} server not reachable: {exc}")
            raise
        opened.append(instance)
        return instance

    yield open_
    for instance in opened:
        await instance.close()
    if opened:
        await _clean_namespace(store_backend.name, store_url, ns)


@pytest.fixture
async def store(open_started: Callable[[], Awaitable[StateStore]]) -> StateStore:
    """A started store of the backend under test."""
    return await open_started()


async def _clean_namespace(backend: str, url: str, ns: str) -> None:
    """Delete what the test wrote on a shared server: its namespaces only."""
    if backend == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"sampan:store:{{{ns}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    elif backend == "postgres":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            pattern = ns + "%"  # hex and '-' only: no LIKE wildcards inside
            await conn.execute("DELETE FROM sampan_store_keys WHERE namespace LIKE $1", pattern)
            await conn.execute("DELETE FROM sampan_store_members WHERE namespace LIKE $1", pattern)
        finally:
            await conn.close()
