"""The embedded bus: SQLite in WAL mode, driven by one database thread with group commit.

Every call becomes an operation on a queue. The database thread takes everything queued,
runs it in one transaction, commits (fsync with ``durability: full``), and only then
resolves the callers' futures — so a publish returns once durable, and a thousand
concurrent publishes, fetches and acks cost one commit instead of a thousand.

Consuming mostly stays off that thread: the groups this instance owns are served from memory
on the event loop (``sqlite_owned.py``), and the rows each commit inserted are handed to them
once committed, so a message published here reaches its consumer without being read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sampan.bus.base import (
    Bus,
    BusError,
    DeadLetter,
    Delivery,
    GroupInfo,
    OutgoingMessage,
    Retention,
    StartPosition,
    TopicInfo,
    check_replay_position,
)
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite_checkpoint import Checkpointer
from sampan.bus.sqlite_owned import OwnedGroups
from sampan.bus.sqlite_schema import open_connection
from sampan.bus.sqlite_store import (
    EncodedHeaders,
    SqliteStore,
    check_headers,
    check_topic_name,
    encode_all_headers,
)
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.bus.sqlite")

T = TypeVar("T")
MAX_OPERATIONS_PER_TRANSACTION = 4096
MAX_MESSAGES_PER_TRANSACTION = 256
UNSYNCED_BEFORE_NORMAL = 16
"""Commits in a row without a publish before they stop being fsynced (``_sync_for``)."""


@dataclass(frozen=True, slots=True)
class SqliteBusOptions:
    durability: str = "full"
    auto_create_topics: bool = True
    default_retention: Retention = field(default_factory=Retention)
    max_in_flight_per_group: int = 10_000
    poll_interval: float = 0.05


@dataclass(slots=True)
class _Operation:
    run: Callable[[SqliteStore, float], Any]
    future: asyncio.Future[Any]
    topics_touched: tuple[str, ...] = ()
    must_sync: bool = False
    """Publishes must survive a power cut before they are confirmed; a lost lease, ack or
    retry schedule only causes a redelivery, which at-least-once allows."""
    result: Any = None
    error: BaseException | None = None
    publish: tuple[str, Sequence[OutgoingMessage], EncodedHeaders | None] | None = None
    """A plain publish, which may be written together with adjacent ones to its topic."""
    weight: int = 1
    """Messages the operation writes: a transaction stops taking operations past
    ``MAX_MESSAGES_PER_TRANSACTION`` so that publishers keep the thread busy (see ``_run``)."""


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (SQLAlchemy's form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise BusError(f"not a sqlite bus URL: {url!r} (expected sqlite:///path/to/bus.db)")
    path = url[len(prefix) :].split("?", 1)[0]
    if not path:
        raise BusError(f"sqlite bus URL has no path: {url!r}")
    return path


class SqliteBus(Bus):
    def __init__(
        self, url: str, options: SqliteBusOptions | None = None, metrics: Metrics | None = None
    ) -> None:
        self.url = url
        self.path = sqlite_path_from_url(url)
        self.options = options or SqliteBusOptions()
        self.metrics = metrics or Metrics()
        self._queue: queue.SimpleQueue[_Operation | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: SqliteStore | None = None
        self._closed = False
        self._checkpointer: Checkpointer | None = None
        self._synchronous = True
        self._unsynced_in_a_row = 0
        self._owned = OwnedGroups(
            self._call,
            uuid.uuid4().hex,
            self.options.poll_interval,
            self.options.max_in_flight_per_group,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(
            open_connection, self.path, durability=self.options.durability
        )
        self._store = SqliteStore(
            conn,
            auto_create_topics=self.options.auto_create_topics,
            default_retention=self.options.default_retention,
            max_in_flight_per_group=self.options.max_in_flight_per_group,
        )
        if self.path != ":memory:":
            self._checkpointer = Checkpointer(self.path)
            self._checkpointer.prepare_writer(conn)
            self._checkpointer.start()
        self._synchronous = self.options.durability == "full"
        self._thread = threading.Thread(
            target=self._run, name=f"sampan-bus:{self.path}", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        await self._owned.close()  # hands the groups back while the thread still runs
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        assert self._store is not None
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            with contextlib.suppress(sqlite3.Error):  # leave a small WAL behind
                self._store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._store.conn.close()

    # -- the database thread ------------------------------------------------------------------

    def _run(self) -> None:
        store = self._store
        assert store is not None and self._loop is not None
        checkpointer = self._checkpointer
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            # Group commit, but bounded: when two large publishes wait, committing them
            # together would leave this thread idle while both publishers prepare their next
            # batch; committing them one after the other keeps both sides busy.
            weight = first.weight
            while (
                len(batch) < MAX_OPERATIONS_PER_TRANSACTION
                and weight < MAX_MESSAGES_PER_TRANSACTION
            ):
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                weight += nxt.weight
            if checkpointer is not None:
                checkpointer.between_transactions(store.conn)  # a WAL rewind runs here
            appended = self._execute(store, batch)
            try:
                self._loop.call_soon_threadsafe(self._settle, batch, appended)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            if stop:
                return

    def _sync_for(self, conn: sqlite3.Connection, batch: list[_Operation]) -> None:
        """fsync at commit when the batch publishes (with ``durability: full``); stop only
        after ``UNSYNCED_BEFORE_NORMAL`` batches in a row that do not. Each switch is a
        statement of its own, and beside a busy event loop a statement costs about 0.5 ms of
        waiting for the GIL (bench/bus_busy_loop.py), more than the fsync it saves (~0.3 ms,
        spent without the GIL): under load, where acks and leases commit between
        publishes, switching back and forth cost two statements every few commits."""
        if self.options.durability != "full":
            return
        if any(op.must_sync for op in batch):
            self._unsynced_in_a_row = 0
            if not self._synchronous:
                conn.execute("PRAGMA synchronous=FULL")
                self._synchronous = True
            return
        self._unsynced_in_a_row += 1
        if self._synchronous and self._unsynced_in_a_row >= UNSYNCED_BEFORE_NORMAL:
            conn.execute("PRAGMA synchronous=NORMAL")
            self._synchronous = False

    def _execute(self, store: SqliteStore, batch: list[_Operation]) -> list[Any] | None:
        """Run a batch in one transaction; returns the rows it appended once committed, or
        None when memory must be reloaded (a transaction failed)."""
        now = time.time()
        conn = store.conn
        self._sync_for(conn, batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._run_batch(store, batch, now)
            conn.execute("COMMIT")
            return store.take_appended()
        except Exception as exc:  # storage or a bug in one operation: isolate it, keep serving
            log.warning(
                "bus transaction of %d operations failed (%s); retrying one by one", len(batch), exc
            )
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        store.rolled_back()
        store.forget_cached_names()
        for op in batch:  # isolate the failing operation; the others still succeed
            op.result, op.error = None, None
            committed = len(store.appended)  # by the operations before: handed over below
            try:
                conn.execute("BEGIN IMMEDIATE")
                op.result = op.run(store, now)
                conn.execute("COMMIT")
            except Exception as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                store.rolled_back(keep=committed)
                if not isinstance(exc, BusError):
                    log.error("bus operation failed", exc_info=exc)
                    exc = BusError(f"bus operation failed: {type(exc).__name__}: {exc}")
                op.error = exc
        return store.take_appended()

    @staticmethod
    def _run_batch(store: SqliteStore, batch: list[_Operation], now: float) -> None:
        """Operations raise ``BusError`` before they write, so the others can still commit.
        Adjacent publishes to one topic are written together (one offset update, a few
        multi-row inserts): at a steady rate of single publishes, that is most of a batch."""
        i, n = 0, len(batch)
        while i < n:
            op = batch[i]
            topic = op.publish[0] if op.publish is not None else None
            j = i + 1
            while j < n and topic is not None:
                nxt = batch[j].publish
                if nxt is None or nxt[0] != topic:
                    break
                j += 1
            if j - i > 1 and topic is not None:
                group = batch[i:j]
                try:
                    results = store.publish_many(
                        topic, [(o.publish[1], o.publish[2]) for o in group if o.publish], now
                    )
                except BusError as exc:
                    for o in group:
                        o.error = exc
                else:
                    for o, result in zip(group, results, strict=True):
                        if isinstance(result, BusError):
                            o.error = result
                        else:
                            o.result = result
                i = j
                continue
            try:
                op.result = op.run(store, now)
            except BusError as exc:  # raised before any write: the rest can commit
                op.error = exc
            i += 1

    def _settle(self, batch: list[_Operation], appended: list[Any] | None) -> None:
        if appended:
            self._owned.published(appended)
        for op in batch:
            if op.future.done():
                continue
            if op.error is not None:
                op.future.set_exception(op.error)
            else:
                op.future.set_result(op.result)

    def _call(
        self,
        run: Callable[[SqliteStore, float], T],
        *topics: str,
        must_sync: bool = False,
        weight: int = 1,
        publish: tuple[str, Sequence[OutgoingMessage], EncodedHeaders | None] | None = None,
    ) -> asyncio.Future[T]:
        if self._thread is None:
            raise BusError("the bus is not started")
        if self._closed:
            raise BusError("the bus is closed")
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Operation(run, future, topics, must_sync, publish=publish, weight=weight))
        return future

    # -- topics -------------------------------------------------------------------------------

    async def create_topic(self, name: str, *, retention: Retention | None = None) -> None:
        check_topic_name(name)
        await self._call(lambda s, now: s.create_topic(name, retention), must_sync=True)

    async def delete_topic(self, name: str) -> None:
        await self._call(lambda s, now: s.delete_topic(name))
        self._owned.forget_topic(name)

    async def topics(self) -> list[TopicInfo]:
        return await self._call(lambda s, now: s.topics())

    async def enforce_retention(self) -> int:
        held = self._owned.held_offsets()
        return await self._call(lambda s, now: s.enforce_retention(now, held))

    # -- publish ------------------------------------------------------------------------------

    async def publish_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
        check_headers(messages)
        encoded = encode_all_headers(messages)
        offsets = await self._call(
            lambda s, now: s.publish(topic, messages, now, checked=True, encoded=encoded),
            topic,
            must_sync=True,
            weight=len(messages),
            publish=None if any(m.dedupe_key for m in messages) else (topic, messages, encoded),
        )
        self.metrics.target("topic", topic).count(len(offsets))
        return offsets

    # -- consume ------------------------------------------------------------------------------

    async def create_group(
        self, topic: str, group: str, *, start: StartPosition = "earliest"
    ) -> None:
        await self._call(lambda s, now: s.create_group(topic, group, start, now))

    async def fetch(
        self,
        topic: str,
        group: str,
        *,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        wait_seconds: float = 0.0,
    ) -> list[Delivery]:
        self._check_open()
        return await self._owned.fetch(
            topic, group, consumer, max_messages, lease_seconds, wait_seconds
        )

    def _check_open(self) -> None:
        if self._thread is None:
            raise BusError("the bus is not started")
        if self._closed:
            raise BusError("the bus is closed")

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        self._check_open()
        rest = self._owned.ack(deliveries)
        if rest:
            topics = tuple({d.topic for d in rest})
            removed = await self._call(lambda s, now: s.ack(rest, now), *topics)
            self._owned.rows_removed(removed)

    async def nack(self, delivery: Delivery, error: str, policy: RetryPolicy) -> bool:
        self._check_open()
        dead = await self._owned.nack(delivery, error, policy)
        if dead is not None:
            return dead
        nacked = await self._call(
            lambda s, now: s.nack(delivery, error, policy, now), delivery.topic
        )
        if nacked.removed is not None:
            self._owned.rows_removed([nacked.removed])
        self._owned.rows_changed([delivery])
        return nacked.dead

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        self._check_open()
        await self._owned.release_all(deliveries)

    async def extend(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        if not deliveries:
            return
        self._check_open()
        rest = await self._owned.extend(deliveries, lease_seconds)
        if rest:
            await self._call(lambda s, now: s.extend(rest, lease_seconds, now))
            self._owned.rows_changed(rest)

    # -- operations ---------------------------------------------------------------------------

    async def groups(self, topic: str) -> list[GroupInfo]:
        state = await self._call(lambda s, now: s.groups(topic))
        return self._owned.correct(state.first, state.end, state.groups)

    async def replay(
        self,
        topic: str,
        group: str,
        *,
        offset: int | None = None,
        timestamp: float | None = None,
    ) -> int:
        check_replay_position(offset, timestamp)
        below = self._owned.detach(topic, group)
        return await self._call(
            lambda s, now: s.replay(topic, group, offset, timestamp, below), topic
        )

    async def dlq_list(self, topic: str, *, limit: int = 100) -> list[DeadLetter]:
        return await self._call(lambda s, now: s.dlq_list(topic, limit))

    async def dlq_redrive(self, topic: str, *, offsets: Sequence[int] | None = None) -> int:
        return await self._call(
            lambda s, now: s.dlq_redrive(topic, offsets, now), topic, must_sync=True
        )
