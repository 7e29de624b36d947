"""WAL checkpoints for the embedded bus, off the commit path, with a WAL that stays bounded.

A PASSIVE checkpoint on its own thread copies committed pages back into the database while
publishes keep committing, so commits never pay for it. But on its own it never lets the WAL
start over under steady load: SQLite rewinds the WAL only when a write begins with every
frame already copied, and a checkpoint that runs while commits append frames always ends a
few frames behind (at 10,000 msg/s the WAL grew by ~30 MB a second and never shrank). So
once the WAL is past ``restart_frames``, the checkpointer follows its pass with short ones in
quick succession: each copies only what the last one let through, until one ends with
nothing left between two commits and the next commit writes the WAL from its start. The
writer never waits for the checkpoints themselves. What the rewind costs is the fsync of the
database pages the earlier passes copied (a pass that runs while commits append frames never
syncs the database; the one that reaches the end of the WAL must), and the commits that share
the disk with it stall meanwhile. Tried and measured: a RESTART checkpoint on the writer's
thread (blocks commits ~25 ms), holding the writer for one last short pass (the same fsync,
inside the hold). Flushing the database file ahead of the rewind from a descriptor of our own
would shorten it, but closing such a descriptor drops every POSIX lock SQLite holds on the
file in this process, so it is not done.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

log = logging.getLogger("sampan.bus.sqlite")

CHECKPOINT_INTERVAL = 1.0
"""Seconds between PASSIVE checkpoints. Each one ends with an fsync of the database file that
slows the commits' own fsyncs meanwhile; at 10k msg/s, checkpointing every second instead of
every 0.25 s halved the p99 publish-to-handler latency (measured, alternating runs)."""

RESTART_FRAMES = 65_536
"""WAL frames (pages: ~256 MiB at 4 KiB) past which the checkpointer works to rewind it. The
commit that starts the WAL over stalls (20-70 ms measured on a 2 vCPU VM with ext4), so this
is a bound on disk use that sustained load reaches every few seconds at most (~7 s at 10,000
1 KiB messages a second), not a size to keep the WAL at; at lighter loads the WAL starts over
by itself after most checkpoints."""

REWIND_PASSES = 200
REWIND_PAUSE = 0.0002
"""Seconds between the short passes: room for a commit to begin on a fully copied WAL."""


class Checkpointer:
    """Runs PASSIVE checkpoints from its own connection and thread."""

    def __init__(
        self,
        path: str,
        *,
        interval: float = CHECKPOINT_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_frames = restart_frames
        self.rewinds = 0
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

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._stop.wait(self.interval):
                frames = self._pass(conn)
                if frames is not None and frames >= self.restart_frames:
                    self._rewind(conn, frames)
        finally:
            conn.close()

    def _pass(self, conn: sqlite3.Connection) -> int | None:
        """One PASSIVE checkpoint; returns the frames in the WAL (None when it failed)."""
        try:
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("checkpoint skipped: %s", exc)
            return None
        return int(frames)

    def _rewind(self, conn: sqlite3.Connection, frames: int) -> None:
        for _ in range(REWIND_PASSES):
            if self._stop.is_set():
                return
            time.sleep(REWIND_PAUSE)
            now = self._pass(conn)
            if now is None:
                return
            if now < frames:  # a commit started the WAL over
                self.rewinds += 1
                return
            frames = now
        log.debug("WAL not rewound after %d passes (%d frames)", REWIND_PASSES, frames)
