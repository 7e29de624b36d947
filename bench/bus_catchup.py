"""Catch-up benchmark: a consumer draining a backlog the embedded bus holds in its file vs
the same backlog held in memory, in the same run.

A restarted node, or a node consuming what other processes wrote, reads its backlog from
the SQLite file; a node consuming what it published itself reads it from memory. Until
2026-12-07 the file path read one batch per poll interval (~5,000 msg/s); this measures both
paths with the same consumer so the difference stays visible.

    .venv/bin/python bench/bus_catchup.py              # 20,000 x 1 KiB, 3 rounds
    .venv/bin/python bench/bus_catchup.py --quick      # 5,000, 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bus import CONSUMER_BATCH, CONSUMER_CONCURRENCY, Workload, make_workload
from common import (
    fmt_rate,
    machine_info,
    markdown_table,
    ratio,
    text_table,
    utc_timestamp,
    write_results,
)
from sampan.bus.base import Delivery, OutgoingMessage
from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.bus.sqlite import SqliteBus
from sampan.switch_interval import DEFAULT_SWITCH_INTERVAL

PUBLISH_BATCH = 500
LABELS = {
    "memory": "backlog published by the consuming bus (read from memory)",
    "file": "backlog written before a restart (read from the SQLite file)",
}


async def publish(bus: SqliteBus, wl: Workload) -> None:
    for lo in range(0, len(wl), PUBLISH_BATCH):
        hi = min(len(wl), lo + PUBLISH_BATCH)
        await bus.publish_batch(
            "orders", [OutgoingMessage(wl.payloads[i], wl.keys[i]) for i in range(lo, hi)]
        )


async def drain(bus: SqliteBus, total: int, limit: float) -> float:
    """Seconds for one consumer to handle (and ack) ``total`` messages."""
    done = asyncio.Event()
    handled = 0

    async def handler(_delivery: Delivery) -> None:
        nonlocal handled
        handled += 1
        if handled >= total:
            done.set()

    options = ConsumerOptions(concurrency=CONSUMER_CONCURRENCY, batch=CONSUMER_BATCH)
    consumer = Consumer(bus, "orders", "catchup", handler, options)
    started = time.perf_counter()
    await consumer.start()
    try:
        async with asyncio.timeout(limit):
            await done.wait()
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def run(system: str, wl: Workload, root: Path, round_no: int, limit: float) -> float:
    url = f"sqlite:///{root / f'{system}-{round_no}.db'}"
    bus = SqliteBus(url)
    await bus.start()
    try:
        await bus.create_topic("orders")
        await bus.create_group("orders", "catchup")
        if system == "memory":
            # The consuming bus has looked at the topic, so it keeps what it publishes.
            await bus.fetch("orders", "catchup", consumer="warm", max_messages=1, lease_seconds=1)
            await publish(bus, wl)
            gc.collect()
            return len(wl) / await drain(bus, len(wl), limit)
        await publish(bus, wl)
    finally:
        await bus.close()
    restarted = SqliteBus(url)  # a new process would see the same: nothing in memory
    await restarted.start()
    try:
        gc.collect()
        return len(wl) / await drain(restarted, len(wl), limit)
    finally:
        await restarted.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 1 round")
    parser.add_argument("--phase-timeout", type=float, default=120.0)
    parser.add_argument("--tmp", default="/tmp", help="where the SQLite files go (not /dev/shm)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = min(args.messages, 5_000), 1
    if args.messages <= 0 or args.rounds <= 0:
        parser.error("--messages and --rounds must be positive")
    return args


async def main(args: argparse.Namespace) -> int:
    sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL)  # as a node sets it
    wl = make_workload(args.messages)
    gc.collect()
    gc.freeze()
    root = Path(tempfile.mkdtemp(prefix="sampan-bench-catchup-", dir=args.tmp))
    rates: dict[str, list[float]] = {"memory": [], "file": []}
    try:
        for round_no in range(args.rounds):
            for system, runs in rates.items():  # interleaved
                rate = await run(system, wl, root, round_no, args.phase_timeout)
                runs.append(rate)
                print(f"  round {round_no + 1}: {system:<7} {fmt_rate(rate)}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {system: max(values) for system, values in rates.items()}
    file_over_memory = ratio(best["file"], best["memory"])
    headers = ["backlog", "msg/s (best)", "runs"]
    rows = [[LABELS[s], fmt_rate(best[s]), ", ".join(fmt_rate(r) for r in rates[s])] for s in rates]
    print()
    print(text_table(headers, rows))
    print(
        f"\nfile / memory = {file_over_memory:.2f}x (no target; the memory path is the reference)"
    )
    print("\nREADME table (markdown):\n")
    print(markdown_table(headers, rows))
    command = "python bench/bus_catchup.py " + " ".join(sys.argv[1:])
    print(f"\nCommand: {command.strip()}")
    path = write_results(
        "bus_catchup",
        {
            "benchmark": "bus_catchup",
            "timestamp": utc_timestamp(),
            "command": command.strip(),
            "parameters": {
                "messages": args.messages,
                "rounds": args.rounds,
                "consumer_concurrency": CONSUMER_CONCURRENCY,
                "consumer_batch": CONSUMER_BATCH,
                "publish_batch": PUBLISH_BATCH,
            },
            "machine": machine_info(("uvloop", "sampan")),
            "systems": {
                s: {"label": LABELS[s], "best_msg_per_s": best[s], "runs": rates[s]} for s in rates
            },
            "file_over_memory": file_over_memory,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
