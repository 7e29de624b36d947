from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from sampan.gateway.plugins.base import AuthenticatedConsumer
from sampan.gateway.plugins.errors import PluginConfigError
from sampan.gateway.plugins.rate_limit import RateLimitPlugin
from sampan.gateway.plugins.registry import build_plugin
from sampan.http.response import Response
from sampan.observe.metrics import Metrics

REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def local(env_factory, **config) -> tuple[RateLimitPlugin, FakeClock]:
    plugin = build_plugin("rate-limit", config, env_factory())
    assert isinstance(plugin, RateLimitPlugin)
    clock = FakeClock()
    plugin.clock = clock
    return plugin, clock


async def test_gcra_burst_then_steady_rate(env_factory, request_factory) -> None:
    plugin, clock = local(env_factory, rate=10, period="10s", burst=3, limit_by="ip")
    results = []
    for _ in range(4):
        request = request_factory()
        results.append((await plugin.on_request(request), request))
    assert [r is None for r, _ in results] == [True, True, True, False]
    rejected = results[3][0]
    assert rejected.status == 429
    assert rejected.headers.get(b"content-type") == b"application/problem+json"
    assert rejected.headers.get(b"retry-after") == b"1"
    assert rejected.headers.get(b"ratelimit-policy") == b'"default";q=10;w=10'
    assert rejected.headers.get(b"ratelimit") == b'"default";r=0;t=3'
    assert orjson.loads(rejected.body)["status"] == 429
    # the accepted ones carry the headers on their response
    response = await plugin.on_response(results[0][1], Response(200))
    assert response.headers.get(b"ratelimit") == b'"default";r=2;t=1'
    assert response.headers.get(b"ratelimit-policy") == b'"default";q=10;w=10'
    clock.now += 1.0  # one emission interval later one more request fits
    assert await plugin.on_request(request_factory()) is None
    assert (await plugin.on_request(request_factory())).status == 429
    clock.now += 100  # full again
    for _ in range(3):
        assert await plugin.on_request(request_factory()) is None


async def test_retry_after_rounds_up(env_factory, request_factory) -> None:
    plugin, clock = local(env_factory, rate=1, period="10s", limit_by="route")
    assert await plugin.on_request(request_factory()) is None
    clock.now += 0.5
    response = await plugin.on_request(request_factory())
    assert response.headers.get(b"retry-after") == b"10"  # 9.5 s -> 10


async def test_limit_by_keys(env_factory, request_factory) -> None:
    plugin, _ = local(env_factory, rate=1, period="1m")  # by consumer, IP fallback
    alice = request_factory()
    alice.state["consumer"] = AuthenticatedConsumer("alice", frozenset())
    assert await plugin.on_request(alice) is None
    assert await plugin.on_request(request_factory()) is None  # same IP, no consumer: ip key
    bob = request_factory()
    bob.state["consumer"] = AuthenticatedConsumer("bob", frozenset())
    assert await plugin.on_request(bob) is None
    assert (await plugin.on_request(alice)).status == 429

    by_header, _ = local(env_factory, rate=1, limit_by="header", header_name="X-Tenant")
    assert await by_header.on_request(request_factory(headers=[("x-tenant", "a")])) is None
    assert await by_header.on_request(request_factory(headers=[("x-tenant", "b")])) is None
    assert (await by_header.on_request(request_factory(headers=[("x-tenant", "a")]))).status == 429

    by_ip, _ = local(env_factory, rate=1, limit_by="ip")
    proxied = request_factory(client="10.0.0.1")
    proxied.state["client_ip"] = "198.51.100.1"
    assert await by_ip.on_request(proxied) is None
    assert await by_ip.on_request(request_factory(client="10.0.0.1")) is None
    assert (await by_ip.on_request(request_factory(client="198.51.100.1"))).status == 429


async def test_local_buckets_are_swept(env_factory, request_factory) -> None:
    plugin, clock = local(env_factory, rate=100, period="1s", limit_by="ip")
    for i in range(3000):
        await plugin.on_request(request_factory(client=f"10.0.{i // 250}.{i % 250}"))
        clock.now += 0.01
    assert len(plugin._tats) < 2100


def test_config_errors(env_factory) -> None:
    with pytest.raises(PluginConfigError) as info:
        build_plugin("rate-limit", {"rate": 0, "limit_by": "header"}, env_factory())
    paths = [p for p, _ in info.value.errors]
    assert "rate" in paths
    with pytest.raises(PluginConfigError, match="header_name"):
        build_plugin("rate-limit", {"rate": 1, "limit_by": "header"}, env_factory())
    with pytest.raises(PluginConfigError, match="redis_url"):
        build_plugin("rate-limit", {"rate": 1, "policy": "redis"}, env_factory())


# ------------------------------------------------------------------------ Redis


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"sampan-test:{uuid.uuid4().hex}"
    yield name
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_two_nodes_share_one_exact_limit(env_factory, request_factory, prefix) -> None:
    config = {"rate": 5, "period": "1m", "policy": "redis", "limit_by": "ip", "key_prefix": prefix}
    node_a = build_plugin("rate-limit", config, env_factory(redis_url=REDIS_URL))
    node_b = build_plugin("rate-limit", config, env_factory(redis_url=REDIS_URL))
    await node_a.start()
    await node_b.start()
    try:
        outcomes = await asyncio.gather(
            *((node_a if i % 2 else node_b).on_request(request_factory()) for i in range(12))
        )
        assert sum(o is None for o in outcomes) == 5
        refused = [o for o in outcomes if o is not None]
        assert all(o.status == 429 for o in refused)
        assert all(int(o.headers.get(b"retry-after")) >= 1 for o in refused)
        other_ip = request_factory(client="198.51.100.9")
        assert await node_a.on_request(other_ip) is None
        remaining = other_ip.state["ratelimit_headers"][1][1]
        assert remaining == b'"default";r=4;t=12'
        client = Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            assert len(keys) == 2
            ttl = await client.pttl(keys[0])
            assert 0 < ttl <= 60_000
        finally:
            await client.aclose()
    finally:
        await node_a.close()
        await node_b.close()


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_redis_down(env_factory, request_factory, mode, caplog) -> None:
    metrics = Metrics()
    plugin = build_plugin(
        "rate-limit",
        {"rate": 1, "policy": "redis", "on_redis_error": mode, "redis_url": "redis://127.0.0.1:1"},
        env_factory(metrics=metrics),
    )
    await plugin.start()
    try:
        with caplog.at_level("WARNING", logger="sampan.test.plugins"):
            outcomes = [await plugin.on_request(request_factory()) for _ in range(20)]
        if mode == "allow":
            assert all(o is None for o in outcomes)
        else:
            assert all(o is not None and o.status == 503 for o in outcomes)
            assert outcomes[0].headers.get(b"content-type") == b"application/problem+json"
        counter = metrics.counter(
            "sampan_ratelimit_redis_errors",
            "Rate-limit decisions made without Redis (unreachable or failing).",
            route="r1",
        )
        assert counter.value == 21  # the failed SCRIPT LOAD at start + every request
        assert len([r for r in caplog.records if "Redis" in r.getMessage()]) <= 1
        assert b"sampan_ratelimit_redis_errors_total" in metrics.render()
    finally:
        await plugin.close()
