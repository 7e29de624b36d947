"""Flows benchmark: a 5-step flow vs the same work hand-written, on the embedded bus and NATS.

The flow (validate -> transform -> choice -> enrich with a cache -> to topic) runs in a real
node (``sampan.node.Node``, built from a generated ``sampan.yaml``) against N Vietnamese
retail orders (~0.6-0.9 KiB JSON, one key per customer, 1,000 customers). The enrich service
is a real HTTP server (sampan's ``HttpServer`` in a child process) registered as a mesh
service with a static endpoint on 127.0.0.1; with a 60 s TTL cache most lookups are hits.

Measured in the same run, on fresh topics/streams each time:

1. ``flow-sqlite``: the flow on the embedded bus (SQLite, ``durability: full``);
2. ``handwritten-sqlite``: ``bus.subscribe`` with a plain-Python handler doing the same five
   things (fastjsonschema, a dict comprehension, an ``if``, a dict cache in front of the same
   mesh service, ``bus.publish``), consuming ``concurrency`` 256 (its best; the flow's 1,024);
3. ``flow-nats``: the flow on sampan's NATS JetStream backend;
4. ``handwritten-nats``: the hand-written handler on sampan's NATS backend (splits the flow's
   overhead from the backend's);
5. ``raw-nats``: raw nats-py, a durable JetStream pull consumer (``fetch(256)``) doing the same
   five steps per message, publishing each output with ``js.publish_async`` and acking the
   inputs of a batch once every output's PubAck is in (at-least-once, as the flow).

The inputs are published during the run, in windows of 500, by a producer in the same
process (the messages are built beforehand, like their payloads). End-to-end time runs from
the first input publish until every input is processed and its
output is durable on an output topic (group lag 0 / every input acked after its PubAck).
Output topics are counted afterwards.

Run (from the repository root; NATS JetStream on 127.0.0.1:4222)::

    .venv/bin/python bench/flows.py              # 50,000 messages per system, best of 2
    .venv/bin/python bench/flows.py --quick      # smoke run
    .venv/bin/python bench/flows.py --only sqlite
    .venv/bin/python bench/flows.py --only flow-sqlite --messages 60000 --rounds 3

Prints a table, the ratios against the targets and a README-ready markdown table, and writes
``bench/results/flows.json``. Exits 0 even when a target is missed (it is a report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import uvloop
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_rate,
    machine_info,
    markdown_table,
    ratio,
    text_table,
    utc_timestamp,
    write_results,
)

NATS_URL = "nats://127.0.0.1:4222"
CUSTOMERS = 1_000
SEED = 20241212
VIP_AMOUNT = 1_000_000
CACHE_TTL = "60s"
PUBLISH_WINDOW = 500
PUBLISH_DEPTH = 2
DRAIN_POLL_MIN = 0.002
DRAIN_POLL_MAX = 0.1
RAW_FETCH = 256
FLOW_CONCURRENCY = 1024
"""The flow's ``concurrency``: messages in flight on different keys (1,024 is the most a flow
allows). A message holds its slot until its outputs are durable, so by Little's law ~30k/s
through a batch's processing plus its commit (~10-20 ms here) needs ~300-600 slots; at 256
the event loop sat idle ~13 % of the run waiting for commits (docs/benchmarks.md). The flow
default (16) keeps ~16 outputs per fsync."""
HANDWRITTEN_CONCURRENCY = 256
"""The hand-written consumer's: it awaits each publish alone, and ran slower at 1,024
(14.0-15.6k/s against 16.0-17.3k/s at 256), so it runs at its own best."""
NATS_MAX_PENDING = 4000
GC_YOUNG_THRESHOLD = 5000
"""The nodes' ``node.gc_young_threshold``: a throughput-bound flow node's setting (Python's
700 had the collector take ~9 % of the loop here; see sampan/gc_threshold.py)."""

TARGET_SQLITE_RATE = 30_000.0
TARGET_NATS_OVERHEAD = 0.20

# -- workload -------------------------------------------------------------------------------------

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
    ("NI-013", "Nồi chiên không dầu", 1_290_000),
)
PROVINCES = ("Hà Nội", "TP. Hồ Chí Minh", "Đà Nẵng", "Hải Phòng", "Cần Thơ", "Huế", "Nha Trang")
STREETS = ("Lê Lợi", "Nguyễn Huệ", "Trần Hưng Đạo", "Hai Bà Trưng", "Lý Thường Kiệt")
CHANNELS = ("web", "app-ios", "app-android", "pos", "marketplace")
SURNAMES = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng")
GIVEN = ("An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Hương", "Khánh", "Linh", "Minh", "Thảo")

ORDER_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["order_id", "customer_id", "amount", "currency", "items", "channel", "shipping"],
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{9}-[0-9a-f]{8}$"},
        "customer_id": {"type": "string", "pattern": "^C[0-9]{6}$"},
        "amount": {"type": "integer", "minimum": 0},
        "currency": {"enum": ["VND"]},
        "channel": {"enum": list(CHANNELS)},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty", "unit_price"],
                "properties": {
                    "sku": {"type": "string"},
                    "name": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "integer", "minimum": 0},
                },
            },
        },
        "shipping": {
            "type": "object",
            "required": ["province"],
            "properties": {"province": {"type": "string"}, "fee": {"type": "integer"}},
        },
        "created_at": {"type": "string"},
    },
}

TRANSFORM = (
    "{order_id: data.order_id, customer_id: data.customer_id, amount: data.amount,"
    " currency: data.currency, channel: data.channel, province: data.shipping.province,"
    " lines: data.items[*].{sku: sku, qty: qty, unit_price: unit_price},"
    " created_at: data.created_at}"
)


@dataclass(frozen=True, slots=True)
class Workload:
    payloads: list[bytes]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.payloads)


def make_order(rng: random.Random, seq: int, customer: str) -> bytes:
    items: list[dict[str, Any]] = []
    amount = 0
    for sku, name, price in rng.sample(PRODUCTS, rng.randint(1, 4)):
        qty = rng.randint(1, 3)
        amount += qty * price
        items.append({"sku": sku, "name": name, "qty": qty, "unit_price": price})
    order = {
        "order_id": f"ORD-{seq:09d}-{rng.getrandbits(32):08x}",
        "customer_id": customer,
        "amount": amount,
        "currency": "VND",
        "items": items,
        "channel": rng.choice(CHANNELS),
        "shipping": {
            "province": rng.choice(PROVINCES),
            "address": f"{rng.randint(1, 300)} {rng.choice(STREETS)}, Phường {rng.randint(1, 20)}",
            "fee": rng.choice((0, 15_000, 30_000)),
        },
        "created_at": f"2024-12-12T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
        f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}+07:00",
        "payment": {
            "method": rng.choice(("cod", "momo", "zalopay", "vnpay", "card")),
            "status": rng.choice(("pending", "paid")),
            "transaction_id": f"TX{rng.getrandbits(48):012x}",
        },
        "promotion": rng.choice((None, "FREESHIP", "GIAM10", "1212SALE")),
        "source": {
            "app_version": f"5.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            "device": rng.choice(("iPhone 15", "Galaxy A55", "Redmi Note 13", "web", "POS-01")),
            "ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        },
        "note": rng.choice(("", "Giao giờ hành chính", "Gọi trước khi giao", "Để ở bảo vệ")),
    }
    return orjson.dumps(order)


def make_workload(messages: int, customers: int = CUSTOMERS, seed: int = SEED) -> Workload:
    rng = random.Random(seed)
    pool = [f"C{n:06d}" for n in range(customers)]
    keys = [rng.choice(pool) for _ in range(messages)]
    return Workload([make_order(rng, i, keys[i]) for i in range(messages)], keys)


def customer_profile(customer_id: str) -> bytes:
    rng = random.Random(customer_id)
    return orjson.dumps(
        {
            "id": customer_id,
            "name": f"{rng.choice(SURNAMES)} {rng.choice(GIVEN)}",
            "segment": rng.choice(("gold", "silver", "bronze")),
            "province": rng.choice(PROVINCES),
            "since": 2015 + rng.randint(0, 9),
        }
    )


# -- the enrich service (a child process) ---------------------------------------------------------


def _serve_customers(conn: Connection) -> None:
    """Child process: sampan's HttpServer answering ``GET /customers/<id>``, until SIGTERM."""
    from sampan.gateway.config import LimitsConfig
    from sampan.http.headers import Headers
    from sampan.http.request import Request
    from sampan.http.response import Response
    from sampan.http.server import HttpServer

    async def handler(request: Request) -> Response:
        prefix = "/customers/"
        if not request.path.startswith(prefix):
            return Response(404, Headers([(b"content-type", b"text/plain")]), b"not found")
        body = customer_profile(request.path[len(prefix) :])
        return Response(200, Headers([(b"content-type", b"application/json")]), body)

    async def main() -> None:
        # The node may hold one connection per message in flight (`concurrency`): the default
        # per-client cap (256) would refuse some and get the only endpoint ejected.
        server = HttpServer(handler, LimitsConfig(max_connections_per_client=4096))
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        conn.send(server.port)
        await stop.wait()
        await server.drain(1.0)

    uvloop.run(main())


class CustomerService:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_customers, args=(child,), daemon=True)
        self.process.start()
        if not parent.poll(30):
            self.stop()
            raise RuntimeError("the customer service did not start")
        self.port = int(parent.recv())

    def stop(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


# -- the config -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Names:
    """Topic names of one system's run (unique per run, so NATS streams never collide)."""

    prefix: str

    @property
    def input(self) -> str:
        return f"{self.prefix}.orders.in"

    def output(self, tier: str) -> str:
        return f"{self.prefix}.orders.{tier}"

    @property
    def outputs(self) -> tuple[str, str]:
        return self.output("vip"), self.output("standard")


def node_config(
    root: Path,
    bus_url: str,
    names: Names,
    service_port: int,
    with_flow: bool,
    concurrency: int | None,
    gc_young_threshold: int,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    schema = root / "order.schema.json"
    schema.write_bytes(orjson.dumps(ORDER_SCHEMA))
    doc: dict[str, Any] = {
        "node": {
            "name": "bench",
            "data_dir": str(root / "data"),
            "admin": {"enabled": False},
            "gc_young_threshold": gc_young_threshold,
        },
        "bus": {"url": bus_url, "durability": "full"},
        "services": [
            {"name": "customers", "endpoints": [{"url": f"http://127.0.0.1:{service_port}"}]}
        ],
    }
    if with_flow:
        doc["flows"] = [
            {
                "name": "orders",
                "from": {"topic": names.input},
                **({"concurrency": concurrency} if concurrency is not None else {}),
                "steps": [
                    {"validate": {"schema": schema.name}},
                    {"transform": {"expression": TRANSFORM}},
                    {
                        "choice": [
                            {
                                "when": f"data.amount > `{VIP_AMOUNT}`",
                                "steps": [{"set_headers": {"x-tier": "'vip'"}}],
                            },
                            {"otherwise": [{"set_headers": {"x-tier": "'standard'"}}]},
                        ]
                    },
                    {
                        "enrich": {
                            "service": "customers",
                            "path": "/customers/{data.customer_id}",
                            "into": "customer",
                            "cache": {"ttl": CACHE_TTL},
                        }
                    },
                    {"to": {"topic": f'{names.prefix}.orders.{{headers."x-tier"}}'}},
                ],
            }
        ]
    path = root / "sampan.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    return path


# -- results --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    system: str
    messages: int
    seconds: float
    outputs: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass(slots=True)
class SystemResult:
    id: str
    label: str
    method: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def best(self) -> Run | None:
        good = [r for r in self.runs if r.outputs == r.messages]
        return max(good, key=lambda r: r.rate) if good else None

    @property
    def rate(self) -> float | None:
        best = self.best
        return best.rate if best is not None else None


# -- publishing the inputs ------------------------------------------------------------------------


async def windows(total: int, start_window: Callable[[int, int], Awaitable[Any]]) -> None:
    in_flight: list[asyncio.Future[Any]] = []
    for lo in range(0, total, PUBLISH_WINDOW):
        in_flight.append(asyncio.ensure_future(start_window(lo, min(total, lo + PUBLISH_WINDOW))))
        if len(in_flight) >= PUBLISH_DEPTH:
            await in_flight.pop(0)
    for fut in in_flight:
        await fut


def input_messages(wl: Workload) -> list[Any]:
    """The producer's messages, built before the clock starts, as the payloads are: what is
    timed is publishing them (the bus's work), not packing bytes into objects."""
    from sampan.bus.base import OutgoingMessage

    pairs = zip(wl.payloads, wl.keys, strict=True)
    return [OutgoingMessage(payload, key) for payload, key in pairs]


async def publish_inputs(bus: Any, topic: str, messages: list[Any]) -> None:
    async def window(lo: int, hi: int) -> None:
        await bus.publish_batch(topic, messages[lo:hi])

    await windows(len(messages), window)


async def wait_drained(bus: Any, topic: str, group: str, publisher: asyncio.Future[None]) -> None:
    """Until the inputs are all published and the group has nothing left (acked = output
    durable, for the flow and the hand-written handler alike).

    Each look at the lag is work for the system under test (on the embedded bus, a
    transaction of four queries on its database thread, as many SQLite steps as a commit of
    the flow's outputs), so the looks are spaced by the lag: a quarter of the time the rest
    needs at the rate seen so far, between ``DRAIN_POLL_MIN`` and ``DRAIN_POLL_MAX`` seconds.
    The end is still seen within a few ms."""
    await publisher
    seen: tuple[int, float] | None = None
    while True:
        lag = await bus.lag(topic, group)
        now = time.perf_counter()
        if lag == 0:
            return
        wait = DRAIN_POLL_MIN
        if seen is not None and seen[0] > lag:
            wait = lag / ((seen[0] - lag) / (now - seen[1])) / 4
        seen = (lag, now)
        await asyncio.sleep(min(DRAIN_POLL_MAX, max(DRAIN_POLL_MIN, wait)))


async def count_outputs(bus: Any, names: Names) -> int:
    wanted = set(names.outputs)
    return sum(t.messages for t in await bus.topics() if t.name in wanted)


# -- the hand-written handler ---------------------------------------------------------------------


class Handwritten:
    """The same five steps as the flow, in plain Python, for ``bus.subscribe``."""

    def __init__(self, bus: Any, mesh: Any, names: Names) -> None:
        from sampan.flows.service_caller import MeshServiceCaller

        self.bus = bus
        self.caller = MeshServiceCaller(mesh)
        self.validate = fastjsonschema.compile(ORDER_SCHEMA)
        self.outputs = {"vip": names.output("vip"), "standard": names.output("standard")}
        self.cache: dict[str, tuple[float, Any]] = {}
        self.lookups = 0

    async def customer(self, customer_id: str) -> Any:
        now = time.monotonic()
        hit = self.cache.get(customer_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        self.lookups += 1
        answer = await self.caller.call("customers", "GET", f"/customers/{customer_id}")
        if answer.status != 200:
            raise RuntimeError(f"customers answered {answer.status}")
        value = orjson.loads(answer.body)
        self.cache[customer_id] = (now + 60.0, value)
        return value

    async def handle(self, delivery: Any) -> None:
        order = orjson.loads(delivery.value)
        self.validate(order)
        out = {
            "order_id": order["order_id"],
            "customer_id": order["customer_id"],
            "amount": order["amount"],
            "currency": order["currency"],
            "channel": order["channel"],
            "province": order["shipping"]["province"],
            "lines": [
                {"sku": i["sku"], "qty": i["qty"], "unit_price": i["unit_price"]}
                for i in order["items"]
            ],
            "created_at": order.get("created_at"),
        }
        tier = "vip" if out["amount"] > VIP_AMOUNT else "standard"
        out["customer"] = await self.customer(out["customer_id"])
        await self.bus.publish(
            self.outputs[tier],
            orjson.dumps(out),
            key=delivery.key,
            headers={**delivery.headers, "x-tier": tier},
        )


# -- sampan systems (a node) ----------------------------------------------------------------------


async def run_node(
    system: str,
    bus_url: str,
    names: Names,
    wl: Workload,
    service_port: int,
    root: Path,
    with_flow: bool,
    concurrency: int,
    limit: float,
) -> Run:
    from sampan.bus.consumer import ConsumerOptions
    from sampan.config import load_config
    from sampan.node import Node

    young = gc.get_threshold()[0]  # the run's (main sets it from --gc-young-threshold)
    path = node_config(root, bus_url, names, service_port, with_flow, concurrency, young)
    config = load_config(path)
    node = Node(config, config_path=path)
    await node.start()
    bus = node.bus
    consumer = None
    handwritten = None
    try:
        for topic in (names.input, *names.outputs):
            await bus.create_topic(topic)
        group = "orders"
        if not with_flow:
            assert node.mesh is not None
            handwritten = Handwritten(bus, node.mesh, names)
            consumer = await bus.subscribe(
                names.input,
                group,
                handwritten.handle,
                ConsumerOptions(concurrency=concurrency, batch=config.bus.fetch_batch),
            )
        messages = input_messages(wl)
        # As `sampan up` does once the node has started (Node.run): what start-up built stays
        # out of every later collection. Undone when the run ends (the node goes away).
        gc.collect()
        gc.freeze()
        t0 = time.perf_counter()
        publisher = asyncio.ensure_future(publish_inputs(bus, names.input, messages))
        try:
            async with asyncio.timeout(limit):
                await wait_drained(bus, names.input, group, publisher)
        finally:
            if not publisher.done():
                publisher.cancel()
        seconds = time.perf_counter() - t0
        if consumer is not None:
            await consumer.stop()
            consumer = None
        outputs = await count_outputs(bus, names)
        extra: dict[str, Any] = {}
        if with_flow and node.flows is not None:
            enrich = node.flows.flows[0].pipeline.steps[3].step
            cache = getattr(enrich, "_cache", None)
            if cache is not None:
                extra["cache_hits"] = cache.hits
                extra["cache_misses"] = cache.misses
        if handwritten is not None:
            extra["service_lookups"] = handwritten.lookups
        dlq = await bus.dlq_list(names.input, limit=5)
        if dlq:
            extra["dead_letters"] = [d.error for d in dlq]
        return Run(system, len(wl), seconds, outputs, extra)
    finally:
        gc.unfreeze()
        if consumer is not None:
            await consumer.stop()
        try:
            if bus_url.startswith("nats"):
                await node.stop()
                await delete_nats_topics(names)
            else:
                await node.stop()
        except Exception as exc:  # a report: note, go on
            print(f"  (cleanup of {system}: {type(exc).__name__}: {exc})")


async def delete_nats_topics(names: Names) -> None:
    from sampan.bus.factory import open_bus

    bus = open_bus(NATS_URL)
    await bus.start()
    try:
        for topic in (names.input, *names.outputs):
            for name in (topic, f"{topic}.dlq"):
                with contextlib.suppress(Exception):
                    await bus.delete_topic(name)
    finally:
        await bus.close()


# -- raw nats-py ----------------------------------------------------------------------------------


async def run_raw_nats(
    names: Names, wl: Workload, service_port: int, concurrency: int, limit: float
) -> Run:
    """A JetStream pull consumer doing the five steps; outputs with ``publish_async``, inputs
    acked once their outputs' PubAcks are in."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

    from sampan.mesh.config import MeshConfig, ServiceConfig, StaticEndpoint
    from sampan.mesh.mesh import Mesh
    from sampan.observe.metrics import Metrics

    nc = await nats.connect(NATS_URL, max_reconnect_attempts=0)
    js = nc.jetstream(publish_async_max_pending=NATS_MAX_PENDING)
    jsm = nc.jsm()
    token = names.prefix.replace(".", "_").upper()
    streams = {"in": f"{token}_IN", "out": f"{token}_OUT"}
    subject_in = f"{names.prefix}.raw.in"
    subject_out = f"{names.prefix}.raw.out"
    for name, subject in ((streams["in"], subject_in), (streams["out"], subject_out)):
        await jsm.add_stream(
            StreamConfig(name=name, subjects=[f"{subject}.>"], storage=StorageType.FILE)
        )
    mesh = Mesh(
        MeshConfig(),
        [
            ServiceConfig(
                name="customers",
                endpoints=[StaticEndpoint(url=f"http://127.0.0.1:{service_port}")],
            )
        ],
        Metrics(),
    )
    await mesh.start()
    work = Handwritten(None, mesh, names)
    n = len(wl)
    done = {"handled": 0}
    try:
        sub = await js.pull_subscribe(
            f"{subject_in}.>",
            durable="orders",
            stream=streams["in"],
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=10_000,
            ),
        )

        async def step(msg: Any) -> Any:
            order = orjson.loads(msg.data)
            work.validate(order)
            out = {
                "order_id": order["order_id"],
                "customer_id": order["customer_id"],
                "amount": order["amount"],
                "currency": order["currency"],
                "channel": order["channel"],
                "province": order["shipping"]["province"],
                "lines": [
                    {"sku": i["sku"], "qty": i["qty"], "unit_price": i["unit_price"]}
                    for i in order["items"]
                ],
                "created_at": order.get("created_at"),
            }
            tier = "vip" if out["amount"] > VIP_AMOUNT else "standard"
            out["customer"] = await work.customer(out["customer_id"])
            headers = dict(msg.headers or {})
            headers["x-tier"] = tier
            return await js.publish_async(
                f"{subject_out}.{tier}.{out['customer_id']}", orjson.dumps(out), headers=headers
            )

        async def consume() -> None:
            while done["handled"] < n:
                try:
                    msgs = await sub.fetch(RAW_FETCH, timeout=0.05)
                except TimeoutError:
                    continue
                acks = [await step(m) for m in msgs]
                await asyncio.gather(*acks)
                for m in msgs:
                    await m.ack()
                done["handled"] += len(msgs)

        async def publish() -> None:
            payloads, keys = wl.payloads, wl.keys
            for i in range(n):
                await js.publish_async(f"{subject_in}.{keys[i]}", payloads[i])
            await js.publish_async_completed()

        consumer = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        gc.collect()
        t0 = time.perf_counter()
        publisher = asyncio.ensure_future(publish())
        try:
            async with asyncio.timeout(limit):
                await consumer
                await nc.flush()
                seconds = time.perf_counter() - t0
                await publisher
        finally:
            for task in (consumer, publisher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        info = await jsm.stream_info(streams["out"])
        return Run("raw-nats", n, seconds, int(info.state.messages), {"lookups": work.lookups})
    finally:
        await mesh.stop()
        for name in streams.values():
            with contextlib.suppress(Exception):
                await jsm.delete_stream(name)
        await nc.close()


# -- running --------------------------------------------------------------------------------------

LABELS = {
    "flow-sqlite": "flow, embedded bus (SQLite, durability=full)",
    "handwritten-sqlite": "hand-written bus.subscribe handler, embedded bus",
    "flow-nats": "flow, sampan NATS JetStream backend",
    "handwritten-nats": "hand-written bus.subscribe handler, sampan NATS backend",
    "raw-nats": "raw nats-py (pull consumer, publish_async + PubAcks)",
}


def methods(concurrency: dict[str, int], fetch_batch: int) -> dict[str, str]:
    flow = f"Consumer(concurrency={concurrency['flow']}, batch={fetch_batch})"
    hand = f"Consumer(concurrency={concurrency['handwritten']}, batch={fetch_batch})"
    return {
        "flow-sqlite": f"Node + flow; {flow}",
        "handwritten-sqlite": f"Node; bus.subscribe, {hand}, await bus.publish per message",
        "flow-nats": f"Node + flow; {flow}",
        "handwritten-nats": f"Node; bus.subscribe, {hand}, await bus.publish per message",
        "raw-nats": f"pull fetch({RAW_FETCH}); publish_async per output; gather PubAcks; ack",
    }


async def run_system(
    system: str, wl: Workload, port: int, tmp: Path, run_no: int, concurrency: int, limit: float
) -> Run:
    names = Names(f"fb{os.getpid()}r{run_no}{system.split('-', maxsplit=1)[0][0]}")
    root = tmp / f"{system}-{run_no}"
    if system == "raw-nats":
        return await run_raw_nats(names, wl, port, concurrency, limit)
    sqlite = system.endswith("sqlite")
    bus_url = f"sqlite:///{root / 'bus.db'}" if sqlite else NATS_URL
    return await run_node(
        system, bus_url, names, wl, port, root, system.startswith("flow"), concurrency, limit
    )


def evaluate(results: dict[str, SystemResult]) -> dict[str, Any]:
    def rate(name: str) -> float | None:
        found = results.get(name)
        return found.rate if found is not None else None

    flow_sqlite = rate("flow-sqlite")
    flow_nats, raw = rate("flow-nats"), rate("raw-nats")
    nats_overhead = (raw / flow_nats - 1.0) if flow_nats and raw else None
    hand_sqlite, hand_nats = rate("handwritten-sqlite"), rate("handwritten-nats")
    return {
        "flow_sqlite_msg_per_s": flow_sqlite,
        "flow_sqlite_target": TARGET_SQLITE_RATE,
        "flow_sqlite_pass": None if flow_sqlite is None else flow_sqlite >= TARGET_SQLITE_RATE,
        "flow_nats_overhead_vs_raw": nats_overhead,
        "flow_nats_overhead_target": TARGET_NATS_OVERHEAD,
        "flow_nats_pass": None if nats_overhead is None else nats_overhead <= TARGET_NATS_OVERHEAD,
        "info": {
            "flow_sqlite_over_handwritten_sqlite": ratio(flow_sqlite, hand_sqlite),
            "flow_nats_over_handwritten_nats": ratio(flow_nats, hand_nats),
            "handwritten_nats_over_raw_nats": ratio(hand_nats, raw),
        },
    }


def verdict(ok: bool | None) -> str:
    return "N/A" if ok is None else ("PASS" if ok else "MISS")


def report(results: dict[str, SystemResult], verdicts: dict[str, Any], args: Any) -> None:
    headers = ["system", "msg/s (best)", "runs", "vs hand-written", "method"]
    hand = {
        "flow-sqlite": results.get("handwritten-sqlite"),
        "flow-nats": results.get("handwritten-nats"),
    }
    rows = []
    for r in results.values():
        reference = hand.get(r.id)
        versus = ratio(r.rate, reference.rate if reference else None)
        rows.append(
            [
                LABELS[r.id],
                fmt_rate(r.rate),
                ", ".join(f"{run.rate:,.0f}" for run in r.runs) or (r.error or "—"),
                f"{versus:.2f}x" if versus else "",
                r.method,
            ]
        )
    print(
        f"\n== flows: {args.messages:,} orders (~{args.mean_bytes:.0f} B JSON), {CUSTOMERS:,}"
        f" customers (keys); validate -> transform -> choice -> enrich (cache) -> to topic =="
    )
    print(text_table(headers, rows))
    problems = [f"  ! {r.label}: {r.error}" for r in results.values() if r.error] + [
        f"  ! {r.label}: run {i}: {run.outputs} outputs for {run.messages} inputs {run.extra}"
        for r in results.values()
        for i, run in enumerate(r.runs)
        if run.outputs != run.messages
    ]
    if problems:
        print("\nproblems:\n" + "\n".join(problems))
    print("\ntargets:")
    rate = verdicts["flow_sqlite_msg_per_s"]
    print(
        f"  flow on the embedded bus = {fmt_rate(rate)}"
        f" (target >= {TARGET_SQLITE_RATE:,.0f}/s: {verdict(verdicts['flow_sqlite_pass'])})"
    )
    overhead = verdicts["flow_nats_overhead_vs_raw"]
    shown = "n/a" if overhead is None else f"{overhead * 100:+.1f} %"
    print(
        f"  flow on NATS vs raw nats-py: overhead (raw rate / flow rate - 1) = {shown}"
        f" (target <= {TARGET_NATS_OVERHEAD * 100:.0f} %: {verdict(verdicts['flow_nats_pass'])})"
    )
    for name, value in verdicts["info"].items():
        if value is not None:
            print(f"  (info) {name} = {value:.2f}x")
    print("\nREADME table (markdown):\n")
    print(markdown_table(headers[:4], [row[:4] for row in rows]))
    print(f"\nCommand: {command_line()}")


def command_line() -> str:
    return " ".join([".venv/bin/python bench/flows.py", *sys.argv[1:]])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000, help="input messages per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per system (best counts)")
    parser.add_argument(
        "--only",
        default="sqlite,nats",
        help="comma list of: sqlite (flow + hand-written), nats (flow + hand-written + raw),"
        " or single systems (flow-sqlite, handwritten-sqlite, flow-nats, ...)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=FLOW_CONCURRENCY,
        help="the flow's `concurrency` (default: %(default)s)",
    )
    parser.add_argument(
        "--handwritten-concurrency",
        type=int,
        default=HANDWRITTEN_CONCURRENCY,
        help="the hand-written consumers' concurrency (default: %(default)s)",
    )
    parser.add_argument(
        "--gc-young-threshold",
        type=int,
        default=GC_YOUNG_THRESHOLD,
        help="the nodes' node.gc_young_threshold, also set for the raw nats-py reference"
        " (default: %(default)s; 700 is Python's own)",
    )
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 1 round")
    parser.add_argument("--phase-timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--tmp", default="/tmp", help="where the SQLite files go (not /dev/shm)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 10_000)
        args.rounds = 1
    if args.messages <= 0 or args.rounds <= 0:
        parser.error("--messages and --rounds must be positive")
    if args.gc_young_threshold < 100:
        parser.error("--gc-young-threshold must be at least 100")
    return args


async def main(args: argparse.Namespace) -> int:
    from sampan.flows.config import FlowConfig
    from sampan.gc_threshold import GcYoungThreshold

    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    groups = {
        "sqlite": ["flow-sqlite", "handwritten-sqlite"],
        "nats": ["flow-nats", "handwritten-nats", "raw-nats"],
    }
    if wanted - groups.keys() - set(LABELS):
        print(f"unknown system(s) in --only: {args.only}", file=sys.stderr)
        return 2
    systems = [
        system
        for system in LABELS
        if system in wanted or any(system in groups[g] for g in wanted & groups.keys())
    ]
    started = time.perf_counter()
    print(f"generating {args.messages:,} orders ...", flush=True)
    wl = make_workload(args.messages)
    args.mean_bytes = sum(map(len, wl.payloads)) / len(wl)
    gc.collect()
    gc.freeze()
    # The nodes set node.gc_young_threshold (see node_config); set for the whole run too, so
    # that the raw nats-py reference (no node) collects the same way.
    GcYoungThreshold(args.gc_young_threshold).apply()
    concurrency = {
        "flow": args.concurrency or int(FlowConfig.model_fields["concurrency"].default),
        "handwritten": args.handwritten_concurrency,
    }
    fetch_batch = 256
    method = methods(concurrency, fetch_batch)
    results = {s: SystemResult(s, LABELS[s], method[s]) for s in systems}
    service = CustomerService()
    tmp = Path(tempfile.mkdtemp(prefix="sampan-bench-flows-", dir=args.tmp))
    try:
        for round_no in range(args.rounds):
            for system in systems:  # interleaved: load changes hit every system alike
                result = results[system]
                print(f"  round {round_no + 1}: {system:<20}", end="", flush=True)
                try:
                    run = await run_system(
                        system,
                        wl,
                        service.port,
                        tmp,
                        round_no,
                        concurrency["flow" if system.startswith("flow") else "handwritten"],
                        args.phase_timeout,
                    )
                except Exception as exc:  # a report: note the failure, go on
                    result.error = f"{type(exc).__name__}: {exc}"
                    print(f" FAILED ({result.error})")
                    continue
                result.runs.append(run)
                note = "" if run.outputs == run.messages else f" ({run.outputs} outputs!)"
                print(f" {fmt_rate(run.rate)}{note}  {run.extra}", flush=True)
    finally:
        service.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    verdicts = evaluate(results)
    report(results, verdicts, args)
    path = write_results(
        "flows",
        {
            "benchmark": "flows",
            "timestamp": utc_timestamp(),
            "command": command_line(),
            "duration_s": round(time.perf_counter() - started, 1),
            "parameters": {
                "messages": args.messages,
                "rounds": args.rounds,
                "mean_payload_bytes": round(args.mean_bytes, 1),
                "customers": CUSTOMERS,
                "cache_ttl": CACHE_TTL,
                "flow_concurrency": concurrency["flow"],
                "handwritten_concurrency": concurrency["handwritten"],
                "fetch_batch": fetch_batch,
                "publish_window": PUBLISH_WINDOW,
                "publish_depth": PUBLISH_DEPTH,
                "event_loop": "uvloop",
                "gc_threshold": list(gc.get_threshold()),
                "quick": args.quick,
            },
            "machine": machine_info(("uvloop", "orjson", "nats-py", "jmespath", "fastjsonschema")),
            "targets": verdicts,
            "systems": {
                r.id: {
                    "label": r.label,
                    "method": r.method,
                    "error": r.error,
                    "best_msg_per_s": r.rate,
                    "runs": [
                        {
                            "msg_per_s": run.rate,
                            "seconds": run.seconds,
                            "messages": run.messages,
                            "outputs": run.outputs,
                            **run.extra,
                        }
                        for run in r.runs
                    ],
                }
                for r in results.values()
            },
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
