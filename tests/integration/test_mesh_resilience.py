"""The mesh against real misbehaving upstreams: 503s, resets, hangs, slowness, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sampan.http.client import ConnectionPool, UpstreamResponse
from sampan.http.headers import Headers
from sampan.mesh.config import ServiceConfig
from sampan.mesh.deadline import Deadline
from sampan.mesh.service import CallOptions, MeshError, MeshService
from sampan.observe.metrics import Metrics

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
DEADLINE_HEADER = b"x-sampan-deadline-ms"


class Upstream:
    """A real HTTP/1.1 server on 127.0.0.1 whose behaviour a test can change at any time."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                self.heads.append(head)
                await self.behaviour(reader, writer, head)
                if writer.is_closing():
                    return
        writer.close()


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()


async def unavailable(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
) -> None:
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
    await writer.drain()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    writer.transport.abort()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    await asyncio.sleep(60)


def slow(delay: float) -> Behaviour:
    async def behaviour(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        await asyncio.sleep(delay)
        await ok(reader, writer, head)

    return behaviour


@contextlib.asynccontextmanager
async def upstreams(*behaviours: Behaviour) -> AsyncIterator[list[Upstream]]:
    started = [Upstream(b) for b in behaviours]
    for upstream in started:
        upstream.server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    try:
        yield started
    finally:
        for upstream in started:
            assert upstream.server is not None
            upstream.server.close()


@contextlib.asynccontextmanager
async def mesh_service(
    ups: list[Upstream], **overrides: Any
) -> AsyncIterator[tuple[MeshService, Metrics]]:
    config: dict[str, Any] = {
        "name": "payments",
        "endpoints": [{"url": u.url} for u in ups],
        "balancer": {"type": "round-robin"},
        "health": {"passive": None},
        "outlier": None,
        "circuit_breaker": None,
    }
    config.update(overrides)
    metrics = Metrics()
    pool = ConnectionPool()
    service = MeshService(ServiceConfig.model_validate(config), pool, metrics)
    await service.start()
    try:
        yield service, metrics
    finally:
        await service.stop()
        await pool.close()


async def call(
    service: MeshService, method: str = "GET", deadline_ms: int | None = None
) -> UpstreamResponse:
    header = None if deadline_ms is None else str(deadline_ms).encode()
    options = CallOptions(
        Deadline.from_header(header, now=time.monotonic(), default_total=30.0), DEADLINE_HEADER
    )
    response = await service.call(method, b"/pay", Headers([(b"host", b"payments")]), None, options)
    await response.body.read()
    return response


async def test_a_503_is_retried_on_another_endpoint() -> None:
    async with upstreams(unavailable, ok) as ups, mesh_service(ups) as (service, metrics):
        statuses = [(await call(service)).status for _ in range(20)]
    assert statuses == [200] * 20
    # Every 503 was retried once, on the other endpoint (a retry avoids what it just tried).
    assert ups[0].requests > 0
    assert ups[1].requests == 20
    assert metrics.counter("sampan_mesh_retries", "", service="payments").value == ups[0].requests


async def test_retries_stop_at_the_budget() -> None:
    budget = {"ratio": 0.2, "min_per_second": 0.0, "window": 10.0}
    retry = {"attempts": 3, "budget": budget, "backoff": {"initial": 0.0, "max": 0.0}}
    async with (
        upstreams(unavailable, unavailable) as ups,
        mesh_service(ups, retry=retry) as (
            service,
            metrics,
        ),
    ):
        statuses = [(await call(service)).status for _ in range(100)]
        sent = sum(u.requests for u in ups)
    retries = metrics.counter("sampan_mesh_retries", "", service="payments").value
    denied = metrics.counter("sampan_mesh_retries_denied", "", service="payments").value
    assert statuses == [503] * 100  # the upstream's own answer reaches the caller
    assert retries <= 0.2 * 100 + 1
    assert denied > 0
    assert sent == 100 + retries  # nothing beyond the budget hit the upstreams


async def test_post_is_not_retried_after_a_reset() -> None:
    async with upstreams(reset, ok) as ups, mesh_service(ups) as (service, _):
        with pytest.raises(MeshError) as failed:
            await call(service, "POST")
    assert failed.value.status == 502
    assert ups[1].requests == 0


async def test_a_failing_endpoint_is_ejected_and_gets_traffic_back_after_it_recovers() -> None:
    outlier = {
        "consecutive_5xx": 3,
        "base_ejection": 0.4,
        "interval": 0.1,
        "max_ejection_percent": 50,
    }
    retry = {"attempts": 1}
    async with (
        upstreams(ok, ok, unavailable) as ups,
        mesh_service(ups, outlier=outlier, retry=retry) as (service, _),
    ):
        for _ in range(30):
            await call(service)
        bad = service.endpoints.get(ups[2].url)
        assert bad is not None and bad.ejections == 1
        before = ups[2].requests
        for _ in range(30):
            assert (await call(service)).status == 200  # nobody is sent to the ejected one
        assert ups[2].requests == before
        ups[2].behaviour = ok  # it recovers
        await asyncio.sleep(0.6)
        for _ in range(30):
            await call(service)
        assert ups[2].requests > before


async def test_the_breaker_opens_fails_fast_and_half_opens() -> None:
    breaker = {"consecutive_failures": 3, "open_for": 0.3, "half_open_probes": 1}
    async with (
        upstreams(reset) as ups,
        mesh_service(ups, circuit_breaker=breaker, retry={"attempts": 1}) as (service, _),
    ):
        for _ in range(3):
            with pytest.raises(MeshError):
                await call(service)
        state = service.endpoints.all()[0].breaker
        assert getattr(state, "state", None) == "open"
        connections = ups[0].connections
        with pytest.raises(MeshError) as refused:
            await call(service)
        assert refused.value.status == 503
        assert "no healthy endpoint" in refused.value.detail
        assert ups[0].connections == connections  # failed fast, no connection made
        ups[0].behaviour = ok
        await asyncio.sleep(0.35)
        assert (await call(service)).status == 200  # the half-open probe goes through
        assert getattr(state, "state", None) == "closed"


async def test_the_deadline_cuts_work_short_and_shrinks_on_the_way() -> None:
    async with upstreams(hang) as ups, mesh_service(ups, retry={"attempts": 1}) as (service, _):
        started = time.monotonic()
        with pytest.raises(MeshError) as expired:
            await call(service, deadline_ms=200)
        waited = time.monotonic() - started
    assert expired.value.status == 504
    assert 0.15 < waited < 1.0  # not the 10 s per-try timeout
    sent = ups[0].heads[0].decode().lower()
    remaining = int(sent.split("x-sampan-deadline-ms: ")[1].split("\r\n")[0])
    assert 0 < remaining <= 200


async def test_a_hanging_endpoint_times_out_and_the_retry_succeeds() -> None:
    retry = {"attempts": 2, "retry_on": ["timeout", "503"], "backoff": {"initial": 0, "max": 0}}
    timeouts = {"per_try": 0.2, "total": 5, "connect": 1}
    async with (
        upstreams(hang, ok) as ups,
        mesh_service(ups, retry=retry, timeouts=timeouts) as (
            service,
            _,
        ),
    ):
        started = time.monotonic()
        assert (await call(service)).status == 200
        assert time.monotonic() - started < 1.0


async def test_the_bulkhead_sheds_what_does_not_fit() -> None:
    bulkhead = {"max_concurrent": 2, "max_pending": 0}
    async with (
        upstreams(slow(0.3)) as ups,
        mesh_service(ups, bulkhead=bulkhead) as (
            service,
            metrics,
        ),
    ):
        results = await asyncio.gather(*(call(service) for _ in range(4)), return_exceptions=True)
    shed = [r for r in results if isinstance(r, MeshError)]
    assert len(shed) == 2
    assert all(r.status == 503 for r in shed)
    assert metrics.counter("sampan_mesh_shed", "", service="payments").value == 2


async def test_p2c_peak_ewma_steers_away_from_a_slow_endpoint() -> None:
    async with (
        upstreams(slow(0.002), slow(0.002), slow(0.05)) as ups,
        mesh_service(ups, balancer={"type": "p2c-peak-ewma"}) as (service, _),
    ):
        for _ in range(5):
            await asyncio.gather(*(call(service) for _ in range(8)))
        total = sum(u.requests for u in ups)
    assert ups[2].requests / total < 0.2


async def test_a_fast_failing_endpoint_does_not_attract_p2c_traffic() -> None:
    """A refused connection fails in microseconds; peak-EWMA must not read that as 'fast'."""
    async with (
        upstreams(reset, ok) as ups,
        mesh_service(ups, balancer={"type": "p2c-peak-ewma"}, retry={"attempts": 2}) as (
            service,
            _,
        ),
    ):
        statuses = [(await call(service)).status for _ in range(30)]
    assert statuses == [200] * 30
    assert ups[0].requests <= 3


async def test_a_cancelled_half_open_probe_gives_its_slot_back() -> None:
    """Without this, one cancelled probe would keep the endpoint out of rotation for good."""
    breaker = {"consecutive_failures": 2, "open_for": 0.2, "half_open_probes": 1}
    async with (
        upstreams(reset) as ups,
        mesh_service(ups, circuit_breaker=breaker, retry={"attempts": 1}) as (service, _),
    ):
        for _ in range(2):
            with pytest.raises(MeshError):
                await call(service)
        await asyncio.sleep(0.25)  # half-open now
        ups[0].behaviour = hang
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await call(service)  # the probe is cancelled by its caller
        ups[0].behaviour = ok
        assert (await call(service)).status == 200  # a new probe may go


async def test_bulkhead_overflow_does_not_collapse_the_adaptive_limit() -> None:
    adaptive = {"algorithm": "gradient", "initial_limit": 100, "max_limit": 200}
    bulkhead = {"max_concurrent": 30, "max_pending": 0}
    async with (
        upstreams(slow(0.05)) as ups,
        mesh_service(ups, adaptive_concurrency=adaptive, bulkhead=bulkhead) as (service, _),
    ):
        results = await asyncio.gather(*(call(service) for _ in range(40)), return_exceptions=True)
        assert sum(isinstance(r, MeshError) for r in results) == 10  # the bulkhead's refusals
        limiter = service.limiter
        assert limiter is not None
        assert limiter.in_flight == 0
        assert limiter.min_rtt is None or limiter.min_rtt > 0.02  # not poisoned by ~0 s refusals
        assert limiter.limit >= 50


async def test_a_connect_timeout_fails_over_to_another_endpoint() -> None:
    """A listener whose accept queue is full drops SYNs: the connect times out."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(blackhole.getsockname())
        fillers.append(filler)
    await asyncio.sleep(0.1)
    try:
        async with upstreams(ok) as ups:
            ups_and_hole = [Upstream(ok), ups[0]]
            ups_and_hole[0].server = blackhole  # type: ignore[assignment]
            config_endpoints = [
                {"url": f"http://127.0.0.1:{blackhole.getsockname()[1]}"},
                {"url": ups[0].url},
            ]
            timeouts = {"connect": 0.2, "per_try": 2, "total": 5}
            async with mesh_service(ups, endpoints=config_endpoints, timeouts=timeouts) as (
                service,
                _,
            ):
                statuses = [(await call(service)).status for _ in range(4)]
        assert statuses == [200] * 4
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


async def test_a_trickled_upload_times_out_without_holding_a_slot() -> None:
    class Trickle:
        length = 10
        limit = None

        async def chunks(self) -> AsyncIterator[bytes]:
            await asyncio.sleep(5)
            yield b"0123456789"

        async def read(self, limit: int | None = None) -> bytes:
            await asyncio.sleep(5)
            return b"0123456789"

    async with upstreams(ok) as ups, mesh_service(ups) as (service, _):
        options = CallOptions(
            Deadline.from_header(b"300", now=time.monotonic(), default_total=30.0),
            DEADLINE_HEADER,
        )
        with pytest.raises(MeshError) as slow_body:
            await service.call("PUT", b"/", Headers([(b"host", b"x")]), Trickle(), options)
        assert slow_body.value.status == 504
        assert service.bulkhead.active == 0
