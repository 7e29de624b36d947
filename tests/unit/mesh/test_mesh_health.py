"""Health checks against real upstream servers on 127.0.0.1 (healthy, 503, hanging,
flapping, refusing), and passive health on a fake clock."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sampan.http.client import ConnectionPool
from sampan.mesh.config import ActiveHealthCheck, PassiveHealthCheck
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.endpoint_set import EndpointSet, EndpointSpec, make_state
from sampan.mesh.health import ActiveHealthChecker, PassiveHealth


class Upstream:
    """An HTTP/1.1 responder whose answer is switched by ``mode``: ok (200), fail (503),
    hang (never answers), flap (200 and 503 in turn)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.paths: list[str] = []
        self.times: list[float] = []
        self._flaps = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            for _ in range(100_000):  # one request per round, until the client leaves
                head = await reader.readuntil(b"\r\n\r\n")
                self.paths.append(head.split(b" ", 2)[1].decode())
                self.times.append(time.monotonic())
                mode = self.mode
                if mode == "flap":
                    mode = "ok" if self._flaps % 2 == 0 else "fail"
                    self._flaps += 1
                if mode == "hang":
                    await reader.read()  # until the prober gives up and closes
                    return
                status = b"200 OK" if mode == "ok" else b"503 Service Unavailable"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nhi")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[], Any]]:
    started: list[Upstream] = []

    async def make() -> Upstream:
        upstream = Upstream()
        await upstream.start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    connections = ConnectionPool()
    yield connections
    await connections.close()


def check(**fields: Any) -> ActiveHealthCheck:
    base: dict[str, Any] = {
        "interval": 0.05,
        "timeout": 0.2,
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
    }
    return ActiveHealthCheck.model_validate({**base, **fields})


async def wait_for(condition: Callable[[], bool], within: float = 2.0) -> None:
    for _ in range(int(within / 0.01) + 1):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {within}s")


def only(endpoint_set: EndpointSet, url: str) -> EndpointState:
    state = endpoint_set.get(url)
    assert state is not None
    return state


async def test_failing_endpoint_is_marked_down_and_comes_back(
    upstreams: Callable[[], Any], pool: ConnectionPool
) -> None:
    good, bad = await upstreams(), await upstreams()
    endpoints = EndpointSet("orders")
    endpoints.replace("static", [EndpointSpec(good.url + "/api"), EndpointSpec(bad.url)])
    flips: list[tuple[str, bool]] = []
    checker = ActiveHealthChecker(
        "orders",
        check(path="/healthz"),
        endpoints,
        pool,
        on_transition=lambda state, healthy: flips.append((state.url, healthy)),
    )
    good_state, bad_state = only(endpoints, good.url + "/api"), only(endpoints, bad.url)
    await checker.start()
    try:
        await wait_for(lambda: len(bad.paths) >= 2 and len(good.paths) >= 2)
        assert good_state.healthy and bad_state.healthy
        assert set(good.paths) == {"/api/healthz"} and set(bad.paths) == {"/healthz"}

        bad.mode = "fail"
        await wait_for(lambda: not bad_state.healthy)
        assert good_state.healthy
        assert not bad_state.available(time.monotonic())
        assert bad_state.last_error == "health check: status 503"
        record = checker.record(bad_state)
        assert record is not None and record.last_status == 503 and record.failures >= 2

        bad.mode = "ok"
        await wait_for(lambda: bad_state.healthy)
        assert flips == [(bad.url, False), (bad.url, True)]
    finally:
        await checker.stop()
    # Probes reuse keep-alive connections instead of opening one per probe.
    assert pool.stats()["created"] < len(good.paths) + len(bad.paths)


async def test_hanging_and_refusing_endpoints_are_marked_down(
    upstreams: Callable[[], Any], pool: ConnectionPool
) -> None:
    hanging = await upstreams()
    hanging.mode = "hang"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    refused_url = f"http://127.0.0.1:{closed_port}"
    endpoints = EndpointSet("orders")
    endpoints.replace("dns", [EndpointSpec(hanging.url), EndpointSpec(refused_url)])
    checker = ActiveHealthChecker("orders", check(timeout=0.1), endpoints, pool)
    hanging_state, refused_state = only(endpoints, hanging.url), only(endpoints, refused_url)
    await checker.start()
    try:
        await wait_for(lambda: not hanging_state.healthy and not refused_state.healthy)
    finally:
        await checker.stop()
    hanging_record, refused_record = checker.record(hanging_state), checker.record(refused_state)
    assert hanging_record is not None and hanging_record.last_error is not None
    assert "0.1s" in hanging_record.last_error
    assert refused_record is not None and refused_record.last_error is not None
    assert refused_record.last_error.startswith("connect")


async def test_flapping_endpoint_needs_consecutive_results_to_flip(
    upstreams: Callable[[], Any], pool: ConnectionPool
) -> None:
    flappy = await upstreams()
    flappy.mode = "flap"
    endpoints = EndpointSet("orders")
    endpoints.replace("static", [EndpointSpec(flappy.url)])
    state = only(endpoints, flappy.url)
    checker = ActiveHealthChecker("orders", check(), endpoints, pool)
    await checker.start()
    try:
        await wait_for(lambda: len(flappy.paths) >= 8)
        assert state.healthy  # never two failures in a row
        flappy.mode = "fail"
        await wait_for(lambda: not state.healthy)
        flappy.mode = "flap"
        seen = len(flappy.paths)
        await wait_for(lambda: len(flappy.paths) >= seen + 8)
        assert not state.healthy  # never two successes in a row
        flappy.mode = "ok"
        await wait_for(lambda: state.healthy)
    finally:
        await checker.stop()


async def test_checker_follows_the_endpoint_set(
    upstreams: Callable[[], Any], pool: ConnectionPool
) -> None:
    first, second = await upstreams(), await upstreams()
    endpoints = EndpointSet("orders")
    checker = ActiveHealthChecker("orders", check(), endpoints, pool)
    await checker.start()
    try:
        endpoints.replace("registered", [EndpointSpec(first.url)])
        await wait_for(lambda: len(first.paths) >= 2)
        endpoints.replace("registered", [EndpointSpec(second.url)])
        await wait_for(lambda: len(second.paths) >= 2)
        await asyncio.sleep(0.02)  # a probe of the removed endpoint may be finishing
        stopped_at = len(first.paths)
        await asyncio.sleep(0.2)
        assert len(first.paths) == stopped_at
        assert checker.record(only(endpoints, second.url)) is not None
    finally:
        await checker.stop()
    after_stop = len(second.paths)
    await asyncio.sleep(0.15)
    assert len(second.paths) == after_stop


class SpreadRandom(random.Random):
    """``uniform`` hands out 0, 1/4, 2/4, 3/4 of the range in turn."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def uniform(self, a: float, b: float) -> float:
        value = a + (b - a) * (self.calls % 4) / 4
        self.calls += 1
        return value


async def test_first_probes_are_spread_over_the_interval(
    upstreams: Callable[[], Any], pool: ConnectionPool
) -> None:
    servers = [await upstreams() for _ in range(4)]
    endpoints = EndpointSet("orders")
    endpoints.replace("static", [EndpointSpec(s.url) for s in servers])
    checker = ActiveHealthChecker(
        "orders", check(interval=0.4), endpoints, pool, rng=SpreadRandom()
    )
    started = time.monotonic()
    await checker.start()
    try:
        await wait_for(lambda: all(s.times for s in servers))
    finally:
        await checker.stop()
    offsets = sorted(s.times[0] - started for s in servers)
    assert offsets[-1] - offsets[0] >= 0.25  # 0, 0.1, 0.2, 0.3 s rather than all at once
    assert offsets[-1] < 0.4


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_passive_health_takes_an_endpoint_out_after_consecutive_failures() -> None:
    clock = FakeClock()
    taken_out: list[str] = []
    passive = PassiveHealth(
        PassiveHealthCheck(consecutive_failures=3, unhealthy_for=10),
        clock,
        on_unhealthy=lambda state: taken_out.append(state.url),
    )
    state = make_state(EndpointSpec("http://10.0.0.1:80"))
    other = make_state(EndpointSpec("http://10.0.0.2:80"))

    assert not passive.record(state, ok=False)
    assert not passive.record(state, ok=False)
    assert not passive.record(state, ok=True)  # a success breaks the streak
    assert passive.streak(state) == 0
    assert not passive.record(other, ok=False)
    assert [passive.record(state, ok=False) for _ in range(3)] == [False, False, True]
    assert state.unhealthy_until == 110.0 and passive.streak(state) == 0
    assert not state.available(clock.now) and other.available(clock.now)
    assert taken_out == ["http://10.0.0.1"]

    # Calls that were in flight fail too: they do not extend the sentence.
    clock.now = 105.0
    assert not passive.record(state, ok=False)
    assert state.unhealthy_until == 110.0 and passive.streak(state) == 0

    # Back after unhealthy_for; a full streak is needed to go out again.
    clock.now = 110.0
    assert state.available(clock.now)
    assert not passive.record(state, ok=False)
    assert not passive.record(state, ok=False)
    assert passive.record(state, ok=False)
    assert state.unhealthy_until == 120.0
    assert passive.streak(other) == 1
