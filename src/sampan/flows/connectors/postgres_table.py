"""table: insert one row per message into a PostgreSQL table.

Each column's value is a JMESPath expression over the message. Values are sent as text and
cast by PostgreSQL to the column's own type (looked up once from the catalog), so an ISO 8601
string fills a ``timestamptz``, a JSON object a ``jsonb``, a number a ``numeric``, a list an
array. ``send`` returns once the insert committed. With ``on_conflict: nothing`` a retried
message whose row is already there (same ``conflict_columns``) is a no-op: that makes the
sink idempotent when the table has a natural key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampan.flows.connectors._support import SqlColumn, SqlName, log, quote_name
from sampan.flows.endpoint import EndpointContext, EndpointKind, Sink
from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage


class TableConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: SqlName = Field(description="Table to insert into, `name` or `schema.name`.")
    dsn: str = Field(
        description="PostgreSQL connection URL, e.g. `postgresql://user@host:5432/db`; "
        "use `${VAR}` for passwords."
    )
    columns: dict[SqlColumn, Expression] = Field(
        min_length=1,
        description="Column name → JMESPath expression giving its value, e.g. "
        '`{order_id: data.id, body: data, source: headers."flow-flow"}`.',
    )
    on_conflict: Literal["nothing", "error"] = Field(
        "error",
        description="`nothing`: a row violating a unique constraint is skipped (the message "
        "counts as delivered). `error`: the insert fails and the message is retried, then "
        "dead-lettered.",
    )
    conflict_columns: list[SqlColumn] = Field(
        default_factory=list,
        description="With `on_conflict: nothing`, the unique columns to check (`ON CONFLICT "
        "(cols) DO NOTHING`); empty means any unique constraint.",
    )
    pool_size: int = Field(4, ge=1, le=100, description="Most connections the sink opens.")

    @model_validator(mode="after")
    def _conflict_columns_need_nothing(self) -> TableConfig:
        if self.conflict_columns and self.on_conflict != "nothing":
            raise ValueError("`conflict_columns` only applies with `on_conflict: nothing`")
        return self


def text_value(value: Any, pg_type: str) -> str | None:
    """A JSON value as the text PostgreSQL casts to ``pg_type``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, list) and pg_type.endswith("[]"):
        return array_literal(value)
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()


def array_literal(items: list[Any]) -> str:
    """A one-dimensional PostgreSQL array literal: ``['a', None, 'b"c']`` →
    ``{"a",NULL,"b\\"c"}``; nested lists become nested arrays."""
    out: list[str] = []
    for item in items:
        if item is None:
            out.append("NULL")
        elif isinstance(item, list):
            out.append(array_literal(item))
        else:
            text = text_value(item, "")
            assert text is not None
            out.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(out) + "}"


class TableSink(Sink):
    def __init__(self, config: TableConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._flow = ctx.flow
        self._columns = list(config.columns)
        self._values: list[Callable[[FlowMessage], Any]] = [
            evaluator(expr) for expr in config.columns.values()
        ]
        self._pool: asyncpg.Pool[Any] | None = None
        self._sql: str | None = None
        self._types: list[str] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            await self._prepare()
        except (OSError, asyncpg.exceptions.CannotConnectNowError) as exc:
            log.warning("table sink of flow %r: database not reachable yet: %s", self._flow, exc)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _prepare(self) -> tuple[asyncpg.Pool[Any], str]:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._config.dsn, min_size=1, max_size=self._config.pool_size
                )
            if self._sql is None:
                async with self._pool.acquire() as conn:
                    self._sql = await self._statement(conn)
            return self._pool, self._sql

    async def _statement(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> str:
        """The INSERT, with each value cast to its column's type; raises ValueError naming
        the columns the table does not have."""
        table = quote_name(self._config.table)
        try:
            rows = await conn.fetch(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type"
                " FROM pg_attribute a WHERE a.attrelid = $1::regclass"
                " AND a.attnum > 0 AND NOT a.attisdropped",
                table,
            )
        except asyncpg.exceptions.UndefinedTableError:
            raise ValueError(
                f"table sink of flow {self._flow!r}: table {self._config.table!r} does not exist"
            ) from None
        types = {row["attname"]: row["type"] for row in rows}
        missing = [c for c in (*self._columns, *self._config.conflict_columns) if c not in types]
        if missing:
            raise ValueError(
                f"table sink of flow {self._flow!r}: table {self._config.table!r} has no "
                f"column {', '.join(map(repr, missing))} (it has: {', '.join(sorted(types))})"
            )
        self._types = [types[c] for c in self._columns]
        names = ", ".join(quote_name(c) for c in self._columns)
        params = ", ".join(f"${i}::text::{t}" for i, t in enumerate(self._types, start=1))
        sql = f"INSERT INTO {table} ({names}) VALUES ({params})"
        if self._config.on_conflict == "nothing":
            target = ", ".join(quote_name(c) for c in self._config.conflict_columns)
            sql += f" ON CONFLICT ({target}) DO NOTHING" if target else " ON CONFLICT DO NOTHING"
        return sql

    async def send(self, message: FlowMessage) -> None:
        pool, sql = await self._prepare()
        args = [
            text_value(value(message), pg_type)
            for value, pg_type in zip(self._values, self._types, strict=True)
        ]
        try:
            await pool.execute(sql, *args)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise RuntimeError(
                f"table sink: row already in {self._config.table!r} ({exc.detail or exc}); "
                "set on_conflict: nothing to skip duplicates"
            ) from exc
        except asyncpg.exceptions.DataError as exc:
            raise ValueError(
                f"table sink: a value does not fit its column in {self._config.table!r}: {exc}"
            ) from exc


def _build(config: TableConfig, ctx: EndpointContext) -> Sink:
    return TableSink(config, ctx)


SINK: EndpointKind[TableConfig, Sink] = EndpointKind(
    key="table",
    config=TableConfig,
    build=_build,
    summary="Inserts one row per message into a PostgreSQL table.",
)
