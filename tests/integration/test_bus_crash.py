"""Kill -9 a consumer process mid-run: nothing acknowledged is lost, duplicates are bounded."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sampan.bus.base import OutgoingMessage
from sampan.bus.sqlite import SqliteBus

MESSAGES = 20_000
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from crash_consumer import BATCH  # noqa: E402


def handled(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().split()]


def start_consumer(db: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "crash_consumer.py"), str(db), str(log)],
        stdout=subprocess.PIPE,
    )


@pytest.mark.slow
async def test_sigkill_mid_run_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bus.db"
    log = tmp_path / "handled.log"
    bus = SqliteBus("sqlite:///" + str(db))
    await bus.start()
    for start in range(0, MESSAGES, 1000):
        await bus.publish_batch(
            "crash",
            [
                OutgoingMessage(b'{"order": %d}' % i, key=f"customer-{i % 997}")
                for i in range(start, start + 1000)
            ],
        )
    await bus.close()

    first = start_consumer(db, log)
    deadline = time.monotonic() + 60
    while len(handled(log)) < MESSAGES // 4:
        assert first.poll() is None, "the consumer exited before it could be killed"
        assert time.monotonic() < deadline, "the consumer made no progress"
        await asyncio.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = len(handled(log))
    assert at_kill < MESSAGES, "the kill came too late to test anything"

    second = start_consumer(db, log)
    try:
        second.wait(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0

    seen = handled(log)
    counts = collections.Counter(seen)
    missing = set(range(MESSAGES)) - set(counts)
    duplicates = len(seen) - len(counts)
    print(f"handled before kill: {at_kill}; total handled: {len(seen)}; duplicates: {duplicates}")
    assert not missing, f"{len(missing)} message(s) lost, e.g. {sorted(missing)[:10]}"
    # Only messages the killed process held (at most two fetch batches) can run twice.
    assert duplicates <= 2 * BATCH
    assert max(counts.values()) <= 2
