"""What only the server backends promise: the documented Redis key layout, and PostgreSQL
tables created safely by nodes starting at the same time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from store_contract_helpers import POSTGRES_URL, REDIS_URL

from sampan.store.postgres import PostgresStore
from sampan.store.redis import RedisStore


@pytest.fixture
async def redis_store(ns: str) -> AsyncIterator[tuple[RedisStore, aioredis.Redis]]:
    store = RedisStore(REDIS_URL)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await store.start()
    except Exception as exc:
        await client.aclose()
        pytest.skip(f"redis not reachable: {exc}")
    try:
        yield store, client
    finally:
        keys = [key async for key in client.scan_iter(match=f"sampan:store:{{{ns}*")]
        if keys:
            await client.delete(*keys)
        await store.close()
        await client.aclose()


@pytest.mark.redis
async def test_redis_key_layout(redis_store: tuple[RedisStore, aioredis.Redis], ns: str) -> None:
    store, client = redis_store
    await store.put(ns, "k", b"v", ttl=0.5)
    await store.incr(ns, "c")
    await store.group_add(ns, "g", "m", b"x")
    prefix = f"sampan:store:{{{ns}}}:"
    keys = sorted([k.decode() async for k in client.scan_iter(match=f"sampan:store:{{{ns}}}:*")])
    assert keys == sorted(
        prefix + suffix for suffix in ["k:k", "k:c", "gv:g", "gt:g", "go:g", "groups", "seq"]
    )
    assert 0 < await client.pttl(prefix + "k:k") <= 500
    assert await client.pttl(prefix + "k:c") == -1  # no TTL: never expires
    await store.group_remove(ns, "g")
    left = {k.decode() async for k in client.scan_iter(match=f"sampan:store:{{{ns}}}:g*")}
    assert left == set(), "an emptied group leaves no keys behind"


@pytest.mark.postgres
async def test_postgres_concurrent_first_starts_create_the_tables_once() -> None:
    schema = f"sampan_test_{uuid.uuid4().hex}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"postgres not reachable: {exc}")
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        # asyncpg passes unknown URL parameters on as server settings.
        url = f"{POSTGRES_URL}?search_path={schema}"
        stores = [PostgresStore(url) for _ in range(4)]
        await asyncio.gather(*(s.start() for s in stores))
        try:
            await stores[0].put("ns", "k", b"v")
            assert await stores[3].get("ns", "k") == b"v"
            tables = await admin.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
                " ORDER BY table_name",
                schema,
            )
            assert [t[0] for t in tables] == ["sampan_store_keys", "sampan_store_members"]
        finally:
            await asyncio.gather(*(s.close() for s in stores))
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
