"""The PostgreSQL state store: shared, durable state for nodes that scale out.

A write returns once its transaction has committed, i.e. it is as durable as the server's
``synchronous_commit`` makes commits. Times (expiry and when a member was added) come from
the database's clock, so nodes with drifting clocks still agree on what has expired.
Changes to a group serialise on a transaction-scoped advisory lock of that group, so the
count returned by ``group_add`` is exact even when several nodes add to one group at once
(which is what lets an aggregator complete a group exactly once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from sampan.store.base import GroupSummary, StateStore, StoreError
from sampan.store.factory import redact_url
from sampan.store.sqlite import check_ttl, decode_counter, member_ids, not_a_counter

POOL_MIN = 1
POOL_MAX = 4
_LOCK_SCHEMA = 0x53504E01
"""Advisory lock class held while creating tables, so concurrent first starts do not race."""
_LOCK_GROUP = 0x53504E02
"""Advisory lock class of groups (second key: a hash of namespace and group)."""

_NOW = "extract(epoch FROM clock_timestamp())::float8"
_LIVE = f"(expires_at IS NULL OR expires_at > {_NOW})"

_SCHEMA = f"""
SELECT pg_advisory_xact_lock({_LOCK_SCHEMA}, 0);
CREATE TABLE IF NOT EXISTS sampan_store_keys (
    namespace  text NOT NULL,
    key        text NOT NULL,
    value      bytea NOT NULL,
    expires_at double precision,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS sampan_store_keys_expiry ON sampan_store_keys (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS sampan_store_members (
    namespace text NOT NULL,
    grp       text NOT NULL,
    member    text NOT NULL,
    value     bytea NOT NULL,
    seq       bigserial NOT NULL,
    added_at  double precision NOT NULL,
    PRIMARY KEY (namespace, grp, member)
);
CREATE INDEX IF NOT EXISTS sampan_store_members_order
    ON sampan_store_members (namespace, grp, seq);
"""

_PUT = f"""
INSERT INTO sampan_store_keys (namespace, key, value, expires_at)
VALUES ($1, $2, $3, {_NOW} + $4::float8)
ON CONFLICT (namespace, key) DO UPDATE
SET value = excluded.value, expires_at = excluded.expires_at
"""

# The update branch fires only over an expired row; RETURNING yields a row iff we wrote.
_PUT_IF_ABSENT = f"""
INSERT INTO sampan_store_keys AS k (namespace, key, value, expires_at)
VALUES ($1, $2, $3, {_NOW} + $4::float8)
ON CONFLICT (namespace, key) DO UPDATE
SET value = excluded.value, expires_at = excluded.expires_at
WHERE k.expires_at IS NOT NULL AND k.expires_at <= {_NOW}
RETURNING 1
"""

# An expired counter restarts (value and window); a live one keeps its expiry.
_INCR = f"""
INSERT INTO sampan_store_keys AS k (namespace, key, value, expires_at)
VALUES ($1, $2, convert_to($3::bigint::text, 'UTF8'), {_NOW} + $4::float8)
ON CONFLICT (namespace, key) DO UPDATE
SET value = CASE
        WHEN k.expires_at IS NOT NULL AND k.expires_at <= {_NOW} THEN excluded.value
        ELSE convert_to((convert_from(k.value, 'UTF8')::bigint + $3::bigint)::text, 'UTF8')
    END,
    expires_at = CASE
        WHEN k.expires_at IS NOT NULL AND k.expires_at <= {_NOW} THEN excluded.expires_at
        ELSE k.expires_at
    END
RETURNING value
"""

_LOCK_GROUP_SQL = f"SELECT pg_advisory_xact_lock({_LOCK_GROUP}, hashtext($1 || chr(31) || $2))"


class PostgresStore(StateStore):
    """State in two PostgreSQL tables (``postgresql://`` or ``postgres://`` URLs)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._shown = redact_url(url)
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(self.url, min_size=POOL_MIN, max_size=POOL_MAX)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise StoreError(f"state store {self._shown}: cannot connect ({exc})") from exc
        self._pool = pool
        try:
            async with self._conn() as conn, conn.transaction():
                await conn.execute(_SCHEMA)
        except BaseException:
            self._pool = None
            await pool.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection; database and connection failures become ``StoreError``."""
        if self._pool is None:
            raise StoreError(f"state store {self._shown}: not started (or closed)")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"state store {self._shown}: {exc}") from exc

    # -- keys ---------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                f"SELECT value FROM sampan_store_keys"
                f" WHERE namespace = $1 AND key = $2 AND {_LIVE}",
                namespace,
                key,
            )
        return None if value is None else bytes(value)

    async def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        check_ttl(ttl)
        async with self._conn() as conn:
            await conn.execute(_PUT, namespace, key, value, ttl)

    async def put_if_absent(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> bool:
        check_ttl(ttl)
        async with self._conn() as conn:
            written = await conn.fetchval(_PUT_IF_ABSENT, namespace, key, value, ttl)
        return written is not None

    async def delete(self, namespace: str, key: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM sampan_store_keys WHERE namespace = $1 AND key = $2", namespace, key
            )

    async def incr(
        self, namespace: str, key: str, amount: int = 1, ttl: float | None = None
    ) -> int:
        check_ttl(ttl)
        try:
            async with self._conn() as conn:
                raw = await conn.fetchval(_INCR, namespace, key, amount, ttl)
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.DataError):
                # Not a decimal number (or out of bigint's range): the same error as SQLite's.
                raise not_a_counter(namespace, key) from exc.__cause__
            raise
        return decode_counter(namespace, key, bytes(raw))

    # -- groups -------------------------------------------------------------------------------

    async def group_add(
        self, namespace: str, group: str, member: str, value: bytes
    ) -> GroupSummary:
        async with self._conn() as conn, conn.transaction():
            await conn.execute(_LOCK_GROUP_SQL, namespace, group)
            await conn.execute(
                f"INSERT INTO sampan_store_members (namespace, grp, member, value, added_at)"
                f" VALUES ($1, $2, $3, $4, {_NOW}) ON CONFLICT DO NOTHING",
                namespace,
                group,
                member,
                value,
            )
            row = await conn.fetchrow(
                "SELECT count(*), min(added_at) FROM sampan_store_members"
                " WHERE namespace = $1 AND grp = $2",
                namespace,
                group,
            )
        assert row is not None  # an aggregate always yields one row
        return GroupSummary(group, int(row[0]), float(row[1]))

    async def group_members(self, namespace: str, group: str) -> list[tuple[str, bytes]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT member, value FROM sampan_store_members"
                " WHERE namespace = $1 AND grp = $2 ORDER BY seq",
                namespace,
                group,
            )
        return [(str(row[0]), bytes(row[1])) for row in rows]

    async def group_remove(
        self, namespace: str, group: str, members: Sequence[str] | None = None
    ) -> None:
        chosen = None if members is None else member_ids(members)
        async with self._conn() as conn, conn.transaction():
            await conn.execute(_LOCK_GROUP_SQL, namespace, group)
            if chosen is None:
                await conn.execute(
                    "DELETE FROM sampan_store_members WHERE namespace = $1 AND grp = $2",
                    namespace,
                    group,
                )
            else:
                await conn.execute(
                    "DELETE FROM sampan_store_members"
                    " WHERE namespace = $1 AND grp = $2 AND member = ANY($3::text[])",
                    namespace,
                    group,
                    chosen,
                )

    async def groups(self, namespace: str) -> list[GroupSummary]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT grp, count(*), min(added_at) FROM sampan_store_members"
                " WHERE namespace = $1 GROUP BY grp ORDER BY min(added_at), min(seq)",
                namespace,
            )
        return [GroupSummary(str(row[0]), int(row[1]), float(row[2])) for row in rows]

    # -- maintenance --------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        async with self._conn() as conn:
            purged = await conn.fetchval(
                f"WITH gone AS (DELETE FROM sampan_store_keys"
                f" WHERE expires_at IS NOT NULL AND expires_at <= {_NOW} RETURNING 1)"
                f" SELECT count(*) FROM gone"
            )
        return int(purged)
