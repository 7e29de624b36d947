"""Multi-row INSERTs in a few statement sizes (``sqlite_insert.py``): padding never reaches
the table, and the statements a node prepares stay few however many sizes it writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sampan.bus.base import OutgoingMessage
from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
from sampan.bus.sqlite_insert import (
    EXACT_UP_TO,
    INSERT_CHUNK,
    InsertStatements,
    statement_rows,
)
from sampan.bus.sqlite_schema import create_message_table, message_table, open_connection
from sampan.bus.sqlite_tail import Row

SIZES = sorted({statement_rows(n) for n in range(1, INSERT_CHUNK + 1)})


def test_statement_sizes_are_few_and_waste_at_most_a_fifth() -> None:
    assert len(SIZES) == 36
    assert SIZES[:EXACT_UP_TO] == list(range(1, EXACT_UP_TO + 1))
    assert SIZES[-1] == INSERT_CHUNK
    for count in range(1, INSERT_CHUNK + 1):
        size = statement_rows(count)
        assert count <= size <= INSERT_CHUNK
        assert (size - count) * 5 < size, count
        assert statement_rows(size) == size  # a size is its own statement


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    conn = open_connection(str(tmp_path / "bus.db"), durability="normal")
    create_message_table(conn, 1)
    return conn


def rows(first: int, count: int, *, plain: bool) -> list[Row]:
    return [
        (
            first + i,
            None if i % 3 == 0 else f"k{i}",
            b"v%d" % (first + i),
            None if plain else b'{"h":"%d"}' % i,
            1000.0,
            None if plain or i % 2 else 2000.0 + i,
            None if plain else 7,
            len(b"v%d" % (first + i)),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("plain", [True, False], ids=["plain", "headers-and-delay"])
def test_rows_are_written_exactly_and_padding_is_dropped(
    conn: sqlite3.Connection, plain: bool
) -> None:
    inserts = InsertStatements()
    table = message_table(1)
    written: list[Row] = []
    for count in (1, 2, 16, 17, 21, 100, 129, 511, 512, 513, 1100):
        batch = rows(len(written), count, plain=plain)
        conn.execute("BEGIN")
        inserts.write(conn, table, batch)
        conn.execute("COMMIT")
        written += batch
    stored = conn.execute(
        "SELECT offset, key, value, headers, published_at, deliver_at, target_group, size"
        f" FROM {table} ORDER BY offset"
    ).fetchall()
    assert stored == written
    assert len(inserts) <= len(SIZES)


def test_a_table_forgotten_drops_its_statements(conn: sqlite3.Connection) -> None:
    inserts = InsertStatements()
    create_message_table(conn, 2)
    for table in (message_table(1), message_table(2)):
        inserts.write(conn, table, rows(0, 40, plain=True))
    assert len(inserts) == 2
    inserts.forget(message_table(1))
    assert len(inserts) == 1


async def test_many_topics_of_every_batch_size_prepare_few_statements(tmp_path: Path) -> None:
    """The case that thrashed the connection's statement cache (1,024 entries): 10 topics,
    each written in every batch size from 1 to 200 — 2,000 statements before, 10 x 31 now."""
    bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}", SqliteBusOptions(durability="normal"))
    await bus.start()
    try:
        messages = [OutgoingMessage(b"x", f"k{i}") for i in range(200)]
        for topic in range(10):
            for size in range(1, 201):
                await bus.publish_batch(f"t{topic}", messages[:size])
        infos = {t.name: t for t in await bus.topics()}
        assert all(infos[f"t{t}"].next_offset == 200 * 201 // 2 for t in range(10))
        assert bus._store is not None
        statements = len(bus._store._inserts)
        assert statements == 10 * len([s for s in SIZES if s <= 224]) == 10 * 31
        assert statements < 1024
    finally:
        await bus.close()
