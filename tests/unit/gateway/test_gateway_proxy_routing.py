"""Proxy routing: upstream targets (strip-prefix, rewrite, query), round-robin, base paths,
502/504 problem+json, bodies through the proxy."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from test_http_client_fakes import (
    SeenRequest,
    keep_alive,
    read_request,
    response,
    upstream,
)

from sampan.gateway.config import ServiceTarget
from sampan.gateway.proxy import Proxy, encode_path, upstream_target
from sampan.http.body import BytesBody
from sampan.http.client import ConnectionPool
from sampan.http.headers import Headers
from sampan.http.request import Request


def make_request(
    method: str = "GET",
    path: str = "/",
    query: bytes = b"",
    body: object = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Request:
    target = path.encode() + (b"?" + query if query else b"")
    return Request(
        method,
        target,
        path,
        query,
        Headers(headers or [(b"host", b"api.example.vn")]),
        body=body if body is not None else BytesBody(b""),  # type: ignore[arg-type]
        client=("203.0.113.7", 40000),
    )


@pytest.mark.parametrize(
    ("path", "query", "prefix", "strip", "rewrite", "params", "expected"),
    [
        ("/api/orders/7", b"", None, False, None, {}, b"/api/orders/7"),
        ("/api/orders/7", b"a=1&b=%20", "/api", True, None, {}, b"/orders/7?a=1&b=%20"),
        ("/api", b"x", "/api", True, None, {}, b"/?x"),
        ("/apiary", b"", "/api", True, None, {}, b"/apiary"),
        ("/any", b"", "", True, None, {}, b"/any"),  # prefix "/" is reported as ""
        ("/o/7", b"q=1", None, False, "/v2/orders/{id}", {"id": "7"}, b"/v2/orders/7?q=1"),
        ("/o/x", b"", None, False, "/v2/{id}", {"id": "a b/c%"}, b"/v2/a%20b%2Fc%25"),
        ("/o/x", b"", None, False, "/v2/{id}", {"id": ".."}, b"/v2/%2E%2E"),
        ("/f/a/b", b"", None, False, "/files/{rest...}", {"rest": "a/ü/b"}, b"/files/a/%C3%BC/b"),
        ("/f/x", b"", None, False, "/files/{rest...}", {"rest": "a/../b"}, b"/files/a/%2E%2E/b"),
        ("/o/1", b"b=2", None, False, "/v2?src=gw", {}, b"/v2?src=gw&b=2"),
        ("/a%2Fb/%E2%82%AC", b"", None, False, None, {}, b"/a%2Fb/%E2%82%AC"),
    ],
)
def test_upstream_target(
    path: str,
    query: bytes,
    prefix: str | None,
    strip: bool,
    rewrite: str | None,
    params: dict[str, str],
    expected: bytes,
) -> None:
    request = make_request("GET", path, query)
    assert upstream_target(request, prefix, strip, rewrite, params) == expected


def test_upstream_target_missing_param() -> None:
    with pytest.raises(ValueError, match="id"):
        upstream_target(make_request(), None, False, "/v2/{id}", {})


def test_encode_path() -> None:
    assert encode_path("/a b/ü/%zz/%41") == b"/a%20b/%C3%BC/%25zz/%41"
    assert encode_path("/plain/path;x=1") == b"/plain/path;x=1"


async def test_round_robin_over_endpoints_with_base_path() -> None:
    seen_a: list[SeenRequest] = []
    seen_b: list[SeenRequest] = []
    async with (
        upstream(keep_alive(lambda r: response(200, b"A"), seen_a)) as a,
        upstream(keep_alive(lambda r: response(200, b"B"), seen_b)) as b,
    ):
        pool = ConnectionPool()
        try:
            proxy = Proxy(
                ServiceTarget(endpoints=[a.url, b.url + "/base/"]),
                pool,
                route_name="rr",
                trusted_proxies=[],
            )
            bodies = []
            for _ in range(6):
                resp = await proxy(make_request(), upstream_path="/x?y=1")
                bodies.append(resp.body)
            assert bodies == [b"A", b"B"] * 3
            assert [s.target for s in seen_b] == [b"/base/x?y=1"] * 3
            assert [s.target for s in seen_a] == [b"/x?y=1"] * 3
            assert (a.connections, b.connections) == (1, 1)
        finally:
            await pool.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _problem(target: ServiceTarget) -> tuple[int, dict[str, object], Headers]:
    pool = ConnectionPool()
    try:
        proxy = Proxy(target, pool, route_name="payments", trusted_proxies=[])
        resp = await proxy(make_request("GET", "/pay"), upstream_path=b"/pay")
        assert isinstance(resp.body, bytes)
        return resp.status, orjson.loads(resp.body), resp.headers
    finally:
        await pool.close()


async def test_connect_failure_is_502_problem_without_internals() -> None:
    port = _free_port()
    status, body, headers = await _problem(ServiceTarget(endpoints=[f"http://127.0.0.1:{port}"]))
    assert status == 502
    assert headers.get(b"content-type") == b"application/problem+json"
    assert body["status"] == 502 and body["title"] == "Bad Gateway"
    assert body["route"] == "payments"
    assert "payments" in str(body["detail"])
    assert str(port) not in orjson.dumps(body).decode()
    assert "127.0.0.1" not in orjson.dumps(body).decode()


async def test_timeout_is_504_problem() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with upstream(silent) as up:
        status, body, _ = await _problem(ServiceTarget(endpoints=[up.url], read_timeout=0.2))
    assert status == 504
    assert body["title"] == "Gateway Timeout" and body["route"] == "payments"


@pytest.mark.parametrize("answer", [b"", b"garbage\r\n\r\n"], ids=["reset", "protocol"])
async def test_reset_and_garbage_are_502(answer: bytes) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.transport.abort()

    async with upstream(bad) as up:
        status, body, _ = await _problem(ServiceTarget(endpoints=[up.url]))
    assert status == 502 and body["route"] == "payments"


async def test_request_bodies_stream_through() -> None:
    class Streamed:
        length = None

        async def chunks(self) -> AsyncIterator[bytes]:
            for part in (b"one,", b"two,", b"three"):
                yield part

        async def read(self, limit: int | None = None) -> bytes:
            raise AssertionError("the proxy must not buffer the body")

    seen: list[SeenRequest] = []
    async with upstream(keep_alive(lambda r: response(201, r.body), seen)) as up:
        pool = ConnectionPool()
        try:
            proxy = Proxy(
                ServiceTarget(endpoints=[up.url]), pool, route_name="r", trusted_proxies=[]
            )
            resp = await proxy(make_request("POST", "/", body=Streamed()), upstream_path="/")
            assert (resp.status, resp.body) == (201, b"one,two,three")
            assert seen[0].chunked
            resp = await proxy(make_request("PUT", "/", body=BytesBody(b"{}")), upstream_path="/")
            assert resp.body == b"{}"
            assert seen[1].header(b"content-length") == b"2"
            resp = await proxy(make_request("GET", "/"), upstream_path="/")
            assert seen[2].header(b"content-length") is None
        finally:
            await pool.close()


async def test_head_keeps_upstream_content_length() -> None:
    def respond(r: SeenRequest) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 4096\r\netag: x\r\n\r\n"

    async with upstream(keep_alive(respond)) as up:
        pool = ConnectionPool()
        try:
            proxy = Proxy(
                ServiceTarget(endpoints=[up.url]), pool, route_name="r", trusted_proxies=[]
            )
            resp = await proxy(make_request("HEAD", "/"), upstream_path="/")
            assert resp.body == b""
            assert resp.headers.get(b"content-length") == b"4096"
        finally:
            await pool.close()


def test_service_target_without_endpoints_is_refused() -> None:
    with pytest.raises(ValueError, match="mesh"):
        Proxy(
            ServiceTarget(service="billing"), ConnectionPool(), route_name="r", trusted_proxies=[]
        )
