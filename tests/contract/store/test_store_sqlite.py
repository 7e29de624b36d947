"""What only the embedded backend promises: fsync before return, its own thread, crash safety."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from sampan.store.sqlite import SqliteStore

# Adds members forever, printing each id only after group_add returned.
_WRITER = """
import asyncio, sys
from sampan.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    await store.start()
    i = 0
    while True:
        await store.group_add("crash", "g", f"m{i}", b"x" * 100)
        await store.incr("crash", "count")
        print(i, flush=True)
        i += 1

asyncio.run(main())
"""


@pytest.mark.slow
async def test_acknowledged_adds_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "state.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    acknowledged = -1
    try:
        async with asyncio.timeout(60):
            while acknowledged < 20:
                line = await child.stdout.readline()
                if not line:
                    break
                acknowledged = int(line)
    finally:
        # Killed right after a group_add returned (and while the next write is in flight).
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    assert acknowledged >= 20, "the writer never got going"
    store = SqliteStore(path)
    await store.start()
    try:
        members = [m for m, _ in await store.group_members("crash", "g")]
        # Everything acknowledged is there, in order, with no gap; the child may have got
        # further than the lines we read, never less far.
        assert len(members) >= acknowledged + 1
        assert members == [f"m{i}" for i in range(len(members))]
        assert int(await store.get("crash", "count") or b"0") >= acknowledged + 1
    finally:
        await store.close()


async def test_wal_full_sync_on_a_thread_of_its_own(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    await store.start()
    try:

        def inspect(db: sqlite3.Connection) -> tuple[str, int, str]:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            sync = db.execute("PRAGMA synchronous").fetchone()[0]
            return mode, sync, threading.current_thread().name

        mode, sync, thread = await store._call(inspect)
        assert (mode, sync) == ("wal", 2)  # 2 = FULL
        assert thread != threading.current_thread().name
        assert thread.startswith("sampan-store")
    finally:
        await store.close()


async def test_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    store = SqliteStore(path)
    await store.start()
    await store.put("ns", "k", b"v")
    await store.close()
    assert path.is_file()
    assert store.url == "sqlite:///" + str(path)


async def test_the_loop_keeps_running_while_the_store_writes(tmp_path: Path) -> None:
    """fsyncs happen off the loop: a ticker keeps ticking during a burst of writes."""
    store = SqliteStore(tmp_path / "state.db")
    await store.start()
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        for i in range(50):
            await store.put("ns", f"k{i}", b"v")
    finally:
        stop.set()
        await task
        await store.close()
    assert ticks >= 50


async def test_start_and_close_twice_are_harmless(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    await store.start()
    await store.start()
    await store.put("ns", "k", b"v")
    await store.close()
    await store.close()
    await store.start()
    assert await store.get("ns", "k") == b"v"
    await store.close()
