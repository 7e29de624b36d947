"""Appending with the topic's next offset known (``SqliteStore._append``): the update only
checks it while no other process wrote in between, and takes the offsets from the file
whenever one did, or when a transaction was rolled back."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sampan.bus.base import BusError, OutgoingMessage, Retention
from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
from sampan.bus.sqlite_schema import message_table, open_connection
from sampan.bus.sqlite_store import SqliteStore


def open_store(path: Path) -> SqliteStore:
    return SqliteStore(
        open_connection(str(path), durability="normal"),
        auto_create_topics=True,
        default_retention=Retention(),
        max_in_flight_per_group=100,
    )


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    """Two stores on one file, as two processes have."""
    first, second = open_store(tmp_path / "bus.db"), open_store(tmp_path / "bus.db")
    yield first, second
    first.conn.close()
    second.conn.close()


def publish(store: SqliteStore, count: int, *, commit: bool = True) -> list[int]:
    store.conn.execute("BEGIN IMMEDIATE")
    offsets = store.publish("t", [OutgoingMessage(b"x%d" % i) for i in range(count)], 1.0)
    store.conn.execute("COMMIT" if commit else "ROLLBACK")
    if commit:
        store.take_appended()
    else:
        store.rolled_back()
    return offsets


def stored(store: SqliteStore) -> tuple[list[int], int, int]:
    """Offsets in the table, and the topic row's next offset and message count."""
    topic_id, next_offset, messages = store.conn.execute(
        "SELECT id, next_offset, messages FROM topics WHERE name = 't'"
    ).fetchone()
    rows = store.conn.execute(f"SELECT offset FROM {message_table(topic_id)} ORDER BY offset")
    return [r[0] for r in rows], next_offset, messages


class CountingSteps:
    """Statements the store runs (a trace callback)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.seen: list[str] = []
        conn.set_trace_callback(self.seen.append)


def test_appends_in_a_row_check_the_offset_instead_of_returning_it(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, _ = stores
    assert publish(first, 3) == [0, 1, 2]
    steps = CountingSteps(first.conn)
    assert publish(first, 2) == [3, 4]
    updates = [s for s in steps.seen if s.startswith("UPDATE topics")]
    assert len(updates) == 1
    assert "RETURNING" not in updates[0]  # one step: nothing to fetch
    assert stored(first) == ([0, 1, 2, 3, 4], 5, 5)


def test_another_process_appending_in_between_is_noticed(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, second = stores
    assert publish(first, 3) == [0, 1, 2]
    assert publish(second, 2) == [3, 4]
    assert publish(first, 4) == [5, 6, 7, 8]
    assert publish(second, 1) == [9]
    assert publish(first, 1) == [10]
    assert stored(first) == (list(range(11)), 11, 11)


def test_a_topic_recreated_by_another_process_is_noticed(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, second = stores
    assert publish(first, 3) == [0, 1, 2]
    second.conn.execute("BEGIN IMMEDIATE")
    second.delete_topic("t")
    second.create_topic("t", None)
    second.publish("t", [OutgoingMessage(b"y")] * 3, 2.0)
    second.conn.execute("COMMIT")
    first.forget_cached_names()  # as a failed lookup would make it
    assert publish(first, 2) == [3, 4]
    assert stored(first) == ([0, 1, 2, 3, 4], 5, 5)
    # What it knows is of the new topic: its own appends from 3 on, under the new created_at.
    assert first._only_own_after(first.topic("t").id, 2)


def test_a_rolled_back_append_is_not_counted_on(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, second = stores
    assert publish(first, 3) == [0, 1, 2]
    assert publish(first, 4, commit=False) == [3, 4, 5, 6]
    # Another process then writes exactly the offsets that were rolled back: they are its.
    assert publish(second, 4) == [3, 4, 5, 6]
    assert not first._only_own_after(first.topic("t").id, 2)
    assert publish(first, 1) == [7]
    assert stored(first) == (list(range(8)), 8, 8)


def unbindable() -> OutgoingMessage:
    """A message whose value SQLite cannot bind: its append fails in the INSERT, after the
    topic's offsets were counted in the same transaction."""
    value: Any = [b"not", b"bytes"]
    return OutgoingMessage(value)


async def test_a_failed_operation_leaves_nothing_counted_on_and_hands_over_the_rest(
    tmp_path: Path,
) -> None:
    """A failed transaction is run again operation by operation (`SqliteBus._execute`): the
    failing one's offsets are not counted on afterwards, and what the others committed still
    reaches this process's consumers from memory (the file is looked at only every 10 s)."""
    url = f"sqlite:///{tmp_path / 'bus.db'}"
    first = SqliteBus(url, SqliteBusOptions(poll_interval=10.0))
    second = SqliteBus(url)
    await first.start()
    await second.start()
    try:
        await first.create_group("u", "g")
        await first.fetch("u", "g", consumer="c", max_messages=10, lease_seconds=10)
        assert await first.publish_batch("t", [OutgoingMessage(b"a")] * 3) == [0, 1, 2]
        # One transaction: the writer sleeps while both publishes queue behind it.
        asleep = first._call(lambda s, now: time.sleep(0.2))
        good = asyncio.ensure_future(first.publish_batch("u", [OutgoingMessage(b"u0")]))
        bad = asyncio.ensure_future(first.publish_batch("t", [unbindable()] * 4))
        await asleep
        assert await good == [0]
        with pytest.raises(BusError):
            await bad
        got = await first.fetch("u", "g", consumer="c", max_messages=10, lease_seconds=10)
        assert [d.value for d in got] == [b"u0"]  # handed over, not left for the next look
        # Another process then writes exactly the offsets that were rolled back.
        assert await second.publish_batch("t", [OutgoingMessage(b"b")] * 4) == [3, 4, 5, 6]
        assert first._store is not None
        topic_id = first._store.topic("t").id
        assert not await first._call(lambda s, now: s._only_own_after(topic_id, 2))
        assert await first.publish_batch("t", [OutgoingMessage(b"c")]) == [7]
    finally:
        await first.close()
        await second.close()
