"""The admin server for real: uvicorn on an ephemeral port, spoken to over HTTP with httpx."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sampan.admin.runner import AdminServer, AdminServerError
from sampan.admin.server import create_admin_app
from sampan.observe.metrics import Metrics

Health = Callable[[], Awaitable[dict[str, Any]]]


async def run_admin(
    metrics: Metrics,
    *,
    extra_routes: list[BaseRoute] | None = None,
    health: Health | None = None,
) -> AdminServer:
    app = create_admin_app(metrics, extra_routes=extra_routes or [], health=health)
    server = AdminServer(app, port=0)
    await server.start()
    return server


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    route = m.target("route", "orders")
    route.observe(0.002)
    route.observe(0.004, error=True)
    route.cost(1000)
    m.counter("sampan_bus_dead_lettered", "Dead-lettered messages.", topic="orders").inc()
    return m


@pytest.fixture
async def admin(metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internals")

    server = await run_admin(metrics, extra_routes=[Route("/boom", boom)])
    try:
        assert server.port > 0
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            yield client
    finally:
        await server.stop()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def test_metrics_endpoint_serves_prometheus_text(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["sampan_latency_seconds"].type == "histogram"
    requests = families["sampan_requests"].samples
    assert [(s.labels, s.value) for s in requests] == [({"kind": "route", "name": "orders"}, 2)]
    assert families["sampan_bus_dead_lettered"].samples[0].value == 1


async def test_healthz_defaults_to_ok(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_api_metrics_lists_snapshots(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/api/metrics")
    assert response.status_code == 200
    [snap] = response.json()
    assert snap["kind"] == "route" and snap["name"] == "orders"
    assert snap["count"] == 2 and snap["errors"] == 1 and snap["error_rate"] == 0.5
    assert 0.001 < snap["p50"] <= snap["p95"] <= snap["p99"] <= 0.005
    assert snap["cost_total"] == 1000 and snap["cost_per_transaction"] == 500
    assert snap["currency"] == "VND"


async def test_unknown_path_is_problem_json(admin: httpx.AsyncClient) -> None:
    body = assert_problem(await admin.get("/nope"), 404)
    assert body["title"] == "Not Found"
    assert "/nope" in body["detail"]
    assert body["instance"] == "/nope"


async def test_wrong_method_is_problem_json_with_allow(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/metrics")
    body = assert_problem(response, 405)
    assert "GET" in response.headers["allow"]
    assert "POST" in body["detail"]


async def test_server_error_is_problem_json_without_internals(admin: httpx.AsyncClient) -> None:
    body = assert_problem(await admin.get("/boom"), 500)
    assert "secret internals" not in body["detail"]


async def test_custom_health_and_failing_health() -> None:
    calls = {"n": 0}

    async def health() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("bus database is locked")
        return {"status": "ok", "bus": "sqlite"}

    server = await run_admin(Metrics(), health=health)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await client.get("/healthz")
            assert first.json() == {"status": "ok", "bus": "sqlite"}
            body = assert_problem(await client.get("/healthz"), 503)
            assert "bus database is locked" in body["detail"]
    finally:
        await server.stop()


async def test_extra_routes_are_served() -> None:
    async def hello(request: Request) -> Response:
        return JSONResponse({"hello": "admin"})

    server = await run_admin(Metrics(), extra_routes=[Route("/api/hello", hello)])
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/api/hello")).json() == {"hello": "admin"}
    finally:
        await server.stop()


async def test_taken_port_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = AdminServer(create_admin_app(Metrics()), port=port)
        with pytest.raises(AdminServerError, match=rf"127\.0\.0\.1:{port}.*admin port"):
            await server.start()
        await server.stop()  # harmless after a failed start


async def test_binds_loopback_by_default_and_leaves_signals_alone() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    server = AdminServer(create_admin_app(Metrics()), port=0)
    assert server.host == "127.0.0.1"
    await server.start()
    try:
        assert server.started
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        with pytest.raises(AdminServerError, match="already started"):
            await server.start()
    finally:
        await server.stop()
    assert not server.started


async def test_stop_lets_in_flight_requests_finish() -> None:
    entered = asyncio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await asyncio.sleep(0.3)
        return JSONResponse({"done": True})

    server = await run_admin(Metrics(), extra_routes=[Route("/slow", slow)])
    url = server.url
    async with httpx.AsyncClient(base_url=url) as client:
        in_flight = asyncio.create_task(client.get("/slow"))
        await entered.wait()
        await server.stop()
        response = await in_flight
        assert response.json() == {"done": True}
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
