"""The embedded state store: one SQLite file, written by one thread.

SQLite is the default so that a single node keeps its aggregation groups and dedupe keys
across a crash with nothing to install. The connection lives on a dedicated thread (a
one-worker executor) so the event loop never waits on disk; WAL with ``synchronous=FULL``
means a write has been fsynced when its coroutine returns. Writes that read before they
write run in ``BEGIN IMMEDIATE`` transactions, so several processes sharing the file
(``sampan up`` with one worker per core) still see atomic counters and group counts.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sampan.store.base import GroupSummary, StateStore, StoreError

T = TypeVar("T")

MEMORY = ":memory:"
BUSY_TIMEOUT_MS = 30_000
"""How long a write waits for another process holding the file's write lock."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_keys (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS store_keys_expiry ON store_keys (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS store_members (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    grp       TEXT NOT NULL,
    member    TEXT NOT NULL,
    value     BLOB NOT NULL,
    added_at  REAL NOT NULL,
    UNIQUE (namespace, grp, member)
);
CREATE INDEX IF NOT EXISTS store_members_order ON store_members (namespace, grp, seq);
"""

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def check_ttl(ttl: float | None) -> None:
    """Every backend refuses the same TTLs, so a config that works on one works on all."""
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        raise StoreError(f"ttl must be a positive number of seconds, got {ttl!r}")


def encode_counter(value: int) -> bytes:
    """Counters are stored as ASCII decimal, as Redis does, so ``get`` reads them the same."""
    return str(value).encode("ascii")


def member_ids(members: Sequence[str]) -> list[str]:
    """A bare string is a ``Sequence[str]`` too: refuse it, or "m12" would mean m, 1 and 2."""
    if isinstance(members, str):
        raise TypeError("members must be a sequence of member ids, not a single string")
    return list(members)


def not_a_counter(namespace: str, key: str) -> StoreError:
    return StoreError(f"store key {namespace}/{key} holds a value that is not a counter")


def decode_counter(namespace: str, key: str, raw: bytes) -> int:
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise not_a_counter(namespace, key) from None


class SqliteStore(StateStore):
    """State in one SQLite file (or ``:memory:``), durable on return when it is a file."""

    def __init__(self, path: str | Path, url: str | None = None) -> None:
        self.path = str(path)
        self.url = url or ("memory://" if self.path == MEMORY else "sqlite:///" + self.path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    # -- the database thread ------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StoreError(f"state store {self.url}: not started (or closed)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._on_thread, fn)

    def _on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise StoreError(f"state store {self.url}: not started (or closed)")
        try:
            return fn(db)
        except BaseException as exc:
            # Never leave a transaction open: the next call would run inside it.
            if db.in_transaction:
                db.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"state store {self.url}: {exc}") from exc
            raise

    def _open(self) -> None:
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing is left open.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if self.path != MEMORY:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"state store {self.url}: cannot open ({exc})") from exc
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampan-store")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._close)
        finally:
            # Queued work has already run: the executor is FIFO and this job came last.
            executor.shutdown(wait=False)

    # -- keys ---------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        def run(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(
                f"SELECT value FROM store_keys WHERE namespace = ? AND key = ? AND {_LIVE}",
                (namespace, key, time.time()),
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._call(run)

    async def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        check_ttl(ttl)

        def run(db: sqlite3.Connection) -> None:
            expires_at = None if ttl is None else time.time() + ttl
            db.execute(
                "INSERT OR REPLACE INTO store_keys (namespace, key, value, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (namespace, key, value, expires_at),
            )

        await self._call(run)

    async def put_if_absent(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> bool:
        check_ttl(ttl)

        def run(db: sqlite3.Connection) -> bool:
            now = time.time()
            expires_at = None if ttl is None else now + ttl
            # One statement, so it is atomic across processes: the update only fires on an
            # expired row, and rowcount says whether anything was written.
            cursor = db.execute(
                "INSERT INTO store_keys (namespace, key, value, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (namespace, key) DO UPDATE"
                " SET value = excluded.value, expires_at = excluded.expires_at"
                " WHERE store_keys.expires_at IS NOT NULL AND store_keys.expires_at <= ?",
                (namespace, key, value, expires_at, now),
            )
            return cursor.rowcount == 1

        return await self._call(run)

    async def delete(self, namespace: str, key: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM store_keys WHERE namespace = ? AND key = ?", (namespace, key))

        await self._call(run)

    async def incr(
        self, namespace: str, key: str, amount: int = 1, ttl: float | None = None
    ) -> int:
        check_ttl(ttl)

        def run(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            row = db.execute(
                f"SELECT value, expires_at FROM store_keys"
                f" WHERE namespace = ? AND key = ? AND {_LIVE}",
                (namespace, key, now),
            ).fetchone()
            if row is None:
                # Missing or expired: a new counter, so a new window starts now.
                value, expires_at = amount, (None if ttl is None else now + ttl)
            else:
                value = decode_counter(namespace, key, bytes(row[0])) + amount
                expires_at = row[1]
            db.execute(
                "INSERT OR REPLACE INTO store_keys (namespace, key, value, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (namespace, key, encode_counter(value), expires_at),
            )
            db.execute("COMMIT")
            return value

        return await self._call(run)

    # -- groups -------------------------------------------------------------------------------

    @staticmethod
    def _summary(db: sqlite3.Connection, namespace: str, group: str) -> GroupSummary:
        count, first_at = db.execute(
            "SELECT count(*), min(added_at) FROM store_members WHERE namespace = ? AND grp = ?",
            (namespace, group),
        ).fetchone()
        return GroupSummary(group, int(count), float(first_at))

    async def group_add(
        self, namespace: str, group: str, member: str, value: bytes
    ) -> GroupSummary:
        def run(db: sqlite3.Connection) -> GroupSummary:
            # IMMEDIATE: the count read back includes exactly the adds serialised before it,
            # even when other processes add to the same group.
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO store_members (namespace, grp, member, value, added_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (namespace, group, member, value, time.time()),
            )
            summary = self._summary(db, namespace, group)
            db.execute("COMMIT")
            return summary

        return await self._call(run)

    async def group_members(self, namespace: str, group: str) -> list[tuple[str, bytes]]:
        def run(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
            rows = db.execute(
                "SELECT member, value FROM store_members WHERE namespace = ? AND grp = ?"
                " ORDER BY seq",
                (namespace, group),
            ).fetchall()
            return [(str(member), bytes(value)) for member, value in rows]

        return await self._call(run)

    async def group_remove(
        self, namespace: str, group: str, members: Sequence[str] | None = None
    ) -> None:
        chosen = None if members is None else member_ids(members)

        def run(db: sqlite3.Connection) -> None:
            if chosen is None:
                db.execute(
                    "DELETE FROM store_members WHERE namespace = ? AND grp = ?",
                    (namespace, group),
                )
                return
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "DELETE FROM store_members WHERE namespace = ? AND grp = ? AND member = ?",
                [(namespace, group, member) for member in chosen],
            )
            db.execute("COMMIT")

        await self._call(run)

    async def groups(self, namespace: str) -> list[GroupSummary]:
        def run(db: sqlite3.Connection) -> list[GroupSummary]:
            rows = db.execute(
                "SELECT grp, count(*), min(added_at) FROM store_members WHERE namespace = ?"
                " GROUP BY grp ORDER BY min(added_at), min(seq)",
                (namespace,),
            ).fetchall()
            return [GroupSummary(str(g), int(n), float(first)) for g, n, first in rows]

        return await self._call(run)

    # -- maintenance --------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        def run(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM store_keys WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (time.time(),),
            )
            return cursor.rowcount

        return await self._call(run)
