"""The demo's moving parts around the flow: POS terminals, a customer service and a reporter.

The integration itself is declarative (the ``order-routing`` flow in ``sampan.yaml``); this
module only plays the systems around it, the way they would behave for real:

* point-of-sale terminals POST orders to the gateway; about 1 % come from a faulty terminal
  (a quantity of 0, refused by the JSON Schema) and about 0.5 % name a customer the CRM does
  not know (refused by the enricher) — both end in ``orders.created.dlq`` with the reason;
* the CRM's customer service answers ``GET /customers/{id}`` with a Vietnamese profile
  (Faker ``vi_VN``), so the flow has something real to call through the mesh;
* the reporter prints what went where every few seconds, dead letters included.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import Counter
from typing import Any

import orjson
from faker import Faker

from sampan.gateway.config import LimitsConfig
from sampan.http.body import BytesBody
from sampan.http.client import ConnectionPool, Endpoint
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, json_response, problem
from sampan.http.server import HttpServer
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
STORES = ["HN-HOANKIEM-01", "HN-CAUGIAY-02", "HCM-Q1-01", "HCM-Q7-03", "DN-HAICHAU-01"]
TIERS = ["dong", "bac", "vang", "kim-cuong"]  # loyalty tiers: đồng, bạc, vàng, kim cương
CUSTOMERS = 500
TOPICS = ["orders.created", "orders.fulfilment", "payments.review", "notifications.sent"]
FLOW = "order-routing"
_STEP = re.compile(r"steps\[\d+\]\.(\w+)")


def make_customers(seed: int | None, count: int = CUSTOMERS) -> list[dict[str, Any]]:
    """The CRM's customers, the same for every run with the same seed (ids KH00000...)."""
    rng = random.Random(seed)
    fake = Faker("vi_VN")
    fake.seed_instance(seed)
    return [
        {
            "id": f"KH{i:05d}",
            "name": fake.name(),
            "phone": fake.phone_number(),
            "email": fake.free_email(),
            "city": rng.choice(CITIES),
            "tier": rng.choices(TIERS, weights=[50, 30, 15, 5])[0],
            # Consent to be contacted (Decree 13/2023/ND-CP): most, not all, said yes.
            "zalo_opt_in": rng.random() < 0.8,
        }
        for i in range(count)
    ]


def make_order(rng: random.Random, number: int) -> dict[str, Any]:
    """One order as a POS terminal sends it: it already knows prices and totals."""
    items: list[dict[str, Any]] = [
        {"sku": sku, "name": name, "quantity": rng.randint(1, 4), "unit_price_vnd": price}
        for sku, name, price in rng.sample(PRODUCTS, rng.randint(1, 3))
    ]
    customer = f"KH{rng.randrange(CUSTOMERS):05d}"
    fault = rng.random()
    if fault < 0.01:
        items[0]["quantity"] = 0  # a faulty terminal: the schema refuses it
    elif fault < 0.015:
        customer = f"KH{rng.randrange(90_000, 100_000):05d}"  # a card the CRM never issued
    subtotal = sum(i["quantity"] * i["unit_price_vnd"] for i in items)
    return {
        "order_id": f"DH{number:08d}",
        "store": rng.choice(STORES),
        "customer": {"id": customer},
        "items": items,
        "payment": rng.choice(PAYMENTS),
        "subtotal_vnd": subtotal,
        "vat_vnd": subtotal // 10,
        "total_vnd": subtotal + subtotal // 10,
        "created_at": time.time(),
    }


async def pos_terminals(ctx: TaskContext) -> None:
    """POST orders to the gateway at a steady rate, as point-of-sale terminals would.

    Orders are keyed by customer on the bus, so each customer's orders stay in order."""
    rate = float(ctx.options.get("rate_per_second", 200))
    api_key = str(ctx.options["api_key"]).encode()
    rng = random.Random(ctx.options.get("seed"))
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
                batch = [make_order(rng, number + i) for i in range(due)]
                results = await asyncio.gather(*(post(o) for o in batch), return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        refused.inc()
                number += due
            await asyncio.sleep(0.05)
    finally:
        await pool.close()


async def customer_service(ctx: TaskContext) -> None:
    """The CRM's customer service on 127.0.0.1: ``GET /customers/{id}`` answers the profile
    or 404 problem+json. It stands in for a system the organisation already has; the flow
    reaches it through the mesh (``services: customers``), never directly."""
    directory = {c["id"]: c for c in make_customers(ctx.options.get("seed"))}
    served = ctx.metrics.counter("demo_customer_lookups", "Customer service requests answered.")

    async def handle(request: Request) -> Response:
        served.inc()
        if request.method != "GET" or not request.path.startswith("/customers/"):
            return problem(404, "Not Found", f"No resource at {request.path}.")
        customer_id = request.path.removeprefix("/customers/")
        profile = directory.get(customer_id)
        if profile is None:
            return problem(404, "Not Found", f"No customer {customer_id}.")
        return json_response(200, profile)

    server = HttpServer(handle, LimitsConfig(), host="127.0.0.1", port=int(ctx.options["port"]))
    await server.start()
    ctx.log.info("customer service on http://127.0.0.1:%d/customers/KH00001", server.port)
    try:
        await ctx.stopping.wait()
    finally:
        await server.drain(1.0)


def counter_value(ctx: TaskContext, name: str, **labels: str) -> int:
    return int(ctx.metrics.counter(name, "", **labels).value)


def dead_letter_reason(error: str) -> str:
    """The step that refused a message (``validate``, ``enrich``...), from its DLQ error."""
    found = _STEP.search(error)
    return found.group(1) if found else "other"


async def report(ctx: TaskContext) -> None:
    """Print what flowed every few seconds, and once more (with examples) when the node
    stops: a user should see where every order went, dead letters included."""
    every = float(ctx.options.get("every_seconds", 2))
    started = time.monotonic()
    # httpx (the webhook sink's client) logs every request at INFO: one line per order here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    labels = {"topic": "orders.created", "group": FLOW}

    async def lines() -> None:
        groups = {g.group: g for g in await ctx.bus.groups("orders.created")}
        lag = groups[FLOW].lag if FLOW in groups else 0
        quartet = ctx.metrics.target("flow", FLOW).snapshot()
        p99 = f"{quartet.p99 * 1000:.1f} ms" if quartet.p99 is not None else "-"
        http = ctx.metrics.target("route", "orders-in").snapshot()
        http_p99 = f"{http.p99 * 1000:.1f} ms" if http.p99 is not None else "-"
        dead = await ctx.bus.dlq_list("orders.created", limit=10_000)
        reasons = Counter(dead_letter_reason(d.error) for d in dead)
        sizes = {t.name: t.messages for t in await ctx.bus.topics()}
        print(
            f"[{time.monotonic() - started:6.1f}s]"
            f" POST /orders 202: {counter_value(ctx, 'demo_orders_published')}"
            f" (refused {counter_value(ctx, 'demo_orders_refused')}, p99 {http_p99})"
            f" · processed {counter_value(ctx, 'sampan_bus_acked', **labels)}"
            f" · retried {counter_value(ctx, 'sampan_bus_retried', **labels)}"
            f" · dead-lettered {len(dead)} · lag {lag} · flow p99 {p99}",
            flush=True,
        )
        why = ", ".join(f"{step} {n}" for step, n in sorted(reasons.items())) or "none"
        print(
            "          topics: "
            + " · ".join(f"{name} {sizes.get(name, 0)}" for name in TOPICS)
            + f" · orders.created.dlq {sizes.get('orders.created.dlq', 0)} ({why})",
            flush=True,
        )

    async def examples() -> None:
        shown: set[str] = set()
        for letter in await ctx.bus.dlq_list("orders.created", limit=10_000):
            reason = dead_letter_reason(letter.error)
            if reason not in shown:
                shown.add(reason)
                order_id = orjson.loads(letter.value).get("order_id", "?")
                print(
                    f"  dead letter {letter.topic}@{letter.original_offset} ({order_id}):"
                    f" {letter.error}",
                    flush=True,
                )

    print(
        "demo: POS terminals → POST /orders (gateway) → orders.created → flow 'order-routing':"
        " validate → enrich (customers) → payments.review | orders.fulfilment"
        " → signed webhook → notifications.sent",
        flush=True,
    )
    try:
        while True:
            await asyncio.sleep(every)
            await lines()
    except asyncio.CancelledError:
        await lines()
        await examples()
        print(
            f"demo: metrics at {ctx.admin_url or '(admin off)'}/metrics and /api/metrics; try\n"
            f"  curl -X POST {ctx.gateway_url}/orders -H 'apikey: demo-pos-key-change-me'"
            ' -H \'content-type: application/json\' -d \'{"customer": {"id": "KH00001"}}\'\n'
            "  sampan bus topics -c examples/demo/sampan.yaml\n"
            "  sampan bus dlq list orders.created -c examples/demo/sampan.yaml\n"
            "  sampan flow test examples/demo/flows.test.yaml",
            flush=True,
        )
        raise
