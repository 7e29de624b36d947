"""The gateway's compiled front (``gateway.fast_path``) as a whole, against real upstreams.

The parity suite (test_gateway_fast_path_parity.py) proves that a client cannot tell the
front from the Python server byte for byte; it cannot see *who* answered, what the route's
metrics say, how the front behaves across a reload, under its per-client limit, with stale
pooled upstream connections, during a drain, or under back-pressure. Those are checked here,
each against a real ``GatewayService`` with ``fast_path: true`` and a real asyncio upstream
on 127.0.0.1. Only one front runs at a time (the front keeps process-wide state).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from sampan.config import SampanConfig
from sampan.gateway.fast_front import GatewayFront
from sampan.gateway.service import GatewayService
from sampan.observe.metrics import Metrics, TargetSnapshot

HOST: Final = "127.0.0.1"
WAIT: Final = 5.0  # the bound of every single wait in this file
PROBLEM: Final = "application/problem+json"


# -- upstreams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as an upstream received it."""

    method: bytes
    target: bytes
    head: bytes
    body: bytes
    nth: int = 1  # the request's number on its connection


# (request, reader, writer) -> keep the connection open for another request?
Answer = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def response(body: bytes, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A Content-Length framed answer."""
    lines = [b"HTTP/1.1 %d %s" % (status, b"OK" if status == 200 else b"Status")]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    """One request (Content-Length bodies only: the front never sends another kind)."""
    try:  # an idle pooled connection waits here; tests end well within WAIT
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return None
    method, target = head.split(b" ", 2)[:2]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await asyncio.wait_for(reader.readexactly(length), WAIT) if length else b""
    return Seen(method, target, head, body)


class Upstream:
    """A real HTTP/1.1 upstream on asyncio streams: ``answer`` serves each request."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=WAIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        try:
            for nth in range(1, 10_000):  # bounded: each round serves one request or ends
                seen = await read_request(reader)
                if seen is None:
                    break
                seen = dataclasses.replace(seen, nth=nth)
                self.seen.append(seen)
                if not await self.answer(seen, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def upstream(answer: Answer) -> AsyncIterator[Upstream]:
    up = await Upstream(answer).start()
    try:
        yield up
    finally:
        await up.close()


def says(text: bytes) -> Answer:
    """An upstream that answers every request with ``text`` and keeps the connection."""

    async def answer(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(response(text))
        await writer.drain()
        return True

    return answer


# -- the gateway ---------------------------------------------------------------------------------


def route(name: str, prefix: str, url: str, **service: Any) -> dict[str, Any]:
    """A plain proxy route: what the front serves itself."""
    return {
        "name": name,
        "match": {"path_prefix": prefix},
        "target": {"service": {"endpoints": [url], **service}},
    }


def make_config(
    routes: list[dict[str, Any]],
    *,
    fast_path: bool = True,
    limits: dict[str, Any] | None = None,
    drain_timeout: float = 5.0,
) -> SampanConfig:
    gateway: dict[str, Any] = {
        "listen": {"host": HOST, "port": 0},
        "fast_path": fast_path,
        "drain_timeout": drain_timeout,
    }
    if limits is not None:
        gateway["limits"] = limits
    return SampanConfig.model_validate({"gateway": gateway, "routes": routes})


@contextlib.asynccontextmanager
async def gateway(config: SampanConfig) -> AsyncIterator[GatewayService]:
    service = GatewayService(config, Metrics(), bus=None)
    await service.start(port=0)
    try:
        yield service
    finally:
        async with asyncio.timeout(WAIT + 2):
            await service.stop()


def front(service: GatewayService) -> GatewayFront:
    """The compiled front (the test is meaningless if it did not start)."""
    assert service.front is not None, "gateway.fast_path is on but the front did not start"
    return service.front


def stats(service: GatewayService) -> dict[str, Any]:
    return front(service).stats()


def quartet(service: GatewayService, name: str) -> TargetSnapshot:
    return service.metrics.target("route", name).snapshot()


async def until(check: Callable[[], bool], within: float = 2.0) -> bool:
    """Poll ``check`` (every 10 ms, at most ``within`` seconds): the front reports from its
    own thread (notify fd, periodic merges of its counts), so its observations and
    hand-overs land on the loop a little later."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not check():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.01)
    return True


async def settled(read: Callable[[], int], within: float = 2.0) -> int:
    """A value (a count) once it stopped changing for 0.4 s (longer than the front's
    interval between two merges of its counts): extra, late observations would show up as
    a count that is too high."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    value = read()
    while loop.time() < end:
        await asyncio.sleep(0.4)
        again = read()
        if again == value:
            return value
        value = again
    return value


# -- the client side -----------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    complete: bool

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == PROBLEM, self
        data: dict[str, Any] = json.loads(self.body)
        assert data["status"] == self.status
        return data


def get(path: str, headers: Sequence[tuple[str, str]] = (), method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: gw", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    head = get(path, [*headers, ("content-length", str(len(body)))], method="POST")
    return head + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class Client:
    """One client connection to the gateway, on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, narrow: bool = False) -> Client:
        """``narrow``: a small receive buffer and a network-sized MSS. Over loopback the
        kernel would otherwise buffer megabytes for a slow reader (a 64 KiB MSS lets the
        gateway's send buffer grow to MiBs) and the front's own back-pressure (pausing the
        upstream) would never be exercised."""
        if not narrow:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), WAIT)
            return cls(reader, writer)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
            sock.setblocking(False)
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (HOST, port)), WAIT
            )
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer)

    async def request(self, data: bytes) -> Resp:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)
        return await self.response()

    async def response(self) -> Resp:
        """One response; ``complete`` is False when the connection ended inside its body."""
        reader = self.reader
        async with asyncio.timeout(WAIT):
            status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if status in (204, 304):
                return Resp(status, headers, b"", True)
            if "content-length" in headers:
                try:
                    body = await reader.readexactly(int(headers["content-length"]))
                except asyncio.IncompleteReadError as exc:
                    return Resp(status, headers, exc.partial, False)
                except ConnectionError:
                    return Resp(status, headers, b"", False)
                return Resp(status, headers, body, True)
            if "chunked" in headers.get("transfer-encoding", ""):
                body, complete = await _read_chunked(reader)
                return Resp(status, headers, body, complete)
            return Resp(status, headers, await self.rest(), True)

    async def rest(self) -> bytes:
        """Everything until the gateway ends the connection (EOF or reset)."""
        out = bytearray()
        async with asyncio.timeout(WAIT):
            for _ in range(1_000_000):  # bounded by the data
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    break
                if not data:
                    break
                out += data
        return bytes(out)

    async def ended(self) -> bool:
        """Did the gateway end the connection (within WAIT) without sending anything more?"""
        try:
            return await self.rest() == b""
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1)


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    body = bytearray()
    try:
        for _ in range(1_000_000):  # bounded by the data
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                for _ in range(100):  # trailer fields, then the blank line
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        return bytes(body), True
                return bytes(body), False
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                return bytes(body), False
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    return bytes(body), False


async def one_get(port: int, path: str, headers: Sequence[tuple[str, str]] = ()) -> Resp:
    client = await Client.open(port)
    try:
        return await client.request(get(path, headers))
    finally:
        await client.close()


# -- 1. the front really serves ------------------------------------------------------------------


async def test_the_front_serves_plain_gets_and_hands_off_the_rest() -> None:
    """Plain GETs never reach Python (the whole point of the front); a request it does not
    handle (x-forwarded-for must be checked against trusted proxies: Python's job) is
    handed over with the bytes already read and still answered."""
    n = 20
    async with (
        upstream(says(b"hello")) as up,
        gateway(make_config([route("api", "/api", up.url)])) as svc,
    ):
        keep = await Client.open(svc.port)
        for i in range(n // 2):  # keep-alive
            resp = await keep.request(get(f"/api/keep/{i}"))
            assert (resp.status, resp.body) == (200, b"hello")
        await keep.close()
        for i in range(n - n // 2):  # a connection each
            resp = await one_get(svc.port, f"/api/new/{i}")
            assert (resp.status, resp.body) == (200, b"hello")
        before = stats(svc)
        assert before["served"] >= n
        assert before["handed_off"] == 0
        resp = await one_get(svc.port, "/api/forwarded", [("x-forwarded-for", "203.0.113.9")])
        assert (resp.status, resp.body) == (200, b"hello")
        after = stats(svc)
        assert after["handed_off"] == before["handed_off"] + 1
        assert after["served"] == before["served"]  # Python answered that one
        assert len(up.seen) == n + 1


# -- 2. metrics ----------------------------------------------------------------------------------


async def test_front_requests_are_counted_exactly_in_the_route_quartet() -> None:
    """SLOs and dashboards read the quartet: the front's answers must land there once each
    (none lost, none doubled), 5xx as errors, the handed-off one counted by Python once."""
    n = 25
    async with upstream(says(b"ok")) as up:
        dead = await Upstream(says(b"")).start()
        dead_url = dead.url
        await dead.close()  # nobody listens there any more: connections are refused
        routes = [route("api", "/api", up.url), route("refused", "/refused", dead_url)]
        async with gateway(make_config(routes)) as svc:
            client = await Client.open(svc.port)
            for i in range(n):
                assert (await client.request(get(f"/api/{i}"))).status == 200
            await client.close()
            api = svc.metrics.target("route", "api")
            assert await until(lambda: api.requests >= n)
            assert await settled(lambda: api.requests) == n
            snap = quartet(svc, "api")
            assert (snap.count, snap.errors) == (n, 0)
            assert snap.p50 is not None  # latencies were observed, not just counted
            assert stats(svc)["served"] >= n and stats(svc)["handed_off"] == 0

            for _ in range(3):
                resp = await one_get(svc.port, "/refused/x")
                assert resp.status == 502
                resp.problem()
            refused = svc.metrics.target("route", "refused")
            assert await until(lambda: refused.requests >= 3)
            assert await settled(lambda: refused.requests) == 3
            snap = quartet(svc, "refused")
            assert (snap.count, snap.errors) == (3, 3)

            resp = await one_get(svc.port, "/api/fwd", [("x-forwarded-for", "203.0.113.9")])
            assert resp.status == 200
            assert await until(lambda: api.requests >= n + 1)
            assert await settled(lambda: api.requests) == n + 1
            assert quartet(svc, "api").errors == 0


# -- 3. hot reload -------------------------------------------------------------------------------


async def test_reload_switches_new_and_kept_alive_connections() -> None:
    """The front takes its table per request, so a reload reaches a connection that was
    opened before it at its very next request (no stale routing on keep-alive clients)."""
    async with (
        upstream(says(b"one")) as first,
        upstream(says(b"two")) as second,
        gateway(make_config([route("api", "/api", first.url)])) as svc,
    ):
        kept = await Client.open(svc.port)
        assert (await kept.request(get("/api/a"))).body == b"one"
        assert await svc.reload(make_config([route("api", "/api", second.url)])) == 1
        assert (await one_get(svc.port, "/api/b")).body == b"two"
        resp = await kept.request(get("/api/c"))
        assert (resp.status, resp.body) == (200, b"two")
        await kept.close()
        assert [s.target for s in first.seen] == [b"/api/a"]
        assert sorted(s.target for s in second.seen) == [b"/api/b", b"/api/c"]
        assert stats(svc)["served"] == 3 and stats(svc)["handed_off"] == 0


async def test_a_request_in_flight_across_a_reload_is_counted_on_its_own_route() -> None:
    """A slow request started before a reload that reorders the routes: its observation
    must go to the route that served it (Python's server keeps the route it started with;
    an index into the *current* table would credit the other route)."""

    async def slow(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.4)
        writer.write(response(b"slow"))
        await writer.drain()
        return True

    async with upstream(slow) as up_slow, upstream(says(b"fast")) as up_fast:
        before = [route("slow", "/slow", up_slow.url), route("api", "/api", up_fast.url)]
        after = [route("api", "/api", up_fast.url), route("slow", "/slow", up_slow.url)]
        async with gateway(make_config(before)) as svc:
            client = await Client.open(svc.port)
            client.writer.write(get("/slow/x"))
            assert await until(lambda: len(up_slow.seen) == 1)
            await svc.reload(make_config(after))
            resp = await client.response()
            assert (resp.status, resp.body) == (200, b"slow")
            await client.close()
            slow_route = svc.metrics.target("route", "slow")
            assert await until(lambda: slow_route.requests >= 1)
            await settled(lambda: slow_route.requests)
            assert (quartet(svc, "slow").count, quartet(svc, "api").count) == (1, 0)


# -- 4. per-client connection limit --------------------------------------------------------------


async def _refused_503(port: int) -> None:
    """A connection over the per-client limit: 503 problem+json, retry-after 1, closed."""
    client = await Client.open(port)
    try:
        resp = await client.response()
        assert resp.status == 503
        assert resp.headers.get("retry-after") == "1"
        resp.problem()
        assert await client.ended()
    finally:
        await client.close()


async def test_per_client_limit_on_idle_connections() -> None:
    """The front counts connections per address at accept: the one over the limit gets
    Python's 503 and a close; a slot freed by a close is usable again."""
    limits = {"max_connections_per_client": 3}
    async with (
        upstream(says(b"ok")) as up,
        gateway(make_config([route("api", "/api", up.url)], limits=limits)) as svc,
    ):
        idle = [await Client.open(svc.port) for _ in range(3)]
        assert await until(lambda: stats(svc)["clients"] == 3)
        await _refused_503(svc.port)
        await idle.pop().close()
        assert await until(lambda: stats(svc)["clients"] == 2)
        fresh = await Client.open(svc.port)
        resp = await fresh.request(get("/api/after"))
        assert (resp.status, resp.body) == (200, b"ok")
        await _refused_503(svc.port)  # 3 again: the limit still holds
        for client in [*idle, fresh]:
            await client.close()


async def test_per_client_limit_holds_for_connections_handed_to_python() -> None:
    """A connection handed to Python keeps its slot (the front counts it until Python tells
    it the connection closed); all slots come back when they close."""
    limits = {"max_connections_per_client": 3}
    xff = [("x-forwarded-for", "203.0.113.9")]
    async with (
        upstream(says(b"ok")) as up,
        gateway(make_config([route("api", "/api", up.url)], limits=limits)) as svc,
    ):
        held = [await Client.open(svc.port) for _ in range(3)]
        for client in held:
            assert (await client.request(get("/api/py", xff))).status == 200
        assert stats(svc)["handed_off"] == 3
        assert svc.server is not None
        assert await until(lambda: svc.server is not None and svc.server.connections == 3)
        await _refused_503(svc.port)
        for client in held:
            await client.close()
        assert await until(lambda: svc.server is not None and svc.server.connections == 0)
        again = [await Client.open(svc.port) for _ in range(3)]  # all three slots are back
        for client in again:
            resp = await client.request(get("/api/again"))
            assert (resp.status, resp.body) == (200, b"ok")
        for client in again:
            await client.close()


# -- 5. stale pooled upstream connections --------------------------------------------------------


def closes_after_answering(text: bytes) -> Answer:
    """Answers without ``connection: close`` (so the gateway pools the connection), then
    closes it: the pooled connection is stale by the next request."""

    async def answer(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(response(text + b" " + seen.method))
        await writer.drain()
        return False

    return answer


async def test_a_pooled_connection_closed_while_idle_is_not_used() -> None:
    """A pooled connection the upstream closed while idle is dropped when taken (as the
    Python pool notices connection_lost): the GET goes out once, on a fresh connection."""
    async with (
        upstream(closes_after_answering(b"fresh")) as up,
        gateway(make_config([route("api", "/api", up.url)])) as svc,
    ):
        client = await Client.open(svc.port)
        assert (await client.request(get("/api/1"))).status == 200
        await asyncio.sleep(0.1)  # the upstream's FIN reaches the pooled connection
        resp = await client.request(get("/api/2"))
        assert (resp.status, resp.body) == (200, b"fresh GET")
        assert stats(svc)["handed_off"] == 0
        assert [s.target for s in up.seen] == [b"/api/1", b"/api/2"]
        assert up.accepted == 2
        await client.close()
        api = svc.metrics.target("route", "api")
        assert await until(lambda: api.requests >= 2)
        assert await settled(lambda: api.requests) == 2


async def _post_after_stale_pool(fast_path: bool) -> tuple[Resp, list[bytes]]:
    async with (
        upstream(closes_after_answering(b"fresh")) as up,
        gateway(make_config([route("api", "/api", up.url)], fast_path=fast_path)) as svc,
    ):
        client = await Client.open(svc.port)
        assert (await client.request(get("/api/1"))).status == 200
        await asyncio.sleep(0.1)  # the upstream's FIN reaches the pooled connection
        resp = await client.request(post("/api/2", b"payload"))
        await client.close()
        if fast_path:
            assert stats(svc)["served"] == 2 and stats(svc)["handed_off"] == 0
        return resp, [s.method for s in up.seen]


async def test_the_python_path_with_a_stale_pooled_connection_and_a_post() -> None:
    """The reference for the next test: Python's pool notices, when it takes a pooled
    connection, that the upstream closed it while idle, so the POST goes out (once) on a
    fresh connection and succeeds."""
    resp, methods = await _post_after_stale_pool(fast_path=False)
    assert (resp.status, resp.body) == (200, b"fresh POST")
    assert methods == [b"GET", b"POST"]


async def test_a_post_after_a_stale_pooled_connection_matches_python() -> None:
    """Same situation, fast path: the client must get what Python gives (see above)."""
    resp, methods = await _post_after_stale_pool(fast_path=True)
    assert methods.count(b"POST") <= 1  # never twice, whatever else happens
    assert (resp.status, resp.body) == (200, b"fresh POST")
    assert methods == [b"GET", b"POST"]


def drops_the_second_request() -> Answer:
    """Answers the first request of a connection and keeps it; reads the second and closes
    without answering: the request may have been acted on."""

    async def answer(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if seen.nth > 1:
            return False
        writer.write(response(b"first " + seen.method))
        await writer.drain()
        return True

    return answer


@pytest.mark.parametrize("fast_path", [False, True], ids=["python", "fast"])
async def test_a_post_lost_on_a_reused_connection_is_not_resent(fast_path: bool) -> None:
    """The upstream got the POST and closed without an answer: resending could do the
    work twice, so the client gets 502 and the upstream saw the POST once (a GET in the
    same situation is resent)."""
    async with upstream(drops_the_second_request()) as up:
        config = make_config([route("api", "/api", up.url)], fast_path=fast_path)
        async with gateway(config) as svc:
            client = await Client.open(svc.port)
            assert (await client.request(get("/api/1"))).status == 200
            resp = await client.request(post("/api/2", b"payload"))
            assert resp.status == 502
            assert "unavailable" in resp.problem()["detail"]
            assert [s.method for s in up.seen] == [b"GET", b"POST"]
            await client.close()
            client = await Client.open(svc.port)
            assert (await client.request(get("/api/3"))).status == 200  # pooled again
            resp = await client.request(get("/api/4"))
            assert (resp.status, resp.body) == (200, b"first GET")
            assert [s.target for s in up.seen][2:] == [b"/api/3", b"/api/4", b"/api/4"]
            await client.close()
            if fast_path:
                assert stats(svc)["upstream_resent"] >= 1
                assert stats(svc)["handed_off"] == 0


# -- plugins applied by the front -----------------------------------------------------------------


async def test_plugin_routes_are_served_by_the_front_and_refusals_by_python() -> None:
    """request-id + key-auth + local rate-limit run in the front: good keys are served there
    and share the limit with Python; a missing key and the request over the limit are
    handed to Python, which answers 401 and 429."""
    async with upstream(says(b"ok")) as up:
        plugged = route("api", "/api", up.url)
        plugged["plugins"] = [
            {"name": "request-id"},
            {"name": "key-auth"},
            {"name": "rate-limit", "config": {"rate": 3, "period": "60s"}},
        ]
        config = make_config([plugged])
        config = config.model_copy(
            update={
                "consumers": SampanConfig.model_validate(
                    {"consumers": [{"username": "pos", "key_auth": [{"key": "k-1"}]}]}
                ).consumers
            }
        )
        async with gateway(config) as svc:
            client = await Client.open(svc.port)
            keyed = [("apikey", "k-1")]
            for n in range(3):
                resp = await client.request(get(f"/api/{n}", keyed))
                assert resp.status == 200
                assert resp.headers["ratelimit"] == f'"default";r={2 - n};t={20 * (n + 1)}'
            assert stats(svc)["served"] == 3
            assert stats(svc)["handed_off"] == 0
            assert all(b"apikey" not in s.head.lower() for s in up.seen)
            resp = await client.request(get("/api/4", keyed))
            assert resp.status == 429  # Python, on the same buckets
            assert stats(svc)["handed_off"] == 1
            await client.close()
            client = await Client.open(svc.port)
            assert (await client.request(get("/api/5"))).status == 401
            await client.close()
            assert len(up.seen) == 3


# -- 6. drain ------------------------------------------------------------------------------------


async def test_stop_drains_a_request_in_flight_and_takes_no_new_ones() -> None:
    """A rolling restart must not cut answers: the request in flight completes (and says
    the connection closes), nothing new is accepted, and stop() does not wait for the
    drain timeout when nothing is left."""

    async def slow(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.5)
        writer.write(response(b"late but whole"))
        await writer.drain()
        return True

    async with upstream(slow) as up:
        svc = GatewayService(
            make_config([route("api", "/api", up.url)], drain_timeout=10.0), Metrics(), bus=None
        )
        await svc.start(port=0)
        stopped = False
        try:
            port = svc.port
            front(svc)  # the compiled front serves this gateway
            client = await Client.open(port)
            client.writer.write(get("/api/slow"))
            assert await until(lambda: len(up.seen) == 1)
            started = time.monotonic()
            stop = asyncio.create_task(svc.stop())
            await asyncio.sleep(0.1)
            late: Client | None = None
            with contextlib.suppress(OSError, TimeoutError):
                late = await Client.open(port)
            if late is not None:  # the listener's backlog took it: no answer must come
                with contextlib.suppress(OSError):
                    late.writer.write(get("/api/late"))
            resp = await client.response()
            assert (resp.status, resp.body) == (200, b"late but whole")
            assert resp.headers.get("connection") == "close"
            assert await client.ended()
            await asyncio.wait_for(stop, WAIT)
            stopped = True
            assert time.monotonic() - started < 2.0
            if late is not None:
                assert await late.ended(), "a connection made after stop() began was answered"
                await late.close()
            await client.close()
            assert [s.target for s in up.seen] == [b"/api/slow"]
        finally:
            if not stopped:
                await asyncio.wait_for(svc.stop(), WAIT)


# -- 7. upstream timeouts ------------------------------------------------------------------------


async def test_read_timeout_and_refused_connect_through_the_front() -> None:
    """The front keeps the route's timeouts itself: a silent upstream is a 504 in about
    read_timeout, a refused connect a 502, both as problem+json, both served by the front."""

    async def silent(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        await reader.read()  # until the gateway gives up and closes
        return False

    async with upstream(silent) as up:
        dead = await Upstream(says(b"")).start()
        dead_url = dead.url
        await dead.close()
        routes = [
            route("slow", "/slow", up.url, read_timeout=0.3),
            route("refused", "/refused", dead_url, connect_timeout=1),
        ]
        async with gateway(make_config(routes)) as svc:
            started = time.monotonic()
            resp = await one_get(svc.port, "/slow/x")
            elapsed = time.monotonic() - started
            assert resp.status == 504
            assert "did not answer in time" in resp.problem()["detail"]
            assert 0.25 <= elapsed < 1.0
            resp = await one_get(svc.port, "/refused/x")
            assert resp.status == 502
            assert "unavailable" in resp.problem()["detail"]
            assert stats(svc)["served"] == 2 and stats(svc)["handed_off"] == 0


# -- 8. large responses under back-pressure ------------------------------------------------------

FIVE_MIB: Final = bytes(range(251)) * (5 * 1024 * 1024 // 251 + 1)  # a prime period: no aliasing
FIVE_MIB_BODY: Final = FIVE_MIB[: 5 * 1024 * 1024]
TWO_MIB: Final = FIVE_MIB[7 : 7 + 2 * 1024 * 1024]


async def _read_slowly(
    client: Client, done: Callable[[bytes], bool], *, every: float = 0.005
) -> bytes:
    """Read 64 KiB every ``every`` seconds until ``done`` or the end of the connection (a
    client much slower than the upstream)."""
    out = bytearray()
    async with asyncio.timeout(WAIT):
        for _ in range(100_000):  # bounded by the data
            try:
                data = await client.reader.read(65536)
            except ConnectionError:
                break
            if not data:
                break
            out += data
            if done(bytes(out)):
                break
            await asyncio.sleep(every)
    return bytes(out)


def _split_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    end = data.index(b"\r\n\r\n") + 4
    status, headers = _parse_head(data[:end])
    return status, headers, data[end:]


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = bytearray()
    pos = 0
    for _ in range(1_000_000):  # bounded by the data
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(body), False
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            return bytes(body), data[pos:] == b"\r\n"
        if len(data) < pos + size + 2:
            return bytes(body), False
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2
    return bytes(body), False


async def test_a_large_response_survives_a_slow_client() -> None:
    """5 MiB with Content-Length to a client reading 64 KiB every 5 ms: the front must stop
    reading the upstream and resume without losing or reordering a byte."""

    async def big(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        data = response(FIVE_MIB_BODY, headers=[(b"content-type", b"application/octet-stream")])
        for lo in range(0, len(data), 256 * 1024):  # over time, so reading pauses and resumes
            writer.write(data[lo : lo + 256 * 1024])
            await writer.drain()
            await asyncio.sleep(0.002)
        return True

    async with upstream(big) as up, gateway(make_config([route("api", "/api", up.url)])) as svc:
        client = await Client.open(svc.port, narrow=True)
        client.writer.write(get("/api/big"))
        expected = len(FIVE_MIB_BODY)

        def whole(data: bytes) -> bool:
            end = data.find(b"\r\n\r\n")
            return end >= 0 and len(data) - end - 4 >= expected

        status, headers, body = _split_head(await _read_slowly(client, whole))
        assert status == 200
        assert headers["content-length"] == str(expected)
        assert len(body) == expected and body == FIVE_MIB_BODY
        assert (await client.request(get("/api/again"))).status == 200  # still in step
        await client.close()
        assert stats(svc)["served"] == 2 and stats(svc)["handed_off"] == 0


async def test_a_chunked_response_in_100_pieces_survives_a_slow_client() -> None:
    """2 MiB the upstream writes as 100 chunks (re-chunked by the front): same bytes."""
    cuts = [len(TWO_MIB) * i // 100 for i in range(101)]

    async def chunked(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for lo, hi in itertools.pairwise(cuts):
            writer.write(b"%x\r\n" % (hi - lo) + TWO_MIB[lo:hi] + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async with upstream(chunked) as up, gateway(make_config([route("api", "/api", up.url)])) as svc:
        client = await Client.open(svc.port, narrow=True)
        client.writer.write(get("/api/chunked"))

        def whole(data: bytes) -> bool:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return False
            length = _parse_head(data[: end + 4])[1].get("content-length")
            if length is not None:  # arrived whole with the head: relayed with a length
                return len(data) - end - 4 >= int(length)
            return data.endswith(b"\r\n0\r\n\r\n")

        status, headers, rest = _split_head(await _read_slowly(client, whole))
        assert status == 200
        if headers.get("transfer-encoding") == "chunked":
            body, complete = _dechunk(rest)
            assert complete
        else:
            body = rest
        assert len(body) == len(TWO_MIB) and body == TWO_MIB
        assert (await client.request(get("/api/again"))).status == 200
        await client.close()
        assert stats(svc)["served"] == 2 and stats(svc)["handed_off"] == 0


BACKLOG: Final = 3 * 1024 * 1024  # what the upstream sends at once, before a short pause
PAUSED_BODY: Final = FIVE_MIB_BODY[: BACKLOG + 65536]


@pytest.mark.parametrize(
    "fast_path",
    [
        pytest.param(False, id="python"),
        pytest.param(True, id="fast"),
    ],
)
async def test_a_slow_client_does_not_count_against_the_upstream_read_timeout(
    fast_path: bool,
) -> None:
    """read_timeout is the upstream's allowance: while the gateway itself stops reading
    because the client lags (back-pressure), the upstream cannot be late. A body of 3 MiB
    and then, 50 ms later, 64 KiB more, to a client reading 64 KiB every 20 ms through a
    narrow socket, with read_timeout 0.25 s: it must arrive whole (it does in Python)."""

    async def paused(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(PAUSED_BODY))
        writer.write(PAUSED_BODY[:BACKLOG])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(PAUSED_BODY[BACKLOG:])
        await writer.drain()
        return True

    async with upstream(paused) as up:
        routes = [route("api", "/api", up.url, read_timeout=0.25)]
        async with gateway(make_config(routes, fast_path=fast_path)) as svc:
            client = await Client.open(svc.port, narrow=True)
            client.writer.write(get("/api/paused"))
            expected = len(PAUSED_BODY)

            def whole(data: bytes) -> bool:
                end = data.find(b"\r\n\r\n")
                return end >= 0 and len(data) - end - 4 >= expected

            try:
                data = await _read_slowly(client, whole, every=0.02)
            finally:
                await client.close()
            status, _, body = _split_head(data)
            assert status == 200
            assert len(body) == expected, f"cut after {len(body)} of {expected} body bytes"
            assert body == PAUSED_BODY


# -- 9. upstream garbage -------------------------------------------------------------------------


async def test_an_invalid_response_head_is_a_502() -> None:
    """A Content-Length that is not a number cannot be relayed: 502 invalid response."""

    async def garbage(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n")
        await writer.drain()
        return False

    async with upstream(garbage) as up, gateway(make_config([route("api", "/api", up.url)])) as svc:
        resp = await one_get(svc.port, "/api/x")
        assert resp.status == 502
        assert "invalid response" in resp.problem()["detail"]
        assert stats(svc)["served"] == 1


async def test_an_upstream_cut_mid_body_cuts_the_client() -> None:
    """Once the head went out a failure cannot become a 502: the client's connection is
    cut, so it can tell the body is incomplete (never a short body that looks whole)."""

    async def cut(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        return False

    async with upstream(cut) as up, gateway(make_config([route("api", "/api", up.url)])) as svc:
        client = await Client.open(svc.port)
        resp = await client.request(get("/api/x"))
        assert resp.status == 200
        assert not resp.complete
        assert len(resp.body) < 1000
        assert resp.body == b"x" * len(resp.body)
        assert await client.ended()
        await client.close()
        assert stats(svc)["served"] == 1


def exactly(total: int) -> bytes:
    """A complete ``connection: close`` answer of exactly ``total`` bytes, head included."""
    head = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
    n = total - len(head % total)
    for _ in range(3):  # the digits of n change the head's length
        n = total - len(head % n)
    data = head % n + b"z" * n
    assert len(data) == total
    return data


# An upstream in its own process (so it runs while this process holds the GIL): for each
# connection it reads the request head, then makes the gateway's front ask Python's router
# about a path it has not seen (a request from a second connection), waits 50 ms, sends the
# answer from the file in argv[1] and its FIN at once, and reads until the gateway closes.
CLOSING_UPSTREAM: Final = r"""
import socket, sys, time
data = open(sys.argv[1], "rb").read()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
gateway = int(sys.stdin.readline())
for n in range(1000):
    conn, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            break
        head += chunk
    other = socket.create_connection(("127.0.0.1", gateway))
    other.sendall(b"GET /elsewhere/%d HTTP/1.1\r\nhost: gw\r\n\r\n" % n)
    time.sleep(0.05)
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(2)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()
    other.close()
"""


def hold_the_gil(seconds: float) -> None:
    """Keep this thread running Python (no I/O) with a long switch interval: another
    thread that wants the GIL (the front asking the router) waits all that time."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.parametrize(
    "fast_path",
    [
        pytest.param(False, id="python"),
        pytest.param(True, id="fast"),
    ],
)
async def test_a_whole_answer_followed_by_the_upstreams_close_is_relayed(
    fast_path: bool, tmp_path: Path
) -> None:
    """An upstream that answers with ``connection: close`` and closes at once (HTTP/1.0
    style servers, CGI) is normal: the close must not spoil an answer that arrived whole.
    The answer is exactly 64 KiB (the front's recv() size) and is in the gateway's socket,
    FIN included, before the front reads it: the front is then waiting for the GIL (on the
    router, for another client), as it does whenever Python's loop is busy."""
    data = exactly(65536)
    answer_file = tmp_path / "answer"
    answer_file.write_bytes(data)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLOSING_UPSTREAM,
        str(answer_file),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), WAIT))
        routes = [route("api", "/api", f"http://{HOST}:{port}")]
        async with gateway(make_config(routes, fast_path=fast_path)) as svc:
            proc.stdin.write(b"%d\n" % svc.port)
            await proc.stdin.drain()
            await one_get(svc.port, "/api/x")  # the front now knows /api/x: no GIL for it
            for _ in range(2):
                client = await Client.open(svc.port)
                client.writer.write(get("/api/x"))  # sent now: writing releases the GIL
                hold_the_gil(0.4)
                resp = await client.response()
                await client.close()
                assert resp.status == 200, resp.body[:200]
                assert resp.complete and resp.body == data[data.index(b"\r\n\r\n") + 4 :]
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), WAIT)


# -- 10. regressions from a review of the front --------------------------------------------------


async def _send_and_reset(port: int, data: bytes, when: str) -> None:
    """Connect, send ``data`` and reset the connection (SO_LINGER 0): ``now``, ``soon``
    (10 ms later: about when the front hands it over) or ``answered`` (once the answer's
    first bytes arrived: Python adopted it)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), WAIT)
        await asyncio.wait_for(loop.sock_sendall(sock, data), WAIT)
        if when == "soon":
            await asyncio.sleep(0.01)
        elif when == "answered":
            assert await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


async def _answered_404(port: int) -> Client:
    """A connection whose unrouted request Python answers 404 (not the per-client 503): a
    503 is retried for a while, as the slots of closed connections come back a little
    later. The connection is returned open, holding its slot."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT
    while True:
        client = await Client.open(port)
        resp = await client.request(get("/not-routed"))
        if resp.status == 404:
            resp.problem()
            return client
        await client.close()
        assert resp.status == 503, resp
        assert loop.time() < end, "the per-client slots never came back"
        await asyncio.sleep(0.05)


async def test_connections_reset_around_their_hand_over_give_their_slots_back() -> None:
    """A connection the front hands to Python (an unrouted path) and the client resets, just
    before or after Python adopts it, frees its per-client slot (the front's count was once
    released under the peer's address, gone after a reset: the slot leaked, and after a few
    resets the client got 503 for good)."""
    limits = {"max_connections_per_client": 2}
    async with (
        upstream(says(b"ok")) as up,
        gateway(make_config([route("api", "/api", up.url)], limits=limits)) as svc,
    ):
        for _ in range(4):
            for when in ("now", "soon", "answered"):
                await _send_and_reset(svc.port, get("/not-routed"), when)
        assert stats(svc)["handed_off"] >= 4
        held = [await _answered_404(svc.port), await _answered_404(svc.port)]  # both slots
        await _refused_503(svc.port)  # and the limit still holds
        for client in held:
            await client.close()


async def test_a_resend_on_another_pooled_connection_sends_the_whole_request() -> None:
    """Two pooled upstream connections; the upstream closes the one that gets the next GET
    without answering it: the front resends the GET on the other pooled connection, from
    its first byte (it once resent from where the first attempt had stopped, i.e. nothing,
    and the client got a 504 after read_timeout)."""
    dropped: list[int] = []

    async def answer(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if seen.nth == 1:
            await asyncio.sleep(0.2)  # both first requests in flight: two connections
        elif not dropped:
            dropped.append(seen.nth)  # closed as the request arrives: not answered
            return False
        writer.write(response(b"ok " + seen.target))
        await writer.drain()
        return True

    async with upstream(answer) as up:
        routes = [route("api", "/api", up.url, read_timeout=1.5)]
        async with gateway(make_config(routes)) as svc:
            first = await asyncio.gather(one_get(svc.port, "/api/1"), one_get(svc.port, "/api/1b"))
            assert [resp.status for resp in first] == [200, 200]
            assert up.accepted == 2
            await asyncio.sleep(0.1)  # both back in the pool
            started = time.monotonic()
            resp = await one_get(svc.port, "/api/2")
            elapsed = time.monotonic() - started
            assert (resp.status, resp.body) == (200, b"ok /api/2"), resp
            assert elapsed < 1.0, f"answered after {elapsed:.2f} s"
            assert up.accepted == 2  # the resend went to the other pooled connection
            tries = [s for s in up.seen if s.target == b"/api/2"]
            assert len(tries) == 2 and tries[0].head == tries[1].head
            assert [s.nth for s in tries] == [2, 2]
            assert stats(svc)["upstream_resent"] == 1
            assert stats(svc)["handed_off"] == 0


PIECE: Final = 32 * 1024


def _answers(data: bytes) -> list[tuple[int, bytes]]:
    """The complete Content-Length framed answers at the start of ``data`` (status, body)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    for _ in range(1_000_000):  # bounded by the data
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        status, headers = _parse_head(data[pos : end + 4])
        length = int(headers["content-length"])
        if len(data) < end + 4 + length:
            break
        out.append((status, data[end + 4 : end + 4 + length]))
        pos = end + 4 + length
    return out


async def test_a_client_that_pipelines_and_does_not_read_is_not_served_without_bound() -> None:
    """2,000 pipelined GETs for 32 KiB answers from a client that does not read: the front
    stops reading the client (and asking the upstream) while answers wait for it, instead
    of buffering 64 MiB; once the client reads, every answer comes, whole and in order."""

    async def numbered(
        seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(response(seen.target.ljust(PIECE, b".")))
        await writer.drain()
        return True

    n = 2000
    requests = b"".join(get(f"/api/{i}") for i in range(n))
    async with (
        upstream(numbered) as up,
        gateway(make_config([route("api", "/api", up.url)])) as svc,
    ):
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, svc.port)), WAIT)
            sent = 0
            end = loop.time() + 1.0
            while sent < len(requests) and loop.time() < end:  # write what goes in 1 s
                try:
                    sent += sock.send(requests[sent : sent + 65536])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            whole = requests[:sent].count(b"\r\n\r\n")
            await asyncio.sleep(1.0)  # not reading
            asked = len(up.seen)
            print(f"{whole} requests written, {asked} reached the upstream while unread")
            assert asked < 400
            data = bytearray()
            end = loop.time() + 4 * WAIT  # 64 MiB through a 4 KiB window: slow VMs need time
            while loop.time() < end:  # until idle for 0.5 s or closed
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 0.5)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
            print(f"{len(data)} bytes read")
        finally:
            sock.close()
        answers = _answers(bytes(data))
        assert len(answers) == len(up.seen) == whole
        for i, (status, body) in enumerate(answers):
            assert (status, body) == (200, f"/api/{i}".encode().ljust(PIECE, b".")), i
        assert stats(svc)["handed_off"] == 0


def _field_names(head: bytes) -> list[bytes]:
    return sorted(line.partition(b":")[0].strip().lower() for line in head.split(b"\r\n")[1:-2])


async def _long_connection_header(fast_path: bool) -> tuple[int, str | None, bool, list[bytes]]:
    """A Connection header whose ``x-secret`` and ``close`` come after 650 bytes of other
    tokens: (status, the answer's connection header, did the gateway then close, the field
    names the upstream saw)."""
    filler = ", ".join(f"t{i:03d}" for i in range(110))
    headers = [("x-secret", "1"), ("connection", f"{filler}, x-secret, close")]
    async with upstream(says(b"ok")) as up:
        config = make_config([route("api", "/api", up.url)], fast_path=fast_path)
        async with gateway(config) as svc:
            client = await Client.open(svc.port)
            try:
                resp = await client.request(get("/api/x", headers))
                closed = await client.ended()
            finally:
                await client.close()
            if fast_path:  # the front served it (a hand-over would prove nothing)
                assert stats(svc)["served"] == 1 and stats(svc)["handed_off"] == 0
            assert len(up.seen) == 1
            return (
                resp.status,
                resp.headers.get("connection"),
                closed,
                _field_names(up.seen[0].head),
            )


async def test_connection_tokens_after_512_bytes_are_honoured_as_in_python() -> None:
    """``close`` and a field named in Connection count wherever they are in the header (the
    front once looked at its first 512 bytes only: the field reached the upstream and the
    connection stayed open)."""
    python = await _long_connection_header(fast_path=False)
    fast = await _long_connection_header(fast_path=True)
    status, connection, closed, names = fast
    assert (status, connection, closed) == (200, "close", True)
    assert b"x-secret" not in names and b"connection" not in names
    assert fast == python


async def _refused_during_drain(fast_path: bool) -> None:
    """stop() with a slow request in flight: the listening socket closes as the drain
    begins, so a new client is refused at once (it can go elsewhere) instead of waiting in
    the backlog until the drain ends; the request in flight is still answered."""

    async def slow(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.8)
        writer.write(response(b"late"))
        await writer.drain()
        return True

    async with upstream(slow) as up:
        config = make_config([route("api", "/api", up.url)], fast_path=fast_path, drain_timeout=3)
        svc = GatewayService(config, Metrics(), bus=None)
        await svc.start(port=0)
        stop: asyncio.Task[None] | None = None
        try:
            if fast_path:
                front(svc)
            client = await Client.open(svc.port)
            client.writer.write(get("/api/slow"))
            assert await until(lambda: len(up.seen) == 1)
            stop = asyncio.create_task(svc.stop())
            await asyncio.sleep(0.2)
            assert not stop.done()  # still draining
            started = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                late = await asyncio.wait_for(asyncio.open_connection(HOST, svc.port), 0.5)
                late[1].close()
            assert time.monotonic() - started < 0.5
            resp = await client.response()
            assert (resp.status, resp.body) == (200, b"late")
            assert resp.headers.get("connection") == "close"
            await client.close()
            await asyncio.wait_for(stop, WAIT)
        finally:
            if stop is None:
                stop = asyncio.create_task(svc.stop())
            await asyncio.wait_for(stop, WAIT)


@pytest.mark.parametrize("fast_path", [False, True], ids=["python", "fast"])
async def test_a_new_client_is_refused_at_once_during_the_drain(fast_path: bool) -> None:
    """As Python's server does, the front closes its listening socket when stop() begins (it
    once kept it open until the end: new clients waited in the backlog, then were cut)."""
    await _refused_during_drain(fast_path)


async def test_many_pipelined_requests_to_a_refused_upstream_are_answered_in_order() -> None:
    """2,000 pipelined requests, queued behind a slow one, to a route whose upstream refuses
    connections: each is a 502 of its own, in order (the request id the front echoes tells
    which), and the front goes on serving (it once ran pipelined requests by recursion, one
    stack frame deeper for each)."""

    async def slow(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        writer.write(response(b"slow"))
        await writer.drain()
        return True

    n = 2000
    async with upstream(slow) as up:
        dead = await Upstream(says(b"")).start()
        dead_url = dead.url
        await dead.close()  # nobody listens there any more: connections are refused
        refused = route("refused", "/refused", dead_url)
        refused["plugins"] = [{"name": "request-id"}]
        async with gateway(make_config([route("slow", "/slow", up.url), refused])) as svc:
            client = await Client.open(svc.port)
            client.writer.write(get("/slow/x"))
            assert await until(lambda: len(up.seen) == 1)  # the front is busy with it
            pipelined = [get(f"/refused/{i}", [("x-request-id", f"r-{i}")]) for i in range(n)]
            client.writer.write(b"".join(pipelined))
            resp = await client.response()
            assert (resp.status, resp.body) == (200, b"slow")
            for i in range(n):
                resp = await client.response()
                assert resp.status == 502, (i, resp)
                assert resp.headers.get("x-request-id") == f"r-{i}"
            await client.close()
            assert stats(svc)["running"]
            client = await Client.open(svc.port)
            assert (await client.request(get("/slow/y"))).status == 200
            await client.close()
            assert stats(svc)["served"] == n + 2 and stats(svc)["handed_off"] == 0


async def test_a_request_split_across_writes_stays_with_the_front() -> None:
    """A head in two pieces 50 ms apart (or a pipelined stream cut by a read) is waited for,
    not handed to Python: the front serves it."""
    async with (
        upstream(says(b"ok")) as up,
        gateway(make_config([route("api", "/api", up.url)])) as svc,
    ):
        client = await Client.open(svc.port)
        data = get("/api/split", [("x-a", "1")])
        client.writer.write(data[:20])
        await client.writer.drain()
        await asyncio.sleep(0.05)
        resp = await client.request(data[20:])
        assert resp.status == 200
        assert stats(svc)["served"] == 1
        assert stats(svc)["handed_off"] == 0
        await client.close()


async def test_a_client_that_trickles_its_head_gets_python_408() -> None:
    """Half a head and then nothing: after a short grace the front hands the connection to
    Python, whose header timeout answers 408."""
    async with (
        upstream(says(b"ok")) as up,
        gateway(make_config([route("api", "/api", up.url)], limits={"header_timeout": 0.6})) as svc,
    ):
        client = await Client.open(svc.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        client.writer.write(b"GET /api/slow HTTP/1.1\r\nhost: gw\r\n")
        await client.writer.drain()
        resp = await client.response()
        waited = loop.time() - started
        assert resp.status == 408
        assert 0.5 <= waited < 3.0
        assert stats(svc)["handed_off"] == 1
        assert not up.seen
