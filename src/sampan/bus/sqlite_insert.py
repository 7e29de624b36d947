"""Messages written with multi-row INSERTs in a few statement sizes.

One statement per chunk of rows instead of one per row: the database thread gives up and
takes back the GIL around every step, and each take-back can wait for the event loop's
thread to yield it, so a commit should take few steps (bench/bus_busy_loop.py).

Each distinct row count is a statement of its own, though: prepared on first use (about
0.5 ms for 16 rows, 2.5 ms for 128, 6 ms for 256 on the benchmark VM) and kept in the
connection's statement cache of 1,024 entries. With every count from 1 to 512 for every
topic, a node with 20 topics thrashed that cache: batches of 1-256 messages took 2.05 ms a
publish there against 1.22 ms with one topic. So a chunk's row count is rounded up to one
of 36 sizes (`statement_rows`), and the rows it lacks are bound as NULL offsets, which the
statement's ``WHERE`` drops.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

from sampan.bus.sqlite_tail import Row

INSERT_CHUNK = 512
"""Rows per statement at most (8 variables a row, far below SQLite's 32,766)."""

EXACT_UP_TO = 16
"""Up to this many rows, every count has its statement (single publishes are common)."""

_COLUMNS = "(offset, key, value, headers, published_at, deliver_at, target_group, size)"
_FIRST_THREE = itemgetter(0, 1, 2)


def statement_rows(count: int) -> int:
    """The statement size that takes ``count`` rows (1 <= count <= ``INSERT_CHUNK``): the
    count itself up to ``EXACT_UP_TO``, then four sizes per doubling (20, 24, 28, 32, 40,
    48, ...), so at most a fifth of a statement's rows are padding. A padding row costs
    about 1.7 µs in SQLite (a row written, ~2.4 µs), a statement prepared again 0.5-6 ms."""
    if count <= EXACT_UP_TO:
        return count
    step = 1 << ((count - 1).bit_length() - 3)
    return -(-count // step) * step


def insert_sql(table: str, rows: int, *, plain: bool) -> str:
    """A multi-row INSERT of ``rows`` rows, of which those with a NULL offset are padding.
    ``plain`` rows bind (offset, key, value) each, plus the batch's published_at and target
    group once; the others bind all eight columns."""
    if plain:
        values = ",".join(f"(?{3 * i + 1}, ?{3 * i + 2}, ?{3 * i + 3})" for i in range(rows))
        select = (
            f"SELECT column1, column2, column3, NULL, ?{3 * rows + 1}, NULL, ?{3 * rows + 2},"
            " length(column3)"
        )
    else:
        values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
        select = "SELECT column1, column2, column3, column4, column5, column6, column7, column8"
    return (
        f"INSERT INTO {table} {_COLUMNS} {select} FROM (VALUES {values}) WHERE column1 IS NOT NULL"
    )


class InsertStatements:
    """Writes rows to message tables; keeps each statement's text (built once per table,
    size and kind), which is also its key in the connection's statement cache."""

    def __init__(self) -> None:
        self._sqls: dict[tuple[str, int, bool], str] = {}

    def write(self, conn: sqlite3.Connection, table: str, rows: Sequence[Row]) -> None:
        """Binding runs with the GIL held, so rows without headers or delay bind three
        values each, not eight."""
        plain = all(r[3] is None and r[5] is None for r in rows)
        width = 3 if plain else 8
        for lo in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[lo : lo + INSERT_CHUNK]
            size = statement_rows(len(chunk))
            key = (table, size, plain)
            sql = self._sqls.get(key)
            if sql is None:
                sql = self._sqls[key] = insert_sql(table, size, plain=plain)
            params: list[Any]
            if plain:
                params = list(chain.from_iterable(map(_FIRST_THREE, chunk)))
            else:
                params = list(chain.from_iterable(chunk))
            if size > len(chunk):
                params += [None] * (width * (size - len(chunk)))
            if plain:
                params += (chunk[0][4], chunk[0][6])
            conn.execute(sql, params)

    def forget(self, table: str) -> None:
        """The table is gone (its topic deleted)."""
        for key in [k for k in self._sqls if k[0] == table]:
            del self._sqls[key]

    def __len__(self) -> int:
        return len(self._sqls)
