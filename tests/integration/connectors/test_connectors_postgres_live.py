"""Outbox source and table sink against the local PostgreSQL (127.0.0.1:5432, db test)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from sampan.flows.connectors import postgres_outbox, postgres_table
from sampan.flows.connectors.postgres_outbox import (
    HEADER_OUTBOX_ID,
    HEADER_OUTBOX_TOPIC,
    OutboxSource,
    create_outbox_table,
)
from sampan.flows.message import FlowMessage

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not reachable(5432), reason="no PostgreSQL on 127.0.0.1:5432")


@pytest.fixture
async def conn() -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(DSN)
    yield connection
    await connection.close()


@pytest.fixture
async def outbox(conn: asyncpg.Connection[Any]) -> AsyncIterator[str]:
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    await create_outbox_table(conn, table, notify=f"{table}_new")
    yield table
    await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    await conn.execute(f'DROP FUNCTION IF EXISTS "{table}_notify"()')


def make_source(ctx, table: str, **options: object) -> OutboxSource:
    config = postgres_outbox.OutboxConfig.model_validate(
        {"outbox": table, "dsn": DSN, "poll": "50ms", **options}
    )
    built = postgres_outbox.SOURCE.build(config, ctx)
    assert isinstance(built, OutboxSource)
    return built


async def insert(conn: asyncpg.Connection[Any], table: str, count: int, start: int = 0) -> None:
    await conn.executemany(
        f'INSERT INTO "{table}" (topic, key, payload, headers) VALUES ($1, $2, $3, $4)',
        [
            ("orders", f"c{i % 7}", orjson.dumps({"n": i}).decode(), '{"x-src": "app"}')
            for i in range(start, start + count)
        ],
    )


async def unpublished(conn: asyncpg.Connection[Any], table: str) -> int:
    return int(await conn.fetchval(f'SELECT count(*) FROM "{table}" WHERE published_at IS NULL'))


async def test_rows_emitted_in_order_with_headers(ctx, emitter, conn, outbox: str) -> None:
    await insert(conn, outbox, 5)
    source = make_source(ctx, outbox)
    assert await source.poll_once(emitter) == 5
    await source.stop()
    published = await emitter.published()
    assert [orjson.loads(d.value)["n"] for d in published] == [0, 1, 2, 3, 4]
    assert [d.key for d in published] == ["c0", "c1", "c2", "c3", "c4"]
    first = emitter.messages[0]
    assert first.headers is not None
    assert first.headers["x-src"] == "app" and first.headers[HEADER_OUTBOX_TOPIC] == "orders"
    assert first.dedupe_key == f"outbox:{outbox}:{first.headers[HEADER_OUTBOX_ID]}"
    assert await unpublished(conn, outbox) == 0


async def test_failed_emit_leaves_rows_unpublished(ctx, emitter, conn, outbox: str) -> None:
    await insert(conn, outbox, 3)
    source = make_source(ctx, outbox)
    emitter.fail = 1
    with pytest.raises(RuntimeError):
        await source.poll_once(emitter)
    assert await unpublished(conn, outbox) == 3
    emitter.fail, emitter.after = 1, True  # published, then the commit never happens
    with pytest.raises(RuntimeError):
        await source.poll_once(emitter)
    assert await unpublished(conn, outbox) == 3
    assert await source.poll_once(emitter) == 3  # emitted again: the dedupe key absorbs it
    await source.stop()
    assert len(await emitter.published()) == 3
    assert await unpublished(conn, outbox) == 0


@pytest.mark.parametrize("crashes", [0, 4], ids=["clean", "crash-after-emit"])
async def test_two_competing_sources_emit_each_row_once(
    ctx, emitter, conn, outbox: str, crashes: int
) -> None:
    """500 rows, two sources: each row lands on the bus once, also when some batches are
    published and then not committed (the rows are read and emitted again)."""
    emitter.fail, emitter.after = crashes, True
    sources = [make_source(ctx, outbox, batch=25), make_source(ctx, outbox, batch=25)]
    for source in sources:
        await source.start(emitter)
    try:
        for start in range(0, 500, 100):
            await insert(conn, outbox, 100, start)
        for _ in range(400):
            if await unpublished(conn, outbox) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        for source in sources:
            await source.stop()
    assert await unpublished(conn, outbox) == 0
    published = await emitter.published()
    numbers = [orjson.loads(d.value)["n"] for d in published]
    assert sorted(numbers) == list(range(500))
    emitted_ids = [m.headers[HEADER_OUTBOX_ID] for m in emitter.messages if m.headers]
    assert len(set(emitted_ids)) == 500
    if not crashes:
        assert len(emitted_ids) == 500  # SKIP LOCKED: the two sources never overlap


async def test_notify_wakes_the_source(ctx, emitter, conn, outbox: str) -> None:
    source = make_source(ctx, outbox, poll="60s", listen=f"{outbox}_new")
    await source.start(emitter)
    try:
        await asyncio.sleep(0.5)  # first (empty) read done, now waiting up to 60 s
        await insert(conn, outbox, 1)
        for _ in range(60):
            if await emitter.published():
                break
            await asyncio.sleep(0.05)
    finally:
        await source.stop()
    assert len(await emitter.published()) == 1


async def test_delete_mode(ctx, emitter, conn, outbox: str) -> None:
    await insert(conn, outbox, 4)
    source = make_source(ctx, outbox, delete=True, batch=3)
    assert await source.poll_once(emitter) == 3
    assert await source.poll_once(emitter) == 1
    await source.stop()
    assert await conn.fetchval(f'SELECT count(*) FROM "{outbox}"') == 0


async def test_source_survives_a_missing_table(ctx, emitter) -> None:
    source = make_source(ctx, "no_such_outbox_table")
    await source.start(emitter)
    await asyncio.sleep(0.3)  # logs and retries, does not crash
    await source.stop()
    assert emitter.calls == 0


# ----------------------------------------------------------------------------------- sink


@pytest.fixture
async def table(conn: asyncpg.Connection[Any]) -> AsyncIterator[str]:
    name = f"sink_{uuid.uuid4().hex[:10]}"
    await conn.execute(
        f'CREATE TABLE "{name}" (order_id integer PRIMARY KEY, placed timestamptz, '
        "doc jsonb, tags text[], note text, total numeric(12, 2))"
    )
    yield name
    await conn.execute(f'DROP TABLE IF EXISTS "{name}"')


def make_sink(ctx, name: str, **options: object):
    config = postgres_table.TableConfig.model_validate(
        {
            "table": name,
            "dsn": DSN,
            "columns": {
                "order_id": "data.id",
                "placed": "data.at",
                "doc": "data",
                "tags": "data.tags",
                "note": "key",
                "total": "data.total",
            },
            **options,
        }
    )
    return postgres_table.SINK.build(config, ctx)


ORDER = {"id": 7, "at": "2025-01-31T08:00:00+07:00", "tags": ["a", 'b"c'], "total": 12.5}


async def test_sink_inserts_typed_row(ctx, conn, table: str) -> None:
    sink = make_sink(ctx, table)
    await sink.start()
    try:
        await sink.send(FlowMessage(ORDER, key="vip"))
    finally:
        await sink.stop()
    row = await conn.fetchrow(f'SELECT * FROM "{table}"')
    assert row is not None
    assert row["order_id"] == 7 and row["note"] == "vip" and str(row["total"]) == "12.50"
    assert row["placed"].isoformat() == "2025-01-31T01:00:00+00:00"
    assert orjson.loads(row["doc"]) == ORDER
    assert row["tags"] == ["a", 'b"c']


async def test_sink_conflicts(ctx, conn, table: str) -> None:
    skipping = make_sink(ctx, table, on_conflict="nothing", conflict_columns=["order_id"])
    strict = make_sink(ctx, table)
    await skipping.start()
    await strict.start()
    try:
        await skipping.send(FlowMessage(ORDER))
        await skipping.send(FlowMessage(ORDER))  # a retry: no-op
        with pytest.raises(RuntimeError, match="on_conflict: nothing"):
            await strict.send(FlowMessage(ORDER))
        with pytest.raises(ValueError, match="does not fit"):
            await strict.send(FlowMessage({**ORDER, "id": "seven"}))
    finally:
        await skipping.stop()
        await strict.stop()
    assert await conn.fetchval(f'SELECT count(*) FROM "{table}"') == 1


async def test_sink_names_missing_columns(ctx, table: str) -> None:
    config = postgres_table.TableConfig.model_validate(
        {"table": table, "dsn": DSN, "columns": {"order_id": "data.id", "nope": "data"}}
    )
    sink = postgres_table.SINK.build(config, ctx)
    with pytest.raises(ValueError, match="no column 'nope'"):
        await sink.start()
    await sink.stop()


async def test_source_reconnects_after_losing_its_connection(
    ctx, emitter, conn, outbox: str
) -> None:
    source = make_source(ctx, outbox, listen=f"{outbox}_new")
    await source.start(emitter)
    try:
        await insert(conn, outbox, 1)
        for _ in range(100):
            if len(await emitter.published()) == 1:
                break
            await asyncio.sleep(0.05)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND query LIKE $1",  # ours only: the name is unique
            f"%{outbox}%",
        )
        assert killed >= 1
        await insert(conn, outbox, 2, start=1)
        for _ in range(200):
            if await unpublished(conn, outbox) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await source.stop()
    assert await unpublished(conn, outbox) == 0
    assert len(await emitter.published()) == 3
