"""Endpoint parsing, IPv6, TLS to a self-signed upstream, and protocol upgrades."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_http_client_fakes import keep_alive, read_request, response, upstream

from sampan.http.client import ConnectionPool, Endpoint, UpstreamError, split_base_url
from sampan.http.headers import Headers

T = {"connect_timeout": 2.0, "read_timeout": 2.0, "write_timeout": 2.0}


@pytest.mark.parametrize(
    ("url", "expected", "authority"),
    [
        ("http://127.0.0.1:8080", Endpoint("127.0.0.1", 8080), "127.0.0.1:8080"),
        ("http://svc.local", Endpoint("svc.local", 80), "svc.local"),
        ("https://api.example.vn", Endpoint("api.example.vn", 443, True), "api.example.vn"),
        ("https://API.example.vn:8443/", Endpoint("api.example.vn", 8443, True), None),
        ("http://[::1]:9000", Endpoint("::1", 9000), "[::1]:9000"),
    ],
)
def test_endpoint_parse(url: str, expected: Endpoint, authority: str | None) -> None:
    got = Endpoint.parse(url)
    assert got == expected
    if authority is not None:
        assert got.authority == authority
    assert got.server_hostname == (got.host if got.tls else None)


@pytest.mark.parametrize(
    "url", ["ftp://x", "http://", "http://u:p@x", "http://x:99999", "http://x/a", "http://x?q"]
)
def test_endpoint_parse_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(url)


def test_split_base_url_keeps_the_path() -> None:
    assert split_base_url("http://x:1/api/v1/") == (Endpoint("x", 1), "/api/v1")


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback")
async def test_ipv6_literal_endpoint() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = await read_request(reader)
        assert seen is not None
        writer.write(response(200, seen.header(b"host") or b""))
        await writer.drain()

    server = await asyncio.start_server(handler, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool()
    try:
        resp = await pool.request(
            Endpoint.parse(f"http://[::1]:{port}"), "GET", b"/", Headers(), **T
        )
        assert await resp.body.read() == b"[::1]:%d" % port
    finally:
        await pool.close()
        server.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sampan-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    yield cert_path, key_path


async def test_tls_upstream_with_pooling(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    server = await asyncio.start_server(
        keep_alive(lambda r: response(200, b"secure " + r.target)), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(ssl_context=client_ctx)
    try:
        endpoint = Endpoint.parse(f"https://127.0.0.1:{port}")
        for i in range(3):
            resp = await pool.request(endpoint, "GET", b"/%d" % i, Headers(), **T)
            assert await resp.body.read() == b"secure /%d" % i
        assert pool.stats()["created"] == 1
        # A certificate the client does not trust is refused (kind=connect).
        strict = ConnectionPool()  # system CAs only
        try:
            with pytest.raises(UpstreamError) as info:
                await strict.request(endpoint, "GET", b"/", Headers(), **T)
        finally:
            await strict.close()
        assert info.value.kind == "connect"
    finally:
        await pool.close()
        server.close()


async def ws_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers an upgrade with 101, sends a greeting, then echoes bytes until EOF."""
    seen = await read_request(reader)
    assert seen is not None
    if seen.header(b"upgrade") != b"websocket":
        writer.write(response(426, b"upgrade required"))
        await writer.drain()
        return
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: fake\r\n\r\nhello"
    )
    await writer.drain()
    for _ in range(10_000):
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()


async def test_upgrade_returns_a_tunnel() -> None:
    async with upstream(ws_echo) as up:
        pool = ConnectionPool()
        try:
            headers = Headers([(b"connection", b"upgrade"), (b"upgrade", b"websocket")])
            resp, tunnel = await pool.upgrade(
                Endpoint("127.0.0.1", up.port), "GET", b"/ws", headers, **T
            )
            assert resp.status == 101
            assert resp.headers.get(b"sec-websocket-accept") == b"fake"
            assert tunnel is not None
            assert await tunnel.read() == b"hello"  # sent right after the 101
            tunnel.write(b"ping")
            await tunnel.drain()
            assert await tunnel.read(1.0) == b"ping"
            tunnel.close()
            assert await tunnel.read(1.0) == b""
            assert pool.stats()["idle"] == 0
        finally:
            await pool.close()


async def test_refused_upgrade_is_an_ordinary_response() -> None:
    async with upstream(ws_echo) as up:
        pool = ConnectionPool()
        try:
            resp, tunnel = await pool.upgrade(
                Endpoint("127.0.0.1", up.port), "GET", b"/ws", Headers(), **T
            )
            assert tunnel is None
            assert resp.status == 426
            assert await resp.body.read() == b"upgrade required"
        finally:
            await pool.close()
