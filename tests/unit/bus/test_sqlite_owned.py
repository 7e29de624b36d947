"""Group ownership, watermarks and the tail cache of the embedded bus (``sqlite_owned.py``).

One bus instance (one process) consumes a group at a time; others publish freely and take
the group over once its owner closed or its claim ran out.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sampan.bus.base import OutgoingMessage
from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
from sampan.bus.sqlite_schema import SCHEMA_VERSION, open_connection
from sampan.bus.sqlite_tail import Row, TailCache


@pytest.fixture
async def open_bus(tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[SqliteBus]]]:
    opened: list[SqliteBus] = []

    async def open_() -> SqliteBus:
        bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}")
        await bus.start()
        opened.append(bus)
        return bus

    yield open_
    for bus in opened:
        await bus.close()


async def test_one_instance_consumes_a_group_until_it_closes(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    first, second = await open_bus(), await open_bus()
    await first.create_group("t", "g")
    await second.publish_batch("t", [OutgoingMessage(b"%d" % i) for i in range(4)])
    got = await first.fetch("t", "g", consumer="a", max_messages=2, lease_seconds=10)
    assert [d.offset for d in got] == [0, 1]
    await first.ack(got[:1])
    assert await second.fetch("t", "g", consumer="b", max_messages=10, lease_seconds=10) == []
    await first.close()  # hands the group back: the unacked lease is delivered again
    got = await second.fetch("t", "g", consumer="b", max_messages=10, lease_seconds=10)
    assert [d.offset for d in got] == [1, 2, 3]


async def test_a_dead_owner_is_taken_over_when_its_claim_ends(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    """An owner that stops renewing (a killed process) loses the group after its leases."""
    first, second = await open_bus(), await open_bus()
    await first.create_group("t", "g")
    await first.publish_batch("t", [OutgoingMessage(b"x", key="k")])
    [d] = await first.fetch("t", "g", consumer="a", max_messages=5, lease_seconds=0.1)
    assert await second.fetch("t", "g", consumer="b", max_messages=5, lease_seconds=10) == []
    await asyncio.sleep(0.3)  # 2 x the lease: the claim is over
    [again] = await second.fetch("t", "g", consumer="b", max_messages=5, lease_seconds=10)
    assert (again.offset, again.value) == (d.offset, b"x")
    await first.ack([d])  # the former owner's late ack settles nothing
    assert await second.lag("t", "g") == 1
    await second.ack([again])
    assert await second.lag("t", "g") == 0


async def test_acks_persist_the_watermark(
    open_bus: Callable[[], Awaitable[SqliteBus]], tmp_path: Path
) -> None:
    bus = await open_bus()
    await bus.create_group("t", "g")
    await bus.publish_batch("t", [OutgoingMessage(b"x") for _ in range(10)])
    got = await bus.fetch("t", "g", consumer="a", max_messages=10, lease_seconds=10)
    await bus.ack(got[:7])
    for _ in range(100):  # written in the background
        conn = sqlite3.connect(tmp_path / "bus.db")
        (position,) = conn.execute("SELECT next_offset FROM groups").fetchone()
        conn.close()
        if position == 7:
            break
        await asyncio.sleep(0.01)
    assert position == 7


async def test_messages_of_other_processes_fill_the_gaps(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    """Offsets written by another instance between this one's are read from the file."""
    mine, other = await open_bus(), await open_bus()
    await mine.create_group("t", "g")
    await mine.publish_batch("t", [OutgoingMessage(b"m0")])
    await other.publish_batch("t", [OutgoingMessage(b"o1"), OutgoingMessage(b"o2")])
    await mine.publish_batch("t", [OutgoingMessage(b"m3")])
    seen: list[bytes] = []
    for _ in range(10):
        got = await mine.fetch("t", "g", consumer="a", max_messages=10, lease_seconds=10)
        seen += [d.value for d in got]
        await mine.ack(got)
        if len(seen) == 4:
            break
    assert seen == [b"m0", b"o1", b"o2", b"m3"]


async def test_only_topics_consumed_here_keep_what_this_process_publishes(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    """A topic read elsewhere (a flow's output) keeps no rows in memory; a consumed one keeps
    what is published once its first fetch came, and reads what came before from the file."""
    bus = await open_bus()
    await bus.create_group("in", "g")
    await bus.publish_batch("out", [OutgoingMessage(b"o%d" % i) for i in range(3)])
    await bus.publish_batch("in", [OutgoingMessage(b"before")])
    got = await bus.fetch("in", "g", consumer="a", max_messages=10, lease_seconds=10)
    assert [d.value for d in got] == [b"before"]
    await bus.ack(got)
    await bus.publish_batch("in", [OutgoingMessage(b"a1"), OutgoingMessage(b"a2")])
    tails = bus._owned._tails
    assert "out" not in tails
    assert len(tails["in"]) == 2
    got = await bus.fetch("in", "g", consumer="a", max_messages=10, lease_seconds=10)
    assert [d.value for d in got] == [b"a1", b"a2"]


async def test_a_backlog_in_the_file_is_read_batch_after_batch(tmp_path: Path) -> None:
    """Rows another process wrote (or written before a restart) come from the file; a read
    that fills its batch is followed by the next at once, not after the poll interval (which
    had capped catching up at one batch per 50 ms, ~5,000 msg/s)."""
    path = f"sqlite:///{tmp_path / 'bus.db'}"
    writer = SqliteBus(path)
    reader = SqliteBus(path, SqliteBusOptions(poll_interval=30.0))
    await writer.start()
    await reader.start()
    try:
        await reader.create_group("t", "g")
        for lo in range(0, 1000, 250):
            await writer.publish_batch(
                "t", [OutgoingMessage(b"%d" % i, key=f"k{i % 7}") for i in range(lo, lo + 250)]
            )
        seen: list[int] = []
        async with asyncio.timeout(10):  # a read per poll interval would take 5 minutes
            while len(seen) < 1000:
                got = await reader.fetch(
                    "t", "g", consumer="c", max_messages=100, lease_seconds=30, wait_seconds=5
                )
                seen += [d.offset for d in got]
                await reader.ack(got)
        assert sorted(seen) == list(range(1000))
    finally:
        await reader.close()
        await writer.close()


def test_version_2_files_are_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '2');"
        "CREATE TABLE groups (id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,"
        " name TEXT NOT NULL, next_offset INTEGER NOT NULL, created_at REAL NOT NULL,"
        " UNIQUE (topic_id, name));"
        "INSERT INTO groups VALUES (1, 1, 'g', 5, 0);"
    )
    conn.close()
    migrated = open_connection(path, durability="normal")
    row = migrated.execute("SELECT next_offset, owner, owner_until, epoch FROM groups").fetchone()
    version = migrated.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    migrated.close()
    assert row == (5, None, 0, 0)
    assert int(version[0]) == SCHEMA_VERSION == 3


def rows(first: int, count: int) -> list[Row]:
    return [(o, None, b"v", None, 0.0, None, None, 1) for o in range(first, first + count)]


def test_tail_cache_reads_across_chunks_and_stops_at_gaps() -> None:
    tail = TailCache()
    tail.add(rows(0, 3), 3)
    tail.add(rows(3, 2), 2)
    tail.add(rows(8, 2), 2)  # 5..7 were another process's
    assert [r[0] for r in tail.read(1, 10)] == [1, 2, 3, 4]
    assert [r[0] for r in tail.read(1, 2)] == [1, 2]
    assert tail.read(5, 10) == []
    assert [r[0] for r in tail.read(8, 10)] == [8, 9]
    assert tail.last == 9


def test_tail_cache_knows_where_it_holds_everything_to_its_end() -> None:
    tail = TailCache(max_rows=6)
    assert not tail.holds_all_from(0)
    tail.add(rows(0, 3), 3)
    tail.add(rows(3, 2), 2)
    assert tail.holds_all_from(0) and tail.holds_all_from(4)
    assert tail.holds_all_from(5)  # nothing after the end to lack
    assert not tail.holds_all_from(6)
    tail.add(rows(8, 2), 2)  # 5..7 were another process's; 0..3 are dropped (bound)
    assert not tail.holds_all_from(4)  # dropped
    assert not tail.holds_all_from(5) and not tail.holds_all_from(7)  # the gap
    assert tail.holds_all_from(8) and tail.holds_all_from(10)


async def test_the_file_is_read_back_only_for_what_memory_lacks(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    """A look in the file by a reader holding offsets up to ``held_to`` in memory reads no
    rows unless the topic has messages after it that another process wrote: this process's
    own newer ones reach its memory after their commit."""
    mine, other = await open_bus(), await open_bus()
    await mine.create_group("t", "g")
    await mine.publish_batch("t", [OutgoingMessage(b"%d" % i) for i in range(3)])

    async def rows_read(held_to: int | None) -> list[int]:
        got = await mine._call(
            lambda s, _: s.read(s.topic("t").id, s.group("t", "g").id, 0, 10, held_to)
        )
        return [row[0] for row in got.rows]

    assert await rows_read(None) == [0, 1, 2]
    assert await rows_read(2) == []
    assert await rows_read(0) == []  # 1 and 2 are this process's own
    await other.publish_batch("t", [OutgoingMessage(b"o3")])
    assert await rows_read(2) == [0, 1, 2, 3]  # 3 is another process's
    assert await rows_read(3) == []
    await mine.publish_batch("t", [OutgoingMessage(b"m4")])
    assert await rows_read(2) == [0, 1, 2, 3, 4]
    assert await rows_read(3) == []


async def test_a_topic_recreated_under_the_same_id_is_not_taken_for_this_process(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    """Another process deletes the topic and creates it again (SQLite gives it the same id)
    and publishes as many messages as this one had: they are still read from the file."""
    mine, other = await open_bus(), await open_bus()
    await mine.publish_batch("t", [OutgoingMessage(b"m%d" % i) for i in range(3)])
    first_id = await mine._call(lambda s, _: s.topic("t").id)
    await other.delete_topic("t")
    await other.create_topic("t")
    await other.create_group("t", "g")
    await other.publish_batch("t", [OutgoingMessage(b"o%d" % i) for i in range(3)])
    got = await mine._call(lambda s, _: s.conn.execute("SELECT id FROM topics").fetchall())
    assert got == [(first_id,)]  # the same id, the same next offset (3): only created_at differs

    rows = await mine._call(lambda s, _: s.read(first_id, s.group("t", "g").id, 0, 10, 0))
    assert [row[2] for row in rows.rows] == [b"o0", b"o1", b"o2"]


async def test_messages_another_process_appends_are_found_while_memory_has_none(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    mine, other = await open_bus(), await open_bus()
    await mine.create_group("t", "g")
    await mine.publish_batch("t", [OutgoingMessage(b"m0")])
    got = await mine.fetch("t", "g", consumer="a", max_messages=10, lease_seconds=10)
    assert [d.value for d in got] == [b"m0"]
    await mine.ack(got)
    await other.publish_batch("t", [OutgoingMessage(b"o1")])
    seen: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + 5.0
    while not seen and asyncio.get_running_loop().time() < deadline:
        got = await mine.fetch(
            "t", "g", consumer="a", max_messages=10, lease_seconds=10, wait_seconds=0.2
        )
        seen += [d.value for d in got]
    assert seen == [b"o1"]


def test_tail_cache_drops_the_oldest_past_its_bound() -> None:
    tail = TailCache(max_rows=4)
    tail.add(rows(0, 3), 3)
    tail.add(rows(3, 3), 3)
    assert tail.read(0, 10) == []
    assert [r[0] for r in tail.read(3, 10)] == [3, 4, 5]
    assert len(tail) == 3


async def test_a_replay_by_another_process_reaches_the_owner(
    open_bus: Callable[[], Awaitable[SqliteBus]],
) -> None:
    """The owner notices another instance's replay (the group's epoch) and reads again from
    the replayed offset, even while its own messages keep coming from memory."""
    owner, operator = await open_bus(), await open_bus()
    await owner.create_group("t", "g")
    await owner.publish_batch("t", [OutgoingMessage(b"%d" % i) for i in range(3)])
    got = await owner.fetch("t", "g", consumer="a", max_messages=10, lease_seconds=10)
    await owner.ack(got)
    assert await operator.replay("t", "g", offset=1) == 1
    seen: list[int] = []
    # The owner looks in the file every poll_interval (50 ms): keep feeding it from memory
    # for a good many of those.
    deadline = asyncio.get_running_loop().time() + 2.0
    while asyncio.get_running_loop().time() < deadline:
        await owner.publish_batch("t", [OutgoingMessage(b"more")])
        got = await owner.fetch(
            "t", "g", consumer="a", max_messages=10, lease_seconds=10, wait_seconds=0.05
        )
        seen += [d.offset for d in got]
        await owner.ack(got)
        if 1 in seen:
            break
    assert 1 in seen, "the replay was never noticed"
