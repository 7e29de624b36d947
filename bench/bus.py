"""Bus benchmark: the embedded SQLite bus vs raw Redis Streams vs raw NATS JetStream.

One run, one process, one workload (1 KiB JSON order events, one key per customer), three
systems measured one after the other on fresh topics/streams:

1. publish throughput — every message published as fast as the client allows, the idiomatic
   high-throughput way (embedded: ``publish_batch`` and concurrent ``publish()``; Redis: XADD
   pipelines; NATS: ``js.publish_async`` with bounded pending acks);
2. end-to-end throughput — consumer running first, then publish N; from the first publish to
   the moment the N-th message is acked;
3. latency at a fixed rate — a publisher paced by absolute 1 ms ticks; every message carries
   its *scheduled* send time (so a stall is not hidden by coordinated omission) and the handler
   records ``now - scheduled``.

Run (from the repository root, services on 127.0.0.1)::

    .venv/bin/python bench/bus.py                 # 200k messages, 10 s at 10,000 msg/s
    .venv/bin/python bench/bus.py --quick         # smoke run
    .venv/bin/python bench/bus.py --only sqlite,redis

Prints a table, the ratios against the targets and a README-ready markdown table, and writes
``bench/results/bus.json``. Exits 0 even when a target fails (it is a report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_ms,
    fmt_rate,
    latency_summary,
    machine_info,
    markdown_table,
    ratio,
    text_table,
    utc_timestamp,
    verdict,
    write_results,
)

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
NATS_URL = "nats://127.0.0.1:4222"

EVENT_SIZE = 1024
CUSTOMERS = 10_000
SEED = 20241111

PUBLISH_WINDOW = 500
"""Messages per publish_batch call / per Redis pipeline / per concurrent publish() window."""
PUBLISH_DEPTH = 2
"""Windows in flight at once (so the client never idles while a window completes)."""
CONSUMER_CONCURRENCY = 16
CONSUMER_BATCH = 256
NATS_MAX_PENDING = 4000
TICK_NS = 1_000_000

E2E_TARGET = 1.5
P99_TARGET_MS = 5.0

TARGET_E2E_SYSTEM = "sqlite-full"
REFERENCE_E2E_SYSTEM = "redis"


# -- workload -------------------------------------------------------------------------------------

SENT_PREFIX = b'{"sent_ns":"'
SENT_DIGITS = 19
SENT_END = len(SENT_PREFIX) + SENT_DIGITS

PRODUCTS = (
    ("CF-001", "Cà phê sữa đá", 29_000),
    ("TS-002", "Trà sữa trân châu", 45_000),
    ("BM-003", "Bánh mì thịt nướng", 25_000),
    ("PH-004", "Phở bò tái", 55_000),
    ("CM-005", "Cơm tấm sườn bì chả", 50_000),
    ("BT-006", "Bún bò Huế", 52_000),
    ("NC-007", "Nước cam ép", 35_000),
    ("SP-008", "Sữa chua nếp cẩm", 22_000),
    ("TH-009", "Tai nghe Bluetooth", 459_000),
    ("OP-010", "Ốp lưng điện thoại", 89_000),
    ("SM-011", "Sạc dự phòng 10000mAh", 399_000),
    ("AO-012", "Áo thun cotton", 149_000),
)
PROVINCES = ("Hà Nội", "TP. Hồ Chí Minh", "Đà Nẵng", "Hải Phòng", "Cần Thơ", "Huế", "Nha Trang")
CHANNELS = ("web", "app-ios", "app-android", "pos", "marketplace")


@dataclass(frozen=True, slots=True)
class Workload:
    payloads: list[bytes]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.payloads)


def make_event(rng: random.Random, seq: int, customer: str) -> bytes:
    items: list[dict[str, Any]] = []
    amount = 0
    for sku, name, price in rng.sample(PRODUCTS, rng.randint(1, 4)):
        qty = rng.randint(1, 3)
        amount += qty * price
        items.append({"sku": sku, "name": name, "qty": qty, "unit_price": price})
    event: dict[str, Any] = {
        # First, fixed width: the latency phase overwrites it in place with the send time.
        "sent_ns": "0" * SENT_DIGITS,
        "type": "order.created",
        "order_id": f"ORD-{seq:09d}-{rng.getrandbits(32):08x}",
        "customer_id": customer,
        "amount": amount,
        "currency": "VND",
        "items": items,
        "channel": rng.choice(CHANNELS),
        "shipping": {"province": rng.choice(PROVINCES), "fee": rng.choice((0, 15_000, 30_000))},
        "created_at": f"2024-11-11T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
        f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}+07:00",
        "pad": "",
    }
    raw = orjson.dumps(event)
    if len(raw) > EVENT_SIZE:
        raise AssertionError(f"event base is {len(raw)} bytes, over {EVENT_SIZE}")
    event["pad"] = "x" * (EVENT_SIZE - len(raw))
    raw = orjson.dumps(event)
    assert len(raw) == EVENT_SIZE and raw.startswith(SENT_PREFIX)
    return raw


def make_workload(messages: int, customers: int = CUSTOMERS, seed: int = SEED) -> Workload:
    rng = random.Random(seed)
    pool = [f"C{n:06d}" for n in range(customers)]
    keys = [rng.choice(pool) for _ in range(messages)]
    payloads = [make_event(rng, i, keys[i]) for i in range(messages)]
    return Workload(payloads, keys)


def stamp(payload: bytes, sent_ns: int) -> bytes:
    """The payload with its send time (perf_counter_ns, same process) written in place."""
    return b"%s%019d%s" % (SENT_PREFIX, sent_ns, payload[SENT_END:])


def handle(body: bytes) -> dict[str, Any]:
    """The handler's (trivial) work, the same for every system: decode the JSON event."""
    doc: dict[str, Any] = orjson.loads(body)
    return doc


# -- results --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    name: str
    method: str
    messages: int = 0
    seconds: float | None = None
    rate: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self, messages: int, seconds: float) -> None:
        self.messages = messages
        self.seconds = seconds
        self.rate = messages / seconds if seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "messages": self.messages,
            "seconds": self.seconds,
            "msg_per_s": self.rate,
            "error": self.error,
            **self.extra,
        }


@dataclass(slots=True)
class SystemResult:
    id: str
    label: str
    durable: str
    phases: dict[str, Phase] = field(default_factory=dict)
    error: str | None = None

    def rate(self, phase: str) -> float | None:
        found = self.phases.get(phase)
        return found.rate if found is not None and found.error is None else None

    def latency(self, key: str) -> float | None:
        found = self.phases.get("latency")
        if found is None or found.error is not None:
            return None
        value = found.extra.get("latency", {}).get(key)
        return None if value is None or math.isnan(value) else float(value)


class Pacer:
    """Publishes ``rate`` msg/s in bursts on absolute 1 ms ticks.

    Every message is stamped with its *scheduled* send time; if the loop stalls, the messages
    that fell due meanwhile go out in the next burst still carrying their scheduled times, so
    the stall shows up in the latencies (no coordinated omission). ``send`` must not block: it
    starts the publish and returns.
    """

    def __init__(self, workload: Workload, rate: float, seconds: float) -> None:
        self.workload = workload
        self.total = max(1, int(rate * seconds))
        self.interval_ns = 1e9 / rate
        self.started_ns = 0
        self.last_send_ns = 0
        self.max_burst = 0

    async def run(self, send: Callable[[list[int], list[bytes]], None]) -> None:
        payloads, n = self.workload.payloads, len(self.workload)
        interval = self.interval_ns
        t0 = time.perf_counter_ns() + 2 * TICK_NS
        self.started_ns = t0
        sent = 0
        while sent < self.total:
            now = time.perf_counter_ns()
            due = 0 if now < t0 else min(self.total, int((now - t0) / interval) + 1)
            if due > sent:
                indexes = list(range(sent, due))
                bodies = [stamp(payloads[j % n], t0 + int(j * interval)) for j in indexes]
                send(indexes, bodies)
                self.max_burst = max(self.max_burst, len(indexes))
                sent = due
                self.last_send_ns = time.perf_counter_ns()
            next_tick = t0 + ((max(now, t0) - t0) // TICK_NS + 1) * TICK_NS
            await asyncio.sleep(max(0, next_tick - time.perf_counter_ns()) / 1e9)

    @property
    def achieved_rate(self) -> float | None:
        span = (self.last_send_ns - self.started_ns) / 1e9
        # n messages scheduled over (n - 1) intervals
        return (self.total - 1) / span if span > 0 and self.total > 1 else None


class TaskSet:
    """Background publish tasks started by the pacer; errors are counted, not lost."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.errors = 0
        self.first_error: str | None = None

    def start(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


async def windows(
    total: int, size: int, depth: int, start_window: Callable[[int, int], Awaitable[Any]]
) -> None:
    """Run ``start_window(lo, hi)`` over [0, total) in windows, ``depth`` of them in flight."""
    in_flight: list[asyncio.Future[Any]] = []
    for lo in range(0, total, size):
        in_flight.append(asyncio.ensure_future(start_window(lo, min(total, lo + size))))
        if len(in_flight) >= depth:
            await in_flight.pop(0)
    for fut in in_flight:
        await fut


async def wait_until(predicate: Callable[[], bool], within: float, step: float = 0.0005) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


# -- the systems ----------------------------------------------------------------------------------


class System:
    id: str
    label: str
    durable: str

    async def setup(self) -> dict[str, Any]:
        """Connect; return facts about the server for the results (version, ...)."""
        return {}

    async def teardown(self) -> None: ...

    async def publish_phases(self, wl: Workload) -> list[Phase]:
        raise NotImplementedError

    async def end_to_end(self, wl: Workload, phase: Phase) -> None:
        raise NotImplementedError

    async def latency(
        self, wl: Workload, rate: float, seconds: float, phase: Phase, drain_timeout: float
    ) -> None:
        raise NotImplementedError


def _record_latency(phase: Phase, pacer: Pacer, samples: list[int], publish: TaskSet) -> None:
    phase.finish(len(samples), (pacer.last_send_ns - pacer.started_ns) / 1e9)
    phase.rate = pacer.achieved_rate
    phase.extra.update(
        {
            "scheduled": pacer.total,
            "received": len(samples),
            "publish_errors": publish.errors,
            "first_publish_error": publish.first_error,
            "max_burst": pacer.max_burst,
            "latency": latency_summary(samples),
        }
    )
    if len(samples) < pacer.total:
        phase.error = f"received {len(samples)} of {pacer.total} messages"


# -- embedded (SQLite) ----------------------------------------------------------------------------


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


class Embedded(System):
    def __init__(self, durability: str, tmp: Path) -> None:
        self.durability = durability
        self.tmp = tmp
        self.id = f"sqlite-{durability}"
        self.label = f"sampan embedded (SQLite, durability={durability})"
        self.durable = (
            "yes (fsync per group commit)" if durability == "full" else "WAL, no fsync per commit"
        )
        self._seq = 0

    async def setup(self) -> dict[str, Any]:
        import sqlite3

        return {"sqlite": sqlite3.sqlite_version, "db_dir": str(self.tmp)}

    @contextlib.asynccontextmanager
    async def _bus(self, name: str) -> Any:
        from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
        from sampan.observe.metrics import Metrics

        self._seq += 1
        path = self.tmp / f"{self.id}-{self._seq}-{name}.db"
        metrics = Metrics()
        bus = SqliteBus(f"sqlite:///{path}", SqliteBusOptions(durability=self.durability), metrics)
        await bus.start()
        try:
            await bus.create_topic("orders")
            yield bus, metrics
        finally:
            await bus.close()
            remove_db(path)

    async def _publish_batches(self, bus: Any, wl: Workload, total: int) -> None:
        from sampan.bus.base import OutgoingMessage

        payloads, keys = wl.payloads, wl.keys

        async def window(lo: int, hi: int) -> None:
            await bus.publish_batch(
                "orders", [OutgoingMessage(payloads[i], keys[i]) for i in range(lo, hi)]
            )

        await windows(total, PUBLISH_WINDOW, PUBLISH_DEPTH, window)

    async def _publish_singles(self, bus: Any, wl: Workload, total: int) -> None:
        payloads, keys = wl.payloads, wl.keys

        async def window(lo: int, hi: int) -> None:
            await asyncio.gather(
                *(bus.publish("orders", payloads[i], key=keys[i]) for i in range(lo, hi))
            )

        await windows(total, PUBLISH_WINDOW, PUBLISH_DEPTH, window)

    async def publish_phases(self, wl: Workload) -> list[Phase]:
        n = len(wl)
        batch = Phase(
            "publish_batch",
            f"publish_batch({PUBLISH_WINDOW}), {PUBLISH_DEPTH} in flight",
        )
        async with self._bus("publish-batch") as (bus, _):
            t0 = time.perf_counter()
            await self._publish_batches(bus, wl, n)
            batch.finish(n, time.perf_counter() - t0)
        single = Phase(
            "publish_single",
            f"publish() x{PUBLISH_WINDOW * PUBLISH_DEPTH} in flight (gather windows)",
        )
        async with self._bus("publish-single") as (bus, _):
            t0 = time.perf_counter()
            await self._publish_singles(bus, wl, n)
            single.finish(n, time.perf_counter() - t0)
        return [batch, single]

    async def end_to_end(self, wl: Workload, phase: Phase) -> None:
        from sampan.bus.base import Delivery
        from sampan.bus.consumer import Consumer, ConsumerOptions

        n = len(wl)
        phase.method = (
            f"publish_batch({PUBLISH_WINDOW}) -> Consumer(concurrency={CONSUMER_CONCURRENCY},"
            f" batch={CONSUMER_BATCH}), acks batched by the runner"
        )
        async with self._bus("e2e") as (bus, metrics):
            seen = bytearray(n)
            state = {"distinct": 0, "duplicates": 0}
            all_handled = asyncio.Event()

            async def handler(d: Delivery) -> None:
                handle(d.value)
                if seen[d.offset]:
                    state["duplicates"] += 1
                    return
                seen[d.offset] = 1
                state["distinct"] += 1
                if state["distinct"] == n:
                    all_handled.set()

            options = ConsumerOptions(concurrency=CONSUMER_CONCURRENCY, batch=CONSUMER_BATCH)
            consumer = Consumer(bus, "orders", "bench", handler, options, metrics=metrics)
            acked = metrics.counter(
                "sampan_bus_acked", "Messages acked.", topic="orders", group="bench"
            )
            await consumer.start()
            try:
                t0 = time.perf_counter()
                publisher = asyncio.ensure_future(self._publish_batches(bus, wl, n))
                publisher.add_done_callback(
                    lambda _: phase.extra.update(publish_done_s=time.perf_counter() - t0)
                )
                try:
                    await all_handled.wait()
                    await wait_until(lambda: acked.value >= n, within=60)
                    phase.finish(n, time.perf_counter() - t0)
                finally:
                    if not publisher.done():
                        publisher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await publisher
                    phase.extra.update(handled=state["distinct"], acked=int(acked.value))
            finally:
                await consumer.stop()
            lag = await bus.lag("orders", "bench")
            phase.extra.update(duplicates=state["duplicates"], lag_after=lag)
            if lag:
                phase.error = f"group lag {lag} after the run"

    async def latency(
        self, wl: Workload, rate: float, seconds: float, phase: Phase, drain_timeout: float
    ) -> None:
        from sampan.bus.base import Delivery
        from sampan.bus.consumer import Consumer, ConsumerOptions

        phase.method = (
            "paced publish() per message (tasks) -> Consumer"
            f"(concurrency={CONSUMER_CONCURRENCY}, batch={CONSUMER_BATCH})"
        )
        pacer = Pacer(wl, rate, seconds)
        samples: list[int] = []
        keys = wl.keys
        n = len(wl)
        async with self._bus("latency") as (bus, metrics):

            async def handler(d: Delivery) -> None:
                doc = handle(d.value)
                samples.append(time.perf_counter_ns() - int(doc["sent_ns"]))

            options = ConsumerOptions(concurrency=CONSUMER_CONCURRENCY, batch=CONSUMER_BATCH)
            consumer = Consumer(bus, "orders", "bench", handler, options, metrics=metrics)
            await consumer.start()
            publish = TaskSet()
            try:

                def send(indexes: list[int], bodies: list[bytes]) -> None:
                    for j, body in zip(indexes, bodies, strict=True):
                        publish.start(bus.publish("orders", body, key=keys[j % n]))

                try:
                    await pacer.run(send)
                    await publish.drain()
                    await wait_until(lambda: len(samples) >= pacer.total, drain_timeout, 0.005)
                finally:
                    publish.cancel()
                    _record_latency(phase, pacer, samples, publish)
            finally:
                await consumer.stop()


# -- Redis Streams (raw redis-py) -----------------------------------------------------------------


class RedisStreams(System):
    id = "redis"
    label = "Redis Streams (raw redis-py)"
    durable = "no (in-memory, appendonly no)"

    def __init__(self) -> None:
        self.prefix = f"sampan-bench:bus:{os.getpid()}"
        self._created: set[str] = set()
        self._clients: list[Any] = []

    def _client(self) -> Any:
        import redis.asyncio as aioredis

        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        self._clients.append(client)
        return client

    async def setup(self) -> dict[str, Any]:
        from redis.utils import HIREDIS_AVAILABLE

        self.hiredis = bool(HIREDIS_AVAILABLE)
        parser = "hiredis parser" if self.hiredis else "pure-Python parser, no hiredis"
        self.label = f"Redis Streams (raw redis-py, {parser})"
        self.producer = self._client()
        self.reader = self._client()
        info = await self.producer.info("server")
        persistence = await self.producer.info("persistence")
        appendonly = await self.producer.config_get("appendonly")
        return {
            "redis_version": info.get("redis_version"),
            "aof_enabled": persistence.get("aof_enabled"),
            "appendonly": appendonly.get("appendonly", appendonly.get(b"appendonly")),
            "hiredis_parser": HIREDIS_AVAILABLE,
        }

    async def teardown(self) -> None:
        if self._created and self._clients:
            with contextlib.suppress(Exception):
                await self._clients[0].delete(*self._created)
            self._created.clear()
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self._clients.clear()

    async def _stream(self, name: str) -> str:
        key = f"{self.prefix}:{name}"
        self._created.add(key)
        await self.producer.delete(key)
        return key

    async def _drop(self, key: str) -> None:
        await self.producer.delete(key)
        self._created.discard(key)

    async def _publish_pipelined(self, stream: str, wl: Workload, total: int) -> None:
        payloads, keys = wl.payloads, wl.keys

        async def window(lo: int, hi: int) -> None:
            pipe = self.producer.pipeline(transaction=False)
            for i in range(lo, hi):
                pipe.xadd(stream, {"key": keys[i], "data": payloads[i]})
            await pipe.execute()

        await windows(total, PUBLISH_WINDOW, PUBLISH_DEPTH, window)

    async def publish_phases(self, wl: Workload) -> list[Phase]:
        n = len(wl)
        phase = Phase(
            "publish_batch",
            f"XADD pipeline({PUBLISH_WINDOW}, transaction=False), {PUBLISH_DEPTH} in flight",
        )
        stream = await self._stream("publish")
        try:
            t0 = time.perf_counter()
            await self._publish_pipelined(stream, wl, n)
            phase.finish(n, time.perf_counter() - t0)
            length = await self.producer.xlen(stream)
            if length != n:
                phase.error = f"XLEN {length} != {n}"
        finally:
            await self._drop(stream)
        return [phase]

    async def _consume(
        self,
        stream: str,
        group: str,
        on_message: Callable[[bytes], object],
        stop: Callable[[], bool],
        counts: dict[str, int],
    ) -> None:
        """XREADGROUP COUNT 256 BLOCK 100 in a loop; each batch's XACK rides in the same pipeline
        as the next read (one round trip). Stops once ``stop()`` says all work is done."""
        to_ack: list[bytes] = []
        while True:
            if stop():
                if to_ack:
                    counts["acked"] += await self.reader.xack(stream, group, *to_ack)
                return
            pipe = self.reader.pipeline(transaction=False)
            if to_ack:
                pipe.xack(stream, group, *to_ack)
            pipe.xreadgroup(group, "c1", {stream: ">"}, count=CONSUMER_BATCH, block=100)
            replies = await pipe.execute()
            if to_ack:
                counts["acked"] += replies[0]
                to_ack = []
            reply = replies[-1]
            if not reply:
                continue
            entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
            for entry_id, fields in entries:
                on_message(fields[b"data"])
                to_ack.append(entry_id)
            counts["handled"] += len(entries)

    async def end_to_end(self, wl: Workload, phase: Phase) -> None:
        n = len(wl)
        phase.method = (
            f"XADD pipeline({PUBLISH_WINDOW}) -> XREADGROUP COUNT {CONSUMER_BATCH} BLOCK 100,"
            " XACK per batch pipelined with the next read"
        )
        stream = await self._stream("e2e")
        try:
            await self.producer.xgroup_create(stream, "bench", id="0", mkstream=True)
            counts = {"handled": 0, "acked": 0}
            consumer = asyncio.ensure_future(
                self._consume(stream, "bench", handle, lambda: counts["handled"] >= n, counts)
            )
            await asyncio.sleep(0.05)  # let the first XREADGROUP block
            t0 = time.perf_counter()
            publisher = asyncio.ensure_future(self._publish_pipelined(stream, wl, n))
            try:
                publisher.add_done_callback(
                    lambda _: phase.extra.update(publish_done_s=time.perf_counter() - t0)
                )
                await consumer
                phase.finish(n, time.perf_counter() - t0)
                await publisher
            finally:
                for task in (consumer, publisher):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                phase.extra.update(counts)
            pending = await self.producer.xpending(stream, "bench")
            phase.extra["pending_after"] = pending["pending"]
            if pending["pending"] or counts["acked"] != n:
                phase.error = f"acked {counts['acked']}, pending {pending['pending']}"
        finally:
            await self._drop(stream)

    async def latency(
        self, wl: Workload, rate: float, seconds: float, phase: Phase, drain_timeout: float
    ) -> None:
        phase.method = (
            "paced XADD pipeline per 1 ms burst (tasks) -> XREADGROUP COUNT"
            f" {CONSUMER_BATCH} BLOCK 100 + XACK"
        )
        pacer = Pacer(wl, rate, seconds)
        samples: list[int] = []
        keys = wl.keys
        n = len(wl)
        stream = await self._stream("latency")
        try:
            await self.producer.xgroup_create(stream, "bench", id="0", mkstream=True)

            def on_message(body: bytes) -> None:
                doc = handle(body)
                samples.append(time.perf_counter_ns() - int(doc["sent_ns"]))

            counts = {"handled": 0, "acked": 0}
            done = asyncio.Event()
            consumer = asyncio.ensure_future(
                self._consume(stream, "bench", on_message, done.is_set, counts)
            )
            await asyncio.sleep(0.05)
            publish = TaskSet()

            async def burst(indexes: list[int], bodies: list[bytes]) -> None:
                pipe = self.producer.pipeline(transaction=False)
                for j, body in zip(indexes, bodies, strict=True):
                    pipe.xadd(stream, {"key": keys[j % n], "data": body})
                await pipe.execute()

            try:
                await pacer.run(lambda idx, bodies: publish.start(burst(idx, bodies)))
                await publish.drain()
                await wait_until(lambda: len(samples) >= pacer.total, drain_timeout, 0.005)
            finally:
                done.set()
                publish.cancel()
                _record_latency(phase, pacer, samples, publish)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(consumer, 1.0)
                consumer.cancel()
        finally:
            await self._drop(stream)


# -- NATS JetStream (raw nats-py) -----------------------------------------------------------------


class NatsJetStream(System):
    id = "nats"
    label = "NATS JetStream (raw nats-py)"
    durable = "file storage, no fsync per message"

    def __init__(self) -> None:
        self.prefix = f"SAMPAN_BENCH_{os.getpid()}"
        self.subject_prefix = f"sampan-bench.{os.getpid()}"
        self._streams: set[str] = set()

    async def setup(self) -> dict[str, Any]:
        import nats

        self.nc = await nats.connect(NATS_URL, max_reconnect_attempts=0)
        self.js = self.nc.jetstream(publish_async_max_pending=NATS_MAX_PENDING)
        self.jsm = self.nc.jsm()
        return {"nats_server_version": self.nc.connected_server_version.__str__().strip("<>")}

    async def teardown(self) -> None:
        if not hasattr(self, "nc"):
            return
        for name in list(self._streams):
            with contextlib.suppress(Exception):
                await self.jsm.delete_stream(name)
        self._streams.clear()
        with contextlib.suppress(Exception):
            await self.nc.close()

    async def _stream(self, name: str) -> tuple[str, str]:
        from nats.js.api import StorageType, StreamConfig

        stream = f"{self.prefix}_{name.upper()}"
        subjects = f"{self.subject_prefix}.{name}"
        with contextlib.suppress(Exception):
            await self.jsm.delete_stream(stream)
        self._streams.add(stream)
        await self.jsm.add_stream(
            StreamConfig(name=stream, subjects=[f"{subjects}.>"], storage=StorageType.FILE)
        )
        return stream, subjects

    async def _drop(self, stream: str) -> None:
        await self.jsm.delete_stream(stream)
        self._streams.discard(stream)

    async def _publish_async(
        self, subjects: str, wl: Workload, total: int
    ) -> list[asyncio.Future[Any]]:
        payloads, keys = wl.payloads, wl.keys
        js = self.js
        futures = [
            await js.publish_async(f"{subjects}.{keys[i]}", payloads[i]) for i in range(total)
        ]
        await js.publish_async_completed()
        return futures

    @staticmethod
    def _errors(futures: Sequence[asyncio.Future[Any]]) -> int:
        return sum(1 for f in futures if not f.done() or f.cancelled() or f.exception())

    async def publish_phases(self, wl: Workload) -> list[Phase]:
        n = len(wl)
        phase = Phase("publish_single", f"js.publish_async (<= {NATS_MAX_PENDING} pending PubAcks)")
        stream, subjects = await self._stream("publish")
        try:
            t0 = time.perf_counter()
            futures = await self._publish_async(subjects, wl, n)
            phase.finish(n, time.perf_counter() - t0)
            errors = self._errors(futures)
            info = await self.jsm.stream_info(stream)
            phase.extra.update(errors=errors, stream_messages=info.state.messages)
            if errors or info.state.messages != n:
                phase.error = f"{errors} publish errors, stream holds {info.state.messages}"
        finally:
            await self._drop(stream)
        return [phase]

    async def _pull_subscribe(self, stream: str, subjects: str) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return await self.js.pull_subscribe(
            f"{subjects}.>",
            durable="bench",
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=CONSUMER_BATCH * 8,
            ),
        )

    fetch_timeout = 0.05
    """Upper bound on how long a fetch waits to fill its batch once it has a first message."""

    async def _consume(
        self,
        sub: Any,
        on_message: Callable[[bytes], object],
        stop: Callable[[], bool],
        counts: dict[str, int],
    ) -> None:
        """fetch(256) in a loop; each message handled then acked (``msg.ack()`` publishes the
        ack without waiting for a reply, the usual fast path)."""
        while not stop():
            try:
                msgs = await sub.fetch(CONSUMER_BATCH, timeout=self.fetch_timeout)
            except TimeoutError:
                continue
            for msg in msgs:
                on_message(msg.data)
                await msg.ack()
            counts["handled"] += len(msgs)

    async def end_to_end(self, wl: Workload, phase: Phase) -> None:
        n = len(wl)
        phase.method = (
            f"js.publish_async -> durable pull consumer fetch({CONSUMER_BATCH}), msg.ack() each,"
            " flush at the end"
        )
        stream, subjects = await self._stream("e2e")
        try:
            sub = await self._pull_subscribe(stream, subjects)
            counts = {"handled": 0}
            consumer = asyncio.ensure_future(
                self._consume(sub, handle, lambda: counts["handled"] >= n, counts)
            )
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            publisher = asyncio.ensure_future(self._publish_async(subjects, wl, n))
            try:
                publisher.add_done_callback(
                    lambda _: phase.extra.update(publish_done_s=time.perf_counter() - t0)
                )
                await consumer
                await self.nc.flush()  # the server has now received every ack
                phase.finish(n, time.perf_counter() - t0)
                futures = await publisher
                phase.extra["publish_errors"] = self._errors(futures)
            finally:
                for task in (consumer, publisher):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                phase.extra.update(counts)
            # Acks are fire-and-forget; give the server a moment to apply the last ones.
            info = None
            for _ in range(50):
                info = await self.jsm.consumer_info(stream, "bench")
                if info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.02)
            assert info is not None
            phase.extra.update(
                ack_pending_after=info.num_ack_pending,
                redelivered=info.num_redelivered,
                delivered_stream_seq=info.delivered.stream_seq,
            )
            if info.num_ack_pending or info.num_redelivered or info.num_pending:
                phase.error = (
                    f"ack pending {info.num_ack_pending}, redelivered {info.num_redelivered},"
                    f" unread {info.num_pending}"
                )
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        finally:
            await self._drop(stream)

    async def latency(
        self, wl: Workload, rate: float, seconds: float, phase: Phase, drain_timeout: float
    ) -> None:
        phase.method = (
            f"paced js.publish_async per message -> pull fetch({CONSUMER_BATCH}) + msg.ack()"
        )
        pacer = Pacer(wl, rate, seconds)
        samples: list[int] = []
        keys = wl.keys
        n = len(wl)
        stream, subjects = await self._stream("latency")
        try:
            sub = await self._pull_subscribe(stream, subjects)

            def on_message(body: bytes) -> None:
                doc = handle(body)
                samples.append(time.perf_counter_ns() - int(doc["sent_ns"]))

            done = asyncio.Event()
            counts = {"handled": 0}
            consumer = asyncio.ensure_future(self._consume(sub, on_message, done.is_set, counts))
            await asyncio.sleep(0.05)
            publish = TaskSet()
            acks: list[asyncio.Future[Any]] = []

            async def burst(indexes: list[int], bodies: list[bytes]) -> None:
                for j, body in zip(indexes, bodies, strict=True):
                    acks.append(await self.js.publish_async(f"{subjects}.{keys[j % n]}", body))

            try:
                await pacer.run(lambda idx, bodies: publish.start(burst(idx, bodies)))
                await publish.drain()
                await wait_until(lambda: len(samples) >= pacer.total, drain_timeout, 0.005)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.js.publish_async_completed(), 5)
            finally:
                done.set()
                publish.cancel()
                publish.errors += self._errors(acks)
                _record_latency(phase, pacer, samples, publish)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(consumer, 1.0)
                consumer.cancel()
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        finally:
            await self._drop(stream)


# -- running --------------------------------------------------------------------------------------


async def run_phase(
    result: SystemResult, phase: Phase, body: Awaitable[None], limit: float, quiet: bool = False
) -> None:
    result.phases[phase.name] = phase
    gc.collect()
    if not quiet:
        print(f"  {phase.name:<15} ...", end="", flush=True)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            await body
    except TimeoutError:
        phase.error = f"timed out after {limit:.0f} s"
    except Exception as exc:  # a report: note the failure, go on with the next phase
        phase.error = f"{type(exc).__name__}: {exc}"
    took = time.perf_counter() - started
    if quiet:
        if phase.error:
            print(f"  {phase.name:<15} FAILED ({phase.error}) [{took:.1f} s]")
    elif phase.error:
        print(f" FAILED ({phase.error}) [{took:.1f} s]")
    elif phase.name == "latency":
        lat = phase.extra["latency"]
        print(
            f" p50 {fmt_ms(lat['p50_ms'])}, p99 {fmt_ms(lat['p99_ms'])},"
            f" max {fmt_ms(lat['max_ms'])} at {fmt_rate(phase.rate)} [{took:.1f} s]"
        )
    else:
        print(f" {fmt_rate(phase.rate)} [{took:.1f} s]")


async def run_system(system: System, wl: Workload, args: argparse.Namespace) -> SystemResult:
    result = SystemResult(system.id, system.label, system.durable)
    print(f"\n{system.label}")
    timeout = args.phase_timeout
    try:
        server = await asyncio.wait_for(system.setup(), 10)
        result.label = system.label
        result.phases["_server"] = Phase("_server", "", extra=server)

        async def publish() -> None:
            for phase in await system.publish_phases(wl):
                result.phases[phase.name] = phase
                state = f"FAILED ({phase.error})" if phase.error else fmt_rate(phase.rate)
                print(f"  {phase.name:<15} ... {state}  ({phase.method})", flush=True)

        holder = Phase("publish", "")
        await run_phase(result, holder, publish(), timeout * 2, quiet=True)
        result.phases.pop("publish")
        if holder.error:
            result.error = f"publish: {holder.error}"
        e2e = Phase("e2e", "")
        await run_phase(result, e2e, system.end_to_end(wl, e2e), timeout)
        latency = Phase("latency", "")
        await run_phase(
            result,
            latency,
            system.latency(wl, args.rate, args.latency_seconds, latency, args.drain_timeout),
            args.latency_seconds + args.drain_timeout + 30,
        )
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"  FAILED: {result.error}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(system.teardown(), 30)
    return result


def build_rows(results: Sequence[SystemResult]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "system",
        "durable",
        "publish, batched",
        "publish, per message",
        "end-to-end",
        "p50",
        "p90",
        "p99",
        "max",
        "paced rate",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.label,
                r.durable,
                fmt_rate(r.rate("publish_batch")),
                fmt_rate(r.rate("publish_single")),
                fmt_rate(r.rate("e2e")),
                fmt_ms(r.latency("p50_ms")),
                fmt_ms(r.latency("p90_ms")),
                fmt_ms(r.latency("p99_ms")),
                fmt_ms(r.latency("max_ms")),
                fmt_rate(r.phases["latency"].rate) if "latency" in r.phases else "—",
            ]
        )
    return headers, rows


def method_lines(results: Sequence[SystemResult]) -> list[str]:
    lines = []
    for r in results:
        for name in ("publish_batch", "publish_single", "e2e", "latency"):
            phase = r.phases.get(name)
            if phase is not None and phase.method:
                lines.append(f"- {r.label} / {name}: {phase.method}")
    return lines


def evaluate(results: dict[str, SystemResult], rate: float) -> dict[str, Any]:
    embedded = results.get(TARGET_E2E_SYSTEM)
    redis = results.get(REFERENCE_E2E_SYSTEM)
    e2e_ratio = ratio(
        embedded.rate("e2e") if embedded else None, redis.rate("e2e") if redis else None
    )
    p99 = embedded.latency("p99_ms") if embedded else None
    paced = embedded.phases.get("latency") if embedded else None
    rate_ok = bool(paced and paced.rate and paced.rate >= 0.98 * rate and not paced.error)
    return {
        "embedded_e2e_over_redis_e2e": e2e_ratio,
        "e2e_target": E2E_TARGET,
        "e2e_pass": None if e2e_ratio is None else e2e_ratio >= E2E_TARGET,
        "embedded_p99_ms": p99,
        "p99_target_ms": P99_TARGET_MS,
        "p99_pass": None if p99 is None else (p99 <= P99_TARGET_MS and rate_ok),
        "embedded_paced_rate_ok": rate_ok,
        "info": {
            f"{a}_e2e_over_{b}_e2e": ratio(
                results[a].rate("e2e") if a in results else None,
                results[b].rate("e2e") if b in results else None,
            )
            for a, b in (
                ("sqlite-full", "nats"),
                ("sqlite-normal", "redis"),
                ("sqlite-normal", "nats"),
            )
        },
    }


def print_report(
    results: dict[str, SystemResult], verdicts: dict[str, Any], args: argparse.Namespace
) -> None:
    ordered = list(results.values())
    headers, rows = build_rows(ordered)
    print(
        f"\n== bus: {args.messages:,} x {EVENT_SIZE} B JSON events, {CUSTOMERS:,} keys;"
        f" latency at {args.rate:,.0f} msg/s for {args.latency_seconds:g} s =="
    )
    print(text_table(headers, rows, left=2))
    errors = [
        f"  ! {r.label} / {name}: {p.error}"
        for r in ordered
        for name, p in r.phases.items()
        if p.error
    ] + [f"  ! {r.label}: {r.error}" for r in ordered if r.error]
    if errors:
        print("\nproblems:")
        print("\n".join(errors))

    print("\ntargets:")
    e2e_ratio = verdicts["embedded_e2e_over_redis_e2e"]
    if e2e_ratio is None:
        print(f"  embedded e2e / redis e2e = n/a (target >= {E2E_TARGET}x: N/A)")
    else:
        print(
            f"  embedded e2e / redis e2e = {e2e_ratio:.2f}x"
            f" (target >= {E2E_TARGET}x: {verdict(verdicts['e2e_pass'])})"
        )
    p99 = verdicts["embedded_p99_ms"]
    rate_note = "" if verdicts["embedded_paced_rate_ok"] else " (paced rate not reached)"
    print(
        f"  embedded p99 at {args.rate:,.0f} msg/s = {fmt_ms(p99)}"
        f" (target <= {P99_TARGET_MS:g} ms: {verdict(verdicts['p99_pass'])}){rate_note}"
    )
    for name, value in verdicts["info"].items():
        if value is not None:
            print(f"  (info) {name} = {value:.2f}x")
    redis_server = (
        results[REFERENCE_E2E_SYSTEM].phases.get("_server")
        if REFERENCE_E2E_SYSTEM in results
        else None
    )
    if redis_server is not None and not redis_server.extra.get("hiredis_parser"):
        print(
            "  WARNING: the Redis reference runs redis-py's pure-Python RESP parser (hiredis is"
            " not installed); its consumer is CPU-bound in that parser, so the e2e ratio above"
            " flatters the embedded bus. Install hiredis and rerun for the reference an informed"
            " redis-py user would run."
        )

    print("\nmethods:")
    print("\n".join(method_lines(ordered)))
    print("\nREADME table (markdown):\n")
    print(markdown_table(headers, rows, left=2))
    print(f"\nCommand: {command_line(args)}")


def command_line(args: argparse.Namespace) -> str:
    return (
        ".venv/bin/python bench/bus.py " + " ".join(sys.argv[1:])
        if sys.argv[1:]
        else (".venv/bin/python bench/bus.py")
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=200_000, help="messages per phase")
    parser.add_argument("--rate", type=float, default=10_000, help="paced rate, msg/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--only",
        default="sqlite,redis,nats",
        help="comma list of: sqlite (durability=full), sqlite-normal, redis, nats"
        " (sqlite also runs sqlite-normal unless --no-normal)",
    )
    parser.add_argument("--no-normal", action="store_true", help="skip the durability=normal row")
    parser.add_argument("--quick", action="store_true", help="20k messages, 3 s latency phase")
    parser.add_argument("--phase-timeout", type=float, default=90.0, help="seconds per phase")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--tmp", default="/tmp", help="where the SQLite files go (not /dev/shm)")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="GIL switch interval in seconds for the whole run (default: what a node sets,"
        " node.gil_switch_interval's default; 0.005 is Python's own)",
    )
    parser.add_argument(
        "--gc-young-threshold",
        type=int,
        default=None,
        help="the garbage collector's youngest-generation threshold for the whole run, as"
        " node.gc_young_threshold would set it (default: Python's own, 700)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 20_000)
        args.latency_seconds = min(args.latency_seconds, 3.0)
    if args.messages <= 0 or args.rate <= 0 or args.latency_seconds <= 0:
        parser.error("--messages, --rate and --latency-seconds must be positive")
    if args.switch_interval is not None and not 0 < args.switch_interval <= 1:
        parser.error("--switch-interval must be in (0, 1] seconds")
    if args.gc_young_threshold is not None and args.gc_young_threshold < 100:
        parser.error("--gc-young-threshold must be at least 100")
    return args


async def main(args: argparse.Namespace) -> int:
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - {"sqlite", "sqlite-normal", "redis", "nats"}
    if unknown:
        print(f"unknown system(s) in --only: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"generating {args.messages:,} events of {EVENT_SIZE} B ...", flush=True)
    wl = make_workload(args.messages)
    gc.collect()
    gc.freeze()  # the pre-generated workload is not the benchmark's garbage
    # The embedded bus runs inside a node, which sets this for its process (a lone client
    # thread, as in the Redis and NATS phases, never waits for the GIL, so they are unchanged).
    from sampan.gc_threshold import GcYoungThreshold
    from sampan.switch_interval import DEFAULT_SWITCH_INTERVAL

    sys.setswitchinterval(args.switch_interval or DEFAULT_SWITCH_INTERVAL)
    # As node.gc_young_threshold would, for the whole run (None: Python's own, a node's default).
    GcYoungThreshold(args.gc_young_threshold).apply()

    tmp = Path(tempfile.mkdtemp(prefix="sampan-bench-bus-", dir=args.tmp))
    systems: list[System] = []
    if "sqlite" in wanted:
        systems.append(Embedded("full", tmp))
    if ("sqlite" in wanted and not args.no_normal) or "sqlite-normal" in wanted:
        systems.append(Embedded("normal", tmp))
    if "redis" in wanted:
        systems.append(RedisStreams())
    if "nats" in wanted:
        systems.append(NatsJetStream())

    results: dict[str, SystemResult] = {}
    try:
        for system in systems:
            results[system.id] = await run_system(system, wl, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    verdicts = evaluate(results, args.rate)
    print_report(results, verdicts, args)
    servers = {
        r.id: r.phases.pop("_server").extra for r in results.values() if "_server" in r.phases
    }
    path = write_results(
        "bus",
        {
            "benchmark": "bus",
            "timestamp": utc_timestamp(),
            "command": command_line(args),
            "duration_s": round(time.perf_counter() - started, 1),
            "parameters": {
                "messages": args.messages,
                "event_bytes": EVENT_SIZE,
                "customers": CUSTOMERS,
                "rate": args.rate,
                "latency_seconds": args.latency_seconds,
                "publish_window": PUBLISH_WINDOW,
                "publish_depth": PUBLISH_DEPTH,
                "consumer_concurrency": CONSUMER_CONCURRENCY,
                "consumer_batch": CONSUMER_BATCH,
                "nats_max_pending": NATS_MAX_PENDING,
                "event_loop": "uvloop",
                "gil_switch_interval_s": sys.getswitchinterval(),
                "gc_threshold": list(gc.get_threshold()),
                "quick": args.quick,
            },
            "machine": {
                **machine_info(("uvloop", "orjson", "redis", "nats-py", "hiredis", "sampan")),
                "servers": servers,
            },
            "targets": verdicts,
            "systems": {
                r.id: {
                    "label": r.label,
                    "durable": r.durable,
                    "error": r.error,
                    "phases": {name: p.as_dict() for name, p in r.phases.items()},
                }
                for r in results.values()
            },
        },
    )
    print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
