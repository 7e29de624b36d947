"""Busy-loop benchmark: how long an embedded-bus publish takes while the event loop's thread
runs Python, by how many SQLite steps its transaction takes.

Every SQLite call the bus's database thread makes gives up the GIL, and the thread then
waits to take it back from a busy event loop (at least the switch interval, 0.1 ms in a
node). So, beside a busy loop, a commit costs about as much per statement as it does for
its fsync. This compares, interleaved publish by publish in one process:

* ``checked``: the bus as it runs. An append whose topic no other process wrote to since
  this one's last append only checks the next offset it already knows (one step);
* ``returning``: the same bus made to forget the offsets it knows before each publish, so
  every append reads them back with ``UPDATE ... RETURNING`` (two steps), as every append
  did before 2026-12-07 and as one after another process's write still does;
* ``checked, idle loop``: the first with nothing else running, the reference for what the
  transaction itself costs.

    .venv/bin/python bench/bus_busy_loop.py              # 3,000 publishes of 10 messages
    .venv/bin/python bench/bus_busy_loop.py --quick      # 600
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_ms,
    latency_summary,
    machine_info,
    markdown_table,
    ratio,
    text_table,
    utc_timestamp,
    write_results,
)
from sampan.bus.base import OutgoingMessage
from sampan.bus.sqlite import SqliteBus
from sampan.switch_interval import DEFAULT_SWITCH_INTERVAL

LABELS = {
    "checked": "checked append (the bus as it runs), busy loop",
    "returning": "UPDATE ... RETURNING on every append, busy loop",
    "idle": "checked append, idle loop (the reference)",
}


async def busy_loop(slice_seconds: float, stop: asyncio.Event) -> None:
    """The event loop's thread running Python in slices, as a flow working through batches."""
    clock = time.perf_counter
    while not stop.is_set():
        started = clock()
        while clock() - started < slice_seconds:
            sum(range(200))
        await asyncio.sleep(0)


async def measure(
    bus: SqliteBus, modes: Sequence[str], publishes: int, batch: int
) -> dict[str, list[int]]:
    """Publish latencies (ns) per mode, the modes taking turns publish by publish."""
    messages = [OutgoingMessage(b"x" * 500, f"k{i}") for i in range(batch)]
    store = bus._store  # the benchmark's one reach inside: making the bus forget its offsets
    assert store is not None
    await bus.publish_batch("orders", messages)
    samples: dict[str, list[int]] = {mode: [] for mode in modes}
    for i in range(publishes * len(modes)):
        mode = modes[i % len(modes)]
        if mode == "returning":
            store._own_runs.clear()
        started = time.perf_counter_ns()
        await bus.publish_batch("orders", messages)
        samples[mode].append(time.perf_counter_ns() - started)
    return samples


async def run(args: argparse.Namespace, root: Path) -> dict[str, list[int]]:
    bus = SqliteBus(f"sqlite:///{root / 'bus.db'}")
    await bus.start()
    try:
        samples = await measure(bus, ["idle"], args.publishes, args.batch)
        stop = asyncio.Event()
        loop_task = asyncio.ensure_future(busy_loop(args.slice_ms / 1000, stop))
        try:
            samples |= await measure(bus, ["checked", "returning"], args.publishes, args.batch)
        finally:
            stop.set()
            await loop_task
        return samples
    finally:
        await bus.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--publishes", type=int, default=3_000, help="per mode")
    parser.add_argument("--batch", type=int, default=10, help="messages per publish")
    parser.add_argument("--slice-ms", type=float, default=0.5, help="busy loop's slices")
    parser.add_argument("--quick", action="store_true", help="600 publishes per mode")
    parser.add_argument("--tmp", default="/tmp", help="where the SQLite file goes (not /dev/shm)")
    args = parser.parse_args(argv)
    if args.quick:
        args.publishes = min(args.publishes, 600)
    if args.publishes <= 0 or args.batch <= 0 or args.slice_ms <= 0:
        parser.error("--publishes, --batch and --slice-ms must be positive")
    return args


async def main(args: argparse.Namespace) -> int:
    sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL)  # as a node sets it
    root = Path(tempfile.mkdtemp(prefix="sampan-bench-busy-", dir=args.tmp))
    try:
        samples = await run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stats = {mode: latency_summary(values, (50, 90, 99)) for mode, values in samples.items()}
    order = ["checked", "returning", "idle"]
    headers = [f"publish of {args.batch} messages", "p50", "p90", "p99", "mean"]
    rows = [
        [LABELS[m], *(fmt_ms(stats[m][k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))]
        for m in order
    ]
    print(text_table(headers, rows))
    saved = ratio(stats["checked"]["p50_ms"], stats["returning"]["p50_ms"])
    print(f"\nchecked / returning at p50 = {saved:.2f}x (no target: the returning path is the")
    print("reference; the idle loop shows what the transaction costs without GIL waits)")
    print("\nREADME table (markdown):\n")
    print(markdown_table(headers, rows))
    command = "python bench/bus_busy_loop.py " + " ".join(sys.argv[1:])
    print(f"\nCommand: {command.strip()}")
    path = write_results(
        "bus_busy_loop",
        {
            "benchmark": "bus_busy_loop",
            "timestamp": utc_timestamp(),
            "command": command.strip(),
            "parameters": {
                "publishes_per_mode": args.publishes,
                "messages_per_publish": args.batch,
                "busy_slice_ms": args.slice_ms,
                "switch_interval_s": DEFAULT_SWITCH_INTERVAL,
                "durability": "full",
            },
            "machine": machine_info(("uvloop", "sampan")),
            "systems": {m: {"label": LABELS[m], **stats[m]} for m in order},
            "checked_over_returning_p50": saved,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
