"""Proxy headers: hop-by-hop stripping both ways, forwarded headers trusted vs spoofed, Via,
Host; and ``client_ip``."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from test_http_client_fakes import SeenRequest, keep_alive, response, upstream

from sampan.gateway.config import ServiceTarget
from sampan.gateway.forwarded import TrustedProxies, client_ip, parse_ip
from sampan.gateway.proxy import Proxy
from sampan.http.body import BytesBody
from sampan.http.client import ConnectionPool
from sampan.http.headers import Headers
from sampan.http.request import Request


def make_request(
    method: str = "GET",
    path: str = "/",
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    client: str = "203.0.113.7",
    body: bytes = b"",
    query: bytes = b"",
    scheme: str = "http",
) -> Request:
    target = path.encode() + (b"?" + query if query else b"")
    return Request(
        method,
        target,
        path,
        query,
        Headers(list(headers)),
        body=BytesBody(body),
        client=(client, 40000),
        scheme=scheme,
    )


@pytest.fixture
async def echo_upstream() -> AsyncIterator[tuple[str, list[SeenRequest]]]:
    seen: list[SeenRequest] = []

    def respond(r: SeenRequest) -> bytes:
        return response(
            200,
            b"ok",
            [
                (b"connection", b"keep-alive, x-secret-hop"),
                (b"keep-alive", b"timeout=5"),
                (b"x-secret-hop", b"internal"),
                (b"proxy-authenticate", b"Basic"),
                (b"trailer", b"x-t"),
                (b"upgrade", b"h2c"),
                (b"via", b"1.0 backend"),
                (b"x-app", b"kept"),
            ],
        )

    async with upstream(keep_alive(respond, seen)) as up:
        yield up.url, seen


async def call(
    url: str,
    request: Request,
    *,
    trusted: list[str] | None = None,
    preserve_host: bool = False,
    pool: ConnectionPool | None = None,
) -> tuple[int, Headers, bytes]:
    own = pool is None
    pool = pool or ConnectionPool()
    try:
        proxy = Proxy(
            ServiceTarget(endpoints=[url], preserve_host=preserve_host),
            pool,
            route_name="orders",
            trusted_proxies=trusted or [],
        )
        resp = await proxy(request, upstream_path=request.raw_target)
        body = resp.body
        assert isinstance(body, bytes)
        return resp.status, resp.headers, body
    finally:
        if own:
            await pool.close()


async def test_hop_by_hop_headers_are_stripped_both_ways(
    echo_upstream: tuple[str, list[SeenRequest]],
) -> None:
    url, seen = echo_upstream
    request = make_request(
        "POST",
        "/orders",
        [
            (b"host", b"api.example.vn"),
            (b"connection", b"keep-alive, X-Drop-Me"),
            (b"x-drop-me", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"te", b"trailers"),
            (b"trailer", b"x-t"),
            (b"proxy-authorization", b"Basic Zm9vOmJhcg=="),
            (b"upgrade", b"h2c"),
            (b"transfer-encoding", b"chunked"),
            (b"expect", b"100-continue"),
            (b"authorization", b"Bearer end-to-end"),
            (b"x-custom", b"kept"),
        ],
        body=b"{}",
    )
    status, headers, body = await call(url, request)
    assert (status, body) == (200, b"ok")
    sent = seen[0]
    names = {name for name, _ in sent.headers}
    for hop in (
        b"connection",
        b"x-drop-me",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"proxy-authorization",
        b"upgrade",
        b"transfer-encoding",
        b"expect",
    ):
        assert hop not in names, hop
    assert sent.header(b"authorization") == b"Bearer end-to-end"
    assert sent.header(b"x-custom") == b"kept"
    assert sent.all(b"content-length") == [b"2"]
    assert sent.body == b"{}"
    back = {name for name, _ in headers}
    for hop in (
        b"connection",
        b"keep-alive",
        b"x-secret-hop",
        b"proxy-authenticate",
        b"trailer",
        b"upgrade",
    ):
        assert hop not in back, hop
    assert headers.get(b"x-app") == b"kept"
    assert headers.get(b"via") == b"1.0 backend, 1.1 sampan"
    assert headers.get(b"content-length") is None  # the server frames a bytes body itself


async def test_untrusted_peer_cannot_spoof_forwarded_headers(
    echo_upstream: tuple[str, list[SeenRequest]],
) -> None:
    url, seen = echo_upstream
    spoofed = [
        (b"host", b"api.example.vn"),
        (b"x-forwarded-for", b"10.0.0.1, 127.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"admin.internal"),
        (b"forwarded", b"for=10.0.0.1;proto=https"),
        (b"x-real-ip", b"10.0.0.1"),
        (b"via", b"1.1 client-made"),
    ]
    # No trusted proxies at all, then trusted ones that do not include the peer.
    for trusted in ([], ["10.0.0.0/8", "192.168.0.0/16"]):
        await call(url, make_request("GET", "/", spoofed), trusted=trusted)
    for sent in seen:
        assert sent.all(b"x-forwarded-for") == [b"203.0.113.7"]
        assert sent.all(b"x-forwarded-proto") == [b"http"]
        assert sent.all(b"x-forwarded-host") == [b"api.example.vn"]
        assert sent.all(b"forwarded") == [b"for=203.0.113.7;proto=http;host=api.example.vn"]
        assert sent.all(b"x-real-ip") == [b"203.0.113.7"]
        # Via is end-to-end information, extended (not a trust decision).
        assert sent.all(b"via") == [b"1.1 client-made, 1.1 sampan"]


async def test_trusted_peer_headers_are_extended(
    echo_upstream: tuple[str, list[SeenRequest]],
) -> None:
    url, seen = echo_upstream
    request = make_request(
        "GET",
        "/",
        [
            (b"host", b"api.example.vn"),
            (b"x-forwarded-for", b"198.51.100.9, 10.1.2.3"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"shop.example.vn"),
            (b"forwarded", b'for=198.51.100.9;proto=https, for="[2001:db8::1]"'),
        ],
        client="10.9.9.9",
    )
    await call(url, request, trusted=["10.0.0.0/8"])
    sent = seen[0]
    assert sent.header(b"x-forwarded-for") == b"198.51.100.9, 10.1.2.3, 10.9.9.9"
    assert sent.header(b"x-forwarded-proto") == b"https"
    assert sent.header(b"x-forwarded-host") == b"shop.example.vn"
    assert sent.header(b"forwarded") == (
        b'for=198.51.100.9;proto=https, for="[2001:db8::1]", '
        b"for=10.9.9.9;proto=http;host=shop.example.vn"
    )
    assert sent.header(b"x-real-ip") == b"198.51.100.9"


async def test_host_is_the_upstream_unless_preserved(
    echo_upstream: tuple[str, list[SeenRequest]],
) -> None:
    url, seen = echo_upstream
    request = make_request("GET", "/", [(b"host", b"api.example.vn")])
    await call(url, request)
    await call(url, request, preserve_host=True)
    port = url.rsplit(":", 1)[1].encode()
    assert seen[0].all(b"host") == [b"127.0.0.1:" + port]
    assert seen[1].all(b"host") == [b"api.example.vn"]


async def test_ipv6_client_in_forwarded(echo_upstream: tuple[str, list[SeenRequest]]) -> None:
    url, seen = echo_upstream
    await call(url, make_request("GET", "/", [(b"host", b"h")], client="2001:db8::7"))
    assert seen[0].header(b"forwarded") == b'for="[2001:db8::7]";proto=http;host=h'
    assert seen[0].header(b"x-forwarded-for") == b"2001:db8::7"


def _req(peer: str, xff: list[bytes] | None = None, forwarded: bytes | None = None) -> Request:
    headers = [(b"x-forwarded-for", v) for v in xff or []]
    if forwarded is not None:
        headers.append((b"forwarded", forwarded))
    return make_request("GET", "/", headers, client=peer)


TRUSTED = TrustedProxies(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "forwarded", "expected"),
    [
        # Untrusted peer: the headers are ignored whatever they say.
        ("203.0.113.7", [b"1.1.1.1"], None, "203.0.113.7"),
        # Trusted peer: rightmost untrusted hop.
        ("10.0.0.2", [b"1.1.1.1, 198.51.100.2, 10.0.0.5"], None, "198.51.100.2"),
        # Several header lines are one list.
        ("10.0.0.2", [b"1.1.1.1", b"198.51.100.3"], None, "198.51.100.3"),
        # Every hop trusted: the leftmost is the best we know.
        ("10.0.0.2", [b"10.0.0.9, 10.0.0.8"], None, "10.0.0.9"),
        # Garbage stops the walk at the last trusted hop.
        ("10.0.0.2", [b"1.1.1.1, not-an-ip, 10.0.0.5"], None, "10.0.0.5"),
        # Ports and IPv6 forms.
        ("10.0.0.2", [b"198.51.100.4:5555"], None, "198.51.100.4"),
        ("fd00::1", [b"[2001:db8::5]:443"], None, "2001:db8::5"),
        # Forwarded when there is no X-Forwarded-For.
        ("10.0.0.2", None, b'for="[2001:db8::9]";proto=https, for=10.0.0.3', "2001:db8::9"),
        # IPv4-mapped peers are IPv4.
        ("::ffff:10.0.0.2", [b"198.51.100.5"], None, "198.51.100.5"),
        ("::ffff:203.0.113.9", [b"198.51.100.5"], None, "203.0.113.9"),
        # No header at all from a trusted peer.
        ("10.0.0.2", None, None, "10.0.0.2"),
    ],
)
def test_client_ip(
    peer: str, xff: list[bytes] | None, forwarded: bytes | None, expected: str
) -> None:
    assert client_ip(_req(peer, xff, forwarded), TRUSTED) == expected


def test_client_ip_accepts_network_lists_and_strings() -> None:
    request = _req("10.0.0.2", [b"198.51.100.2"])
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip(request, nets) == "198.51.100.2"
    assert client_ip(request, ["10.0.0.0/8"]) == "198.51.100.2"
    assert client_ip(request, []) == "10.0.0.2"


def test_parse_ip() -> None:
    assert str(parse_ip("[::1]:80")) == "::1"
    assert str(parse_ip('"[fe80::1%eth0]"')) == "fe80::1"
    assert parse_ip("unknown") is None
    assert parse_ip("_hidden") is None


async def test_pooled_connection_is_shared_across_requests(
    echo_upstream: tuple[str, list[SeenRequest]],
) -> None:
    url, _ = echo_upstream
    pool = ConnectionPool()
    try:
        for _ in range(3):
            await call(url, make_request("GET", "/"), pool=pool)
        await asyncio.sleep(0)
        assert pool.stats()["created"] == 1
    finally:
        await pool.close()
