"""A consumer process for the crash test: records every handled offset, one line each.

Run as ``python crash_consumer.py DB_PATH LOG_PATH EXPECTED``; exits once the group has
nothing left to do (lag 0), or is killed by the test.
"""

from __future__ import annotations

import asyncio
import os
import sys

from sampan.bus.base import Delivery
from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.bus.sqlite import SqliteBus

LEASE_SECONDS = 2.0
BATCH = 128


async def main(db_path: str, log_path: str) -> None:
    bus = SqliteBus("sqlite:///" + db_path)
    await bus.start()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle(delivery: Delivery) -> None:
        await asyncio.sleep(0.004)  # some work, so the kill lands mid-run
        os.write(log_fd, b"%d\n" % delivery.offset)

    consumer = Consumer(
        bus,
        "crash",
        "workers",
        handle,
        ConsumerOptions(concurrency=16, batch=BATCH, lease_seconds=LEASE_SECONDS),
    )
    await consumer.start()
    print("ready", flush=True)
    while await bus.lag("crash", "workers") > 0:  # noqa: ASYNC110 - state lives in the DB
        await asyncio.sleep(0.2)
    await consumer.stop()
    await bus.close()
    os.close(log_fd)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
