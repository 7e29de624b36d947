"""Registration through the admin API: register, heartbeat, expire, deregister, list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from sampan.admin.server import create_admin_app
from sampan.mesh.config import RegistrationConfig
from sampan.mesh.endpoint_set import EndpointSet, EndpointSpec
from sampan.mesh.registration import Registry, RegistryFull, UnknownService, registration_routes
from sampan.observe.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeBreaker:
    state: str = "open"

    def allows(self, now: float) -> bool:
        return False


@dataclass
class World:
    clock: FakeClock
    registry: Registry
    orders: EndpointSet
    static: EndpointSet


def make_world() -> World:
    clock = FakeClock()
    orders = EndpointSet("orders")
    static = EndpointSet("catalog")
    static.replace("static", [EndpointSpec("http://10.1.0.1:80", weight=3, version="v1")])
    registry = Registry({"catalog": static}, clock=clock)
    registry.add_service(orders, RegistrationConfig(enabled=True, ttl=10))
    return World(clock, registry, orders, static)


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
async def admin(world: World) -> AsyncIterator[httpx.AsyncClient]:
    app = create_admin_app(Metrics(), extra_routes=registration_routes(world.registry))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield client


def urls(endpoint_set: EndpointSet) -> list[str]:
    return [state.url for state in endpoint_set.all()]


def test_heartbeats_refresh_expiry_and_silence_expires(world: World) -> None:
    registry, clock, orders = world.registry, world.clock, world.orders
    spec = registry.register("orders", "http://10.0.0.1:8080/", weight=2, version="v2")
    assert (spec.url, spec.weight, spec.version, spec.expires_at) == (
        "http://10.0.0.1:8080",
        2,
        "v2",
        1010.0,
    )
    registry.register("orders", "http://10.0.0.2:8080", ttl=30)
    state = orders.get("http://10.0.0.1:8080")
    assert state is not None and state.source == "registered" and state.expires_at == 1010.0
    state.requests = 5

    clock.now = 1008.0
    registry.register("orders", "http://10.0.0.1:8080", weight=2, version="v2")  # heartbeat
    assert state.expires_at == 1018.0
    assert registry.expire(1012.0) == []
    assert registry.expire(1018.0) == [("orders", "http://10.0.0.1:8080")]
    assert urls(orders) == ["http://10.0.0.2:8080"]
    clock.now = 1030.0
    assert registry.expire() == [("orders", "http://10.0.0.2:8080")]
    assert orders.all() == ()


def test_register_rejects_unknown_disabled_and_bad_input(world: World) -> None:
    registry = world.registry
    with pytest.raises(UnknownService, match="no service"):
        registry.register("nope", "http://a:1")
    with pytest.raises(UnknownService, match="registration"):
        registry.register("catalog", "http://a:1")
    for url in ("ftp://a:1", "http://", "http://a:99999", "http://u:p@a:1"):
        with pytest.raises(ValueError):
            registry.register("orders", url)
    with pytest.raises(ValueError, match="weight"):
        registry.register("orders", "http://a:1", weight=0)
    with pytest.raises(ValueError, match="ttl"):
        registry.register("orders", "http://a:1", ttl=float("nan"))
    assert world.orders.all() == ()

    small = Registry(clock=world.clock, max_per_service=2)
    small.add_service(EndpointSet("x"), RegistrationConfig(enabled=True))
    small.register("x", "http://a:1")
    small.register("x", "http://a:2")
    small.register("x", "http://a:2")  # a heartbeat is not a new endpoint
    with pytest.raises(RegistryFull):
        small.register("x", "http://a:3")
    with pytest.raises(ValueError, match="twice"):
        small.add_service(EndpointSet("x"))


def test_registered_endpoint_beside_static_one(world: World) -> None:
    world.registry.enable("catalog", 5.0)
    world.registry.register("catalog", "http://10.1.0.2:80")
    world.registry.register("catalog", "http://10.1.0.1")  # also static: static wins
    assert [(s.url, s.source) for s in world.static.all()] == [
        ("http://10.1.0.1", "static"),
        ("http://10.1.0.2", "registered"),
    ]
    assert world.registry.deregister("catalog", "http://10.1.0.1:80")
    assert not world.registry.deregister("catalog", "http://10.1.0.9")
    assert urls(world.static) == ["http://10.1.0.1", "http://10.1.0.2"]


async def test_admin_api_register_heartbeat_and_delete(
    world: World, admin: httpx.AsyncClient
) -> None:
    body = {"url": "http://10.0.0.1:8080", "weight": 4, "version": "v2"}
    created = await admin.put("/api/services/orders/endpoints", json=body)
    assert created.status_code == 201, created.text
    assert created.json() == {
        "service": "orders",
        "url": "http://10.0.0.1:8080",
        "weight": 4,
        "version": "v2",
        "expires_in": 10.0,
    }
    world.clock.now += 4
    beat = await admin.put("/api/services/orders/endpoints", json={"url": "http://10.0.0.1:8080"})
    assert beat.status_code == 200
    state = world.orders.get("http://10.0.0.1:8080")
    assert state is not None and state.expires_at == 1014.0
    assert (state.weight, state.version) == (1, None)  # the latest call decides

    deleted = await admin.delete(
        "/api/services/orders/endpoints", params={"url": "http://10.0.0.1:8080/"}
    )
    assert deleted.status_code == 204
    assert world.orders.all() == ()
    again = await admin.delete(
        "/api/services/orders/endpoints", params={"url": "http://10.0.0.1:8080"}
    )
    assert again.status_code == 404
    assert again.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/api/services/nope/endpoints", {"url": "http://a:1"}, 404, "no service"),
        ("/api/services/catalog/endpoints", {"url": "http://a:1"}, 404, "registration"),
        ("/api/services/orders/endpoints", {"url": "ftp://a:1"}, 422, "scheme"),
        ("/api/services/orders/endpoints", {"url": "http://a:1/x?y=1"}, 422, "query"),
        ("/api/services/orders/endpoints", {"url": 5}, 422, "url"),
        ("/api/services/orders/endpoints", {}, 422, "url"),
        ("/api/services/orders/endpoints", [1], 422, "object"),
        ("/api/services/orders/endpoints", {"url": "http://a:1", "weight": "2"}, 422, "weight"),
        ("/api/services/orders/endpoints", {"url": "http://a:1", "weight": True}, 422, "weight"),
        ("/api/services/orders/endpoints", {"url": "http://a:1", "weight": 5000}, 422, "weight"),
        ("/api/services/orders/endpoints", {"url": "http://a:1", "version": 2}, 422, "version"),
        ("/api/services/orders/endpoints", {"url": "http://a:1", "ttl": 9}, 422, "ttl"),
    ],
)
async def test_admin_api_errors_are_problem_json(
    world: World,
    admin: httpx.AsyncClient,
    path: str,
    body: object,
    status: int,
    detail: str,
) -> None:
    response = await admin.put(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and detail in problem["detail"]
    assert world.orders.all() == ()


async def test_admin_api_rejects_non_json_and_missing_url(admin: httpx.AsyncClient) -> None:
    response = await admin.put("/api/services/orders/endpoints", content=b"{nope")
    assert response.status_code == 400
    response = await admin.delete("/api/services/orders/endpoints")
    assert response.status_code == 400
    response = await admin.delete("/api/services/nope/endpoints", params={"url": "http://a:1"})
    assert response.status_code == 404
    response = await admin.delete("/api/services/orders/endpoints", params={"url": "ftp://a"})
    assert response.status_code == 422


async def test_admin_api_lists_services_with_endpoint_state(
    world: World, admin: httpx.AsyncClient
) -> None:
    await admin.put("/api/services/orders/endpoints", json={"url": "http://10.0.0.1:8080"})
    state = world.static.all()[0]
    state.breaker = FakeBreaker()
    state.ejected_until = world.clock.now + 12.5
    state.in_flight, state.ewma, state.requests, state.failures = 3, 0.0125, 10, 2
    state.last_error = "status 503"
    state.healthy = False

    response = await admin.get("/api/services")
    assert response.status_code == 200
    services = response.json()["services"]
    assert [s["name"] for s in services] == ["catalog", "orders"]
    catalog, orders = services
    assert catalog["registration"] == {"enabled": False, "ttl": 30.0}
    assert catalog["available"] == 0
    (static,) = catalog["endpoints"]
    assert static == {
        "url": "http://10.1.0.1",
        "source": "static",
        "weight": 3,
        "version": "v1",
        "available": False,
        "healthy": False,
        "unhealthy_until": 0.0,
        "unhealthy_for": 0.0,
        "ejected_until": 1012.5,
        "ejected_for": 12.5,
        "ejections": 0,
        "in_flight": 3,
        "ewma_ms": 12.5,
        "breaker": "open",
        "requests": 10,
        "failures": 2,
        "last_error": "status 503",
        "expires_in": None,
    }
    (registered,) = orders["endpoints"]
    assert registered["source"] == "registered" and registered["expires_in"] == 10.0
    assert registered["breaker"] is None and registered["available"] is True
    assert orders["available"] == 1 and orders["sources"] == ["registered"]


async def test_expiry_loop_removes_silent_endpoints() -> None:
    registry = Registry()
    endpoints = EndpointSet("orders")
    registry.add_service(endpoints, RegistrationConfig(enabled=True, ttl=0.2))
    assert registry.expiry_interval() == 0.05
    await registry.start()
    try:
        registry.register("orders", "http://10.0.0.1:1")
        for _ in range(10):  # heartbeats every 50 ms keep it alive well past the ttl
            await asyncio.sleep(0.05)
            registry.register("orders", "http://10.0.0.1:1")
        assert urls(endpoints) == ["http://10.0.0.1:1"]
        for _ in range(100):
            if not endpoints.all():
                break
            await asyncio.sleep(0.02)
        assert endpoints.all() == ()
    finally:
        await registry.stop()


async def test_routes_accept_the_mesh_services_mapping() -> None:
    @dataclass
    class Service:
        endpoints: EndpointSet

    registry = Registry()
    extra = EndpointSet("extra")
    extra.replace("static", [EndpointSpec("http://h:1")])
    app = create_admin_app(
        Metrics(), extra_routes=registration_routes(registry, {"extra": Service(extra)})
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin"
    ) as client:
        listing = (await client.get("/api/services")).json()["services"]
    assert [s["name"] for s in listing] == ["extra"]
