"""Vietnamese retail orders for the demo: a producer, a processing handler and a reporter.

The handler behaves like a real integration would: most orders go through, a few hit a
transient payment-gateway timeout (retried and then succeed), and a few are invalid
(quantity 0) and end up in ``orders.created.dlq`` with the reason.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from typing import Any

import orjson
from faker import Faker

from sampan.bus.base import Delivery
from sampan.http.body import BytesBody
from sampan.http.client import ConnectionPool, Endpoint
from sampan.http.headers import Headers
from sampan.node import TaskContext

PRODUCTS = [
    ("PHO-BO", "Phở bò tái", 55_000),
    ("CF-SUA", "Cà phê sữa đá", 29_000),
    ("BANH-MI", "Bánh mì thịt nướng", 25_000),
    ("NUOC-MAM", "Nước mắm Phú Quốc 500ml", 89_000),
    ("GAO-ST25", "Gạo ST25 5kg", 210_000),
    ("AO-DAI", "Áo dài lụa", 1_450_000),
    ("NON-LA", "Nón lá Huế", 120_000),
    ("TRA-SEN", "Trà sen Tây Hồ", 320_000),
]
PAYMENTS = ["momo", "zalopay", "vnpay", "cod", "bank-transfer"]
CITIES = ["Hà Nội", "TP. Hồ Chí Minh", "Đà Nẵng", "Hải Phòng", "Cần Thơ", "Huế", "Nha Trang"]


class PaymentGatewayTimeout(Exception):
    """Transient: the retry succeeds."""


class InvalidOrder(Exception):
    """Permanent: retries cannot fix it, so it is dead-lettered."""


def make_order(rng: random.Random, number: int, customers: list[dict[str, str]]) -> dict[str, Any]:
    customer = rng.choice(customers)
    items = []
    for sku, name, price in rng.sample(PRODUCTS, rng.randint(1, 3)):
        items.append(
            {"sku": sku, "name": name, "quantity": rng.randint(1, 4), "unit_price_vnd": price}
        )
    if rng.random() < 0.01:
        items[0]["quantity"] = 0  # a broken order from a faulty POS terminal
    return {
        "order_id": f"DH{number:08d}",
        "customer": customer,
        "items": items,
        "payment": rng.choice(PAYMENTS),
        "created_at": time.time(),
    }


async def pos_terminals(ctx: TaskContext) -> None:
    """POST orders to the gateway at a steady rate, as point-of-sale terminals would.

    Orders are keyed by customer on the bus, so each customer's orders stay in order."""
    rate = float(ctx.options.get("rate_per_second", 200))
    api_key = str(ctx.options["api_key"]).encode()
    rng = random.Random(ctx.options.get("seed"))
    fake = Faker("vi_VN")
    fake.seed_instance(ctx.options.get("seed"))
    customers = [
        {
            "id": f"KH{i:05d}",
            "name": fake.name(),
            "phone": fake.phone_number(),
            "city": rng.choice(CITIES),
        }
        for i in range(500)
    ]
    accepted = ctx.metrics.counter("demo_orders_published", "Orders the gateway accepted (202).")
    refused = ctx.metrics.counter("demo_orders_refused", "Orders the gateway refused.")
    assert ctx.gateway_url is not None, "the demo needs the gateway"
    endpoint = Endpoint.parse(ctx.gateway_url)
    pool = ConnectionPool()

    async def post(order: dict[str, Any]) -> None:
        headers = Headers(
            [
                (b"host", b"demo"),
                (b"content-type", b"application/json"),
                (b"apikey", api_key),
                (b"idempotency-key", order["order_id"].encode()),
            ]
        )
        response = await pool.request(
            endpoint,
            "POST",
            b"/orders",
            headers,
            BytesBody(orjson.dumps(order)),
            connect_timeout=2,
            read_timeout=10,
            write_timeout=10,
        )
        await response.body.read()
        (accepted if response.status == 202 else refused).inc()

    number = 0
    started = time.monotonic()
    try:
        while not ctx.stopping.is_set():
            due = int((time.monotonic() - started) * rate) - number
            if due > 0:
                batch = [make_order(rng, number + i, customers) for i in range(due)]
                results = await asyncio.gather(*(post(o) for o in batch), return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        refused.inc()
                number += due
            await asyncio.sleep(0.05)
    finally:
        await pool.close()


async def process_order(delivery: Delivery, ctx: TaskContext) -> None:
    """Price the order with 10% VAT and hand it on to ``orders.processed``."""
    order = orjson.loads(delivery.value)
    if any(item["quantity"] <= 0 for item in order["items"]):
        raise InvalidOrder(f"{order['order_id']}: quantity must be positive")
    if delivery.attempt == 1 and zlib.crc32(order["order_id"].encode()) % 50 == 0:
        raise PaymentGatewayTimeout(f"{order['payment']} did not answer within 3s")
    subtotal = sum(i["quantity"] * i["unit_price_vnd"] for i in order["items"])
    processed = {
        "order_id": order["order_id"],
        "customer_id": order["customer"]["id"],
        "subtotal_vnd": subtotal,
        "vat_vnd": subtotal // 10,
        "total_vnd": subtotal + subtotal // 10,
        "payment": order["payment"],
    }
    await ctx.bus.publish("orders.processed", orjson.dumps(processed), key=processed["customer_id"])


def counter_value(ctx: TaskContext, name: str, **labels: str) -> int:
    return int(ctx.metrics.counter(name, "", **labels).value)


async def report(ctx: TaskContext) -> None:
    """Print what flowed every few seconds, and once more when the node stops."""
    every = float(ctx.options.get("every_seconds", 2))
    started = time.monotonic()
    labels = {"topic": "orders.created", "group": "fulfilment"}

    async def line() -> None:
        groups = {g.group: g for g in await ctx.bus.groups("orders.created")}
        lag = groups["fulfilment"].lag if "fulfilment" in groups else 0
        quartet = ctx.metrics.target("group", "orders.created/fulfilment").snapshot()
        p99 = f"{quartet.p99 * 1000:.1f} ms" if quartet.p99 is not None else "-"
        http = ctx.metrics.target("route", "orders-in").snapshot()
        http_p99 = f"{http.p99 * 1000:.1f} ms" if http.p99 is not None else "-"
        dead = await ctx.bus.dlq_list("orders.created", limit=10_000)
        print(
            f"[{time.monotonic() - started:6.1f}s]"
            f" POST /orders 202: {counter_value(ctx, 'demo_orders_published')}"
            f" (refused {counter_value(ctx, 'demo_orders_refused')}, p99 {http_p99})"
            f" · processed {counter_value(ctx, 'sampan_bus_acked', **labels)}"
            f" · retried {counter_value(ctx, 'sampan_bus_retried', **labels)}"
            f" · dead-lettered {len(dead)} · lag {lag} · handler p99 {p99}",
            flush=True,
        )

    print(
        "demo: POS terminals → POST /orders (gateway) → orders.created → group 'fulfilment'"
        " → orders.processed",
        flush=True,
    )
    try:
        while True:
            await asyncio.sleep(every)
            await line()
    except asyncio.CancelledError:
        await line()
        print(
            f"demo: metrics at {ctx.admin_url or '(admin off)'}/metrics and /api/metrics; try\n"
            f"  curl -X POST {ctx.gateway_url}/orders -H 'apikey: demo-pos-key-change-me'"
            ' -H \'content-type: application/json\' -d \'{"customer": {"id": "KH1"}}\'\n'
            "  sampan bus topics -c examples/demo/sampan.yaml\n"
            "  sampan bus dlq list orders.created -c examples/demo/sampan.yaml",
            flush=True,
        )
        raise
