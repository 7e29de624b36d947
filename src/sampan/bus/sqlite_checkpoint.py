"""WAL checkpoints for the embedded bus, off the commit path, with a WAL that stays bounded.

A PASSIVE checkpoint on its own thread copies committed pages back into the database while
publishes keep committing, so commits never pay for it. But on its own it never lets the WAL
start over under steady load: SQLite rewinds the WAL only when a write begins with every
frame already copied, and a checkpoint that runs while commits append frames always ends a
few frames behind (at 10,000 msg/s the WAL grew by ~30 MB a second and never shrank).

So once the WAL is past ``restart_frames``, one pass must reach its end with no commit in
between: the writer thread runs it itself, between two of its transactions
(``between_transactions``), and the next commit writes the WAL from its start. That pass must
fsync every database page the earlier passes copied (they never sync: they end behind the
WAL's end), which took 20-70 ms while commits waited. Hence the database file's pages are
sent to disk as they are copied (``sync_file_range`` after every pass, which does not wait)
and flushed once more by this thread before it asks for the pass, through a descriptor SQLite
already has open on the file: opening one of our own and closing it would drop every POSIX
lock SQLite holds on the file in this process. The pass is then ~0.5 ms (measured). Without
Linux's /proc and sync_file_range the rewind still works, only with the longer pass.

A pass is 20-30 ms of CPU once a second at 10,000 msg/s. On two cores it takes one from the
event loop and the writer thread just when the commits need both, so this thread runs at a
lower CPU priority (Linux: a thread's own niceness), and more often, for shorter passes. The
pass that holds up the writer is the writer's own, at the writer's priority: held by a nicer
thread, it took up to 26 ms beside three CPU hogs (measured), against ~1 ms.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("sampan.bus.sqlite")

CHECKPOINT_INTERVAL = 0.1
"""Seconds between PASSIVE checkpoints while commits come in. Short passes are short bursts
of CPU and of write-back: at 10,000 msg/s the benchmark's p99 publish-to-handler latency was
7.27 ms checkpointing every 1 s and 4.62 ms every 0.1 s (medians of 6 alternating runs with
the checkpointer at `NICENESS`, Intel VM, 2026-12-07; 0.25 s and 0.05 s gave ~5.5 and 4.8 ms),
at the same throughput; at 1,000 msg/s, 1.97-2.74 ms against 2.41-31.4 ms. Before the
checkpointer ran nicer, 0.25 s had been worse than 1 s: its passes took the cores from the
event loop and the writer."""

IDLE_INTERVAL = 1.0
"""Seconds to the next pass when nothing was committed since the last one (SQLite's
``data_version``): an idle bus wakes the thread once a second, not ten times (idle process
CPU over 10 s: 38.6 ms, against 109.4 ms without the back-off)."""

RESTART_FRAMES = 65_536
"""WAL frames (pages: ~256 MiB at 4 KiB) past which the checkpointer rewinds it: a bound on
disk use that sustained load reaches every few seconds at most (~7 s at 10,000 1 KiB messages
a second); at lighter loads the WAL starts over by itself after most checkpoints."""

NICENESS = 10
"""How much nicer than the thread that starts it (the bus's) this thread runs. At 10,000
msg/s the benchmark's p99 publish-to-handler latency was ~8.6 ms at 0 and ~7.5 ms at 10
(medians of 7 alternating runs, Intel VM, 2026-12-07; 5 and 19 gave 7.5 and 6.7 ms, medians
of 3), with the same throughput. Not 19: with three CPU hogs beside a writer committing every
millisecond (``steady_writes`` in the tests, rewind at 7.8 MiB), the largest WAL was 11.0 MiB
at 0, 11.6 MiB at 10 and 84 MiB at 19, where the checkpoints fell behind. (Under CFS a thread
ten steps nicer gets ~10 % of a core it shares with one busy thread, ~5 % with two.)"""

SYNC_FILE_RANGE_WRITE = 2


class Checkpointer:
    """Runs PASSIVE checkpoints from its own connection and thread; the database thread calls
    ``between_transactions`` before each of its transactions."""

    def __init__(
        self,
        path: str,
        *,
        interval: float = CHECKPOINT_INTERVAL,
        idle_interval: float = IDLE_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
        niceness: int = NICENESS,
    ) -> None:
        self.path = path
        self.interval = interval
        self.idle_interval = max(interval, idle_interval)
        self.restart_frames = restart_frames
        self.niceness = niceness
        self.rewinds = 0
        self.passes = 0
        self._rewind_wanted = False
        """Set by this thread once the database is flushed; the writer runs the pass."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampan-wal:{path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def prepare_writer(self, conn: sqlite3.Connection) -> None:
        """Checkpoints are this thread's job; a rewound WAL that a burst left larger than the
        threshold is trimmed back to it (``journal_size_limit``)."""
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={self.restart_frames * 4096}")

    def between_transactions(self, conn: sqlite3.Connection) -> None:
        """Called by the writer thread, on its connection, with no transaction open: when a
        rewind is wanted, the pass that lets the next commit start the WAL over runs here."""
        if not self._rewind_wanted:
            return
        self._rewind_wanted = False
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("rewind skipped: %s", exc)
            return
        if not busy and frames == copied:  # the next commit starts the WAL over
            self.rewinds += 1

    def native_id(self) -> int | None:
        """The thread's id for the OS (None before it started)."""
        return self._thread.native_id

    def _run(self) -> None:
        _be_nicer(self.niceness)
        others = _descriptors_of(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens the file
            # This connection's own descriptor: it stays open exactly as long as we use it.
            database = min(_descriptors_of(self.path) - others, default=None)
            write_back = _write_back_starter() if database is not None else None
            wait, seen = self.interval, None
            while not self._stop.wait(wait):
                version = _data_version(conn)
                frames = self._pass(conn)
                if version is not None and version == seen:
                    wait = self.idle_interval  # nothing committed since the last pass
                    continue
                wait, seen = self.interval, version
                if database is not None and write_back is not None:
                    write_back(database)
                if frames is not None and frames >= self.restart_frames:
                    self._rewind(database)
        finally:
            conn.close()

    def _pass(self, conn: sqlite3.Connection) -> int | None:
        """One PASSIVE checkpoint; returns the frames in the WAL (None when it failed)."""
        self.passes += 1
        try:
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("checkpoint skipped: %s", exc)
            return None
        return int(frames)

    def _rewind(self, database: int | None) -> None:
        if self._rewind_wanted:
            return  # asked already; the writer has not run the pass yet
        if database is not None:
            try:
                os.fdatasync(database)  # here, not in the writer's pass: commits go on meanwhile
            except OSError as exc:
                log.debug("database flush before the rewind failed: %s", exc)
        self._rewind_wanted = True


def _data_version(conn: sqlite3.Connection) -> int | None:
    """Changes whenever another connection committed (None when it cannot be read)."""
    try:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.Error:
        return None


def _be_nicer(steps: int) -> None:
    """Lower the calling thread's CPU priority by ``steps`` (Linux, where niceness is per
    thread; elsewhere ``setpriority`` would reach the whole process, so nothing is done)."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + steps))
    except OSError as exc:  # a sandbox without the call: checkpoints run as before
        log.debug("checkpointer priority unchanged: %s", exc)


def _descriptors_of(path: str) -> set[int]:
    """The descriptors this process has open on ``path`` (empty without /proc)."""
    try:
        wanted = os.stat(path)
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found: set[int] = set()
    for name in names:
        try:
            info = os.fstat(int(name))
        except (OSError, ValueError):
            continue
        if (info.st_dev, info.st_ino) == (wanted.st_dev, wanted.st_ino):
            found.add(int(name))
    return found


def _write_back_starter() -> Callable[[int], None] | None:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``: start writing a file's dirty
    pages without waiting for them (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start(fd: int) -> None:
        function(fd, 0, 0, SYNC_FILE_RANGE_WRITE)

    return start
