"""The embedded bus's checkpointer keeps the WAL bounded under steady writes.

A real SQLite file, a writer thread committing (with fsync) every millisecond as a busy bus
does, and the checkpointer on its own thread: without the rewind the WAL only grows."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from sampan.bus.base import OutgoingMessage
from sampan.bus.sqlite import SqliteBus
from sampan.bus.sqlite_checkpoint import Checkpointer
from sampan.bus.sqlite_schema import open_connection

ROW = os.urandom(1000)
RESTART_FRAMES = 400  # ~1.6 MiB of WAL


def steady_writes(path: Path, restart_frames: int, seconds: float) -> tuple[int, int, int]:
    """Commit 10 rows a millisecond for ``seconds``; returns (rows, largest WAL, rewinds)."""
    conn = open_connection(str(path), durability="full")
    conn.execute("CREATE TABLE IF NOT EXISTS m (n INTEGER PRIMARY KEY, v BLOB)")
    checkpointer = Checkpointer(str(path), interval=0.05, restart_frames=restart_frames)
    checkpointer.prepare_writer(conn)
    checkpointer.start()
    rows = largest = 0
    wal = Path(f"{path}-wal")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            checkpointer.between_transactions(conn)  # as the bus's writer thread does
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO m VALUES (?, ?)", [(rows + i, ROW) for i in range(10)])
            conn.execute("COMMIT")
            rows += 10
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.001)
    finally:
        checkpointer.stop()
        conn.close()
    return rows, largest, checkpointer.rewinds


def test_the_wal_is_rewound_under_steady_writes_and_nothing_is_lost(tmp_path: Path) -> None:
    bound = 4 * RESTART_FRAMES * 4096
    # The control: the same load with rewinds off grows the WAL past the bound.
    _, grown, none = steady_writes(tmp_path / "control.db", 10**9, 1.5)
    assert none == 0
    assert grown > bound, f"the load did not grow the WAL ({grown} bytes): test proves nothing"

    path = tmp_path / "bus.db"
    rows, largest, rewinds = steady_writes(path, RESTART_FRAMES, 1.5)
    assert rewinds >= 1
    assert largest <= bound, f"WAL reached {largest} bytes"
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT count(*), max(n) FROM m").fetchone() == (rows, rows - 1)
    finally:
        check.close()


def test_checkpoints_stop_with_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "idle.db"
    sqlite3.connect(path).close()
    checkpointer = Checkpointer(str(path), interval=0.01)
    checkpointer.start()
    time.sleep(0.05)
    started = time.monotonic()
    checkpointer.stop()
    assert time.monotonic() - started < 1
    assert not any(t.name == f"sampan-wal:{path}" for t in threading.enumerate())


async def test_the_bus_leaves_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}")
    await bus.start()
    try:
        conn = bus._store.conn  # type: ignore[union-attr]
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        limit = conn.execute("PRAGMA journal_size_limit").fetchone()[0]
        assert bus._checkpointer is not None
        assert limit == bus._checkpointer.restart_frames * 4096
    finally:
        await bus.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_checkpointer_runs_nicer_than_the_process(tmp_path: Path) -> None:
    path = tmp_path / "nice.db"
    sqlite3.connect(path).close()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    checkpointer = Checkpointer(str(path), interval=0.01, niceness=7)
    checkpointer.start()
    try:
        thread = checkpointer.native_id()
        assert thread is not None
        deadline = time.monotonic() + 2
        while os.getpriority(os.PRIO_PROCESS, thread) == base and time.monotonic() < deadline:
            time.sleep(0.005)
        assert os.getpriority(os.PRIO_PROCESS, thread) == min(19, base + 7)
        # Only that thread: this one (and so the event loop and the writer) keeps its own.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    finally:
        checkpointer.stop()


def test_an_idle_wal_is_looked_at_less_often(tmp_path: Path) -> None:
    """Busy: a pass every 20 ms. Idle (no commit since the last pass): one a second. Wide
    margins: one gap of over 20 ms between commits on a slow VM costs one idle wait only."""
    path = tmp_path / "idle.db"
    conn = open_connection(str(path), durability="full")
    conn.execute("CREATE TABLE m (n INTEGER PRIMARY KEY, v BLOB)")
    checkpointer = Checkpointer(str(path), interval=0.02, idle_interval=1.0, niceness=0)
    checkpointer.prepare_writer(conn)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 2.5
        n = 0
        while time.monotonic() < deadline:  # a commit every ~2 ms
            checkpointer.between_transactions(conn)
            conn.execute("INSERT INTO m VALUES (?, ?)", (n, ROW))
            n += 1
            time.sleep(0.002)
        busy = checkpointer.passes
        time.sleep(1.5)  # nothing committed
        idle = checkpointer.passes - busy
    finally:
        checkpointer.stop()
        conn.close()
    assert busy >= 10, f"{busy} passes in 2.5 busy seconds"
    assert idle <= 4, f"{idle} passes in 1.5 idle seconds (75 without the back-off)"


async def test_the_bus_writer_runs_the_rewind_between_its_transactions(tmp_path: Path) -> None:
    """The writer thread, not the nicer checkpointer, runs the pass that lets the WAL start
    over: without it the WAL of a busy bus only grows."""
    bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}")
    await bus.start()
    try:
        checkpointer = bus._checkpointer
        assert checkpointer is not None
        checkpointer.restart_frames = 100  # ~400 KiB; read by the running thread
        await bus.create_topic("t")
        deadline = time.monotonic() + 10
        while checkpointer.rewinds < 2 and time.monotonic() < deadline:
            await bus.publish_batch("t", [OutgoingMessage(ROW) for _ in range(50)])
            await asyncio.sleep(0.01)
        assert checkpointer.rewinds >= 2
    finally:
        await bus.close()
