"""outbox: the transactional outbox pattern, read from a PostgreSQL table.

The application writes its business change and an outbox row in one transaction, so an event
exists exactly when the change committed. This source then, in its own transaction, locks a
batch of unpublished rows (``FOR UPDATE SKIP LOCKED``, so competing sources on several nodes
take disjoint batches), emits them, marks them published (or deletes them, ``delete: true``)
and commits. A crash between the emit and the commit leaves the rows unpublished; they are
emitted again and the dedupe key ``outbox:<table>:<id>`` makes that second publish a no-op
(within the bus's dedupe TTL, 24 h). LISTEN/NOTIFY wakes the source as soon as a row is
committed; polling remains the fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field

from sampan.bus.base import OutgoingMessage
from sampan.flows.connectors._support import (
    Backoff,
    SqlColumn,
    SqlName,
    cancel_task,
    log,
    quote_name,
    wait_or_stop,
)
from sampan.flows.endpoint import Emit, EndpointContext, EndpointKind, Source
from sampan.units import Duration

HEADER_OUTBOX_ID: Final = "flow-outbox-id"
HEADER_OUTBOX_TOPIC: Final = "flow-outbox-topic"


def outbox_ddl(table: str, notify: str | None = None) -> list[str]:
    """The statements creating the outbox table (and, with ``notify``, a trigger sending a
    NOTIFY on that channel after every inserting statement)."""
    qualified = quote_name(table)
    schema, _, bare = table.rpartition(".")
    prefix = f"{quote_name(schema)}." if schema else ""
    statements = [
        f"CREATE TABLE IF NOT EXISTS {qualified} ("
        " id bigserial PRIMARY KEY,"
        " topic text,"
        " key text,"
        " payload jsonb NOT NULL,"
        " headers jsonb NOT NULL DEFAULT '{}'::jsonb,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " published_at timestamptz)",
        f"CREATE INDEX IF NOT EXISTS {quote_name(bare + '_unpublished')}"
        f" ON {qualified} (id) WHERE published_at IS NULL",
    ]
    if notify is not None:
        function = prefix + quote_name(bare + "_notify")
        statements += [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$BEGIN PERFORM pg_notify('{notify}', ''); RETURN NULL; END$$",
            f"CREATE OR REPLACE TRIGGER {quote_name(bare + '_notify')} AFTER INSERT ON"
            f" {qualified} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ]
    return statements


async def create_outbox_table(
    conn: asyncpg.Connection[Any], table: str, *, notify: str | None = None
) -> None:
    """Create the outbox table ``table`` (validated as ``[schema.]name``) if missing, with
    the partial index the source reads through; ``notify`` adds a NOTIFY trigger."""
    OutboxConfig.model_validate({"outbox": table, "dsn": "postgresql://", "listen": notify})
    async with conn.transaction():
        for statement in outbox_ddl(table, notify):
            await conn.execute(statement)


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outbox: SqlName = Field(
        description="Outbox table, `name` or `schema.name` (created with the DDL in the docs "
        "or `create_outbox_table`)."
    )
    dsn: str = Field(
        description="PostgreSQL connection URL, e.g. `postgresql://user@host:5432/db`; "
        "use `${VAR}` for passwords."
    )
    batch: int = Field(100, ge=1, le=10_000, description="Most rows emitted per transaction.")
    poll: Duration = Field(
        1.0,
        gt=0,
        description="How often the table is read when no NOTIFY arrives (the fallback when "
        "`listen` is set).",
    )
    listen: SqlColumn | None = Field(
        None,
        description="LISTEN channel that wakes the source at once; have the application (or "
        "the trigger `create_outbox_table(..., notify=...)` installs) `NOTIFY` it.",
    )
    delete: bool = Field(
        False,
        description="Delete published rows instead of setting `published_at` (which keeps "
        "them for audit until the application purges them).",
    )


class OutboxSource(Source):
    def __init__(self, config: OutboxConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._ctx = ctx
        table = quote_name(config.outbox)
        self._select = (
            f"SELECT id, topic, key, payload::text AS payload, headers::text AS headers"
            f" FROM {table} WHERE published_at IS NULL ORDER BY id"
            f" LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        self._settle = (
            f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"
            if config.delete
            else f"UPDATE {table} SET published_at = now() WHERE id = ANY($1::bigint[])"
        )
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection[Any] | None = None
        self._listener: asyncpg.Connection[Any] | None = None
        self._emitted = ctx.metrics.counter(
            "sampan_flow_outbox_emitted", "Outbox rows emitted.", flow=ctx.flow
        )

    async def start(self, emit: Emit) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(emit), name=f"outbox:{self._ctx.flow}")

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        await cancel_task(self._task)
        self._task = None
        for conn in (self._conn, self._listener):
            if conn is not None and not conn.is_closed():
                await conn.close()
        self._conn = self._listener = None

    async def _run(self, emit: Emit) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            self._wake.clear()  # before reading: a NOTIFY during the read wakes the next wait
            try:
                await self._ensure_connections()
                count = await self.poll_once(emit)
            except Exception as exc:
                log.error(
                    "outbox source of flow %r (table %s): %s (will retry)",
                    self._ctx.flow,
                    self._config.outbox,
                    exc,
                )
                await self._close_broken()
                await backoff.wait(self._stop)
                continue
            backoff.reset()
            if count < self._config.batch:  # a full batch: more are waiting, read again now
                await wait_or_stop(self._wake, self._config.poll)

    async def _ensure_connections(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._config.dsn)
        channel = self._config.listen
        if channel is not None and (self._listener is None or self._listener.is_closed()):
            self._listener = await asyncpg.connect(self._config.dsn)
            await self._listener.add_listener(channel, self._notified)
            self._wake.set()  # rows committed while we were not listening

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    async def _close_broken(self) -> None:
        """Drop connections that failed; a failed emit or query leaves a healthy connection
        (its transaction already rolled back), which is kept."""
        for conn in (self._conn, self._listener):
            if conn is not None and not conn.is_closed() and conn.is_in_transaction():
                conn.terminate()  # should not happen: the transaction block rolled back
        if self._conn is not None and self._conn.is_closed():
            self._conn = None
        if self._listener is not None and self._listener.is_closed():
            self._listener = None

    async def poll_once(self, emit: Emit) -> int:
        """Emit and settle one batch in one transaction; returns how many rows. If the emit
        raises, the transaction rolls back and the rows stay unpublished."""
        if self._conn is None:
            await self._ensure_connections()
        conn = self._conn
        assert conn is not None
        async with conn.transaction():
            rows = await conn.fetch(self._select, self._config.batch)
            if not rows:
                return 0
            await emit([self._message(row) for row in rows])
            await conn.execute(self._settle, [row["id"] for row in rows])
        self._emitted.inc(len(rows))
        return len(rows)

    def _message(self, row: asyncpg.Record) -> OutgoingMessage:
        headers: dict[str, str] = {}
        raw_headers = row["headers"]
        if raw_headers:
            decoded = orjson.loads(raw_headers)
            if isinstance(decoded, dict):
                headers = {
                    str(k): v if isinstance(v, str) else orjson.dumps(v).decode()
                    for k, v in decoded.items()
                }
        headers[HEADER_OUTBOX_ID] = str(row["id"])
        if row["topic"] is not None:
            headers[HEADER_OUTBOX_TOPIC] = row["topic"]
        return OutgoingMessage(
            row["payload"].encode(),
            key=row["key"],
            headers=headers,
            dedupe_key=f"outbox:{self._config.outbox}:{row['id']}",
        )


def _build(config: OutboxConfig, ctx: EndpointContext) -> Source:
    return OutboxSource(config, ctx)


SOURCE: EndpointKind[OutboxConfig, Source] = EndpointKind(
    key="outbox",
    config=OutboxConfig,
    build=_build,
    summary="Transactional outbox in PostgreSQL: each committed row emitted exactly once.",
)
