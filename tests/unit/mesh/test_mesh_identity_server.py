"""HttpServer puts the client certificate's SPIFFE ID on every request of a TLS connection,
read once per connection; plain TCP requests carry no peer_id (and pay nothing for it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from sampan.gateway.config import LimitsConfig
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import HttpServer
from sampan.mesh.identity.ca import init_ca, load_ca
from sampan.mesh.identity.certs import issue_certificate
from sampan.mesh.identity.tls import client_context, peer_spiffe_id, server_context


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    ca: Path


def identities(tmp_path: Path) -> tuple[Identity, Identity]:
    init_ca(tmp_path / "ca", "sampan.local", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    ca = load_ca(tmp_path / "ca")
    out = []
    for name in ("payments", "orders"):
        issued = issue_certificate(ca, name, out_dir=tmp_path / name)
        assert issued.cert_path is not None and issued.key_path is not None
        out.append(Identity(issued.cert_path, issued.key_path, ca.cert_path))
    return out[0], out[1]


async def echo_peer(request: Request) -> Response:
    peer = request.state.get("peer_id", "<absent>")
    return Response(200, body=str(peer).encode())


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    assert head.startswith(b"HTTP/1.1 200 ")
    return await reader.readexactly(length)


async def two_requests(tmp_path: Path, *, tls: bool) -> tuple[list[bytes], int]:
    server_id, client_id = identities(tmp_path)
    server = HttpServer(echo_peer, LimitsConfig(), ssl=server_context(server_id) if tls else None)
    await server.start()
    try:
        ctx = client_context(client_id) if tls else None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        bodies = [await get(reader, writer), await get(reader, writer)]
        writer.close()
    finally:
        await server.drain(1.0)
    return bodies, server.port


def counting(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []

    def wrapper(ssl_object: Any) -> str | None:
        calls.append(ssl_object)
        return peer_spiffe_id(ssl_object)

    monkeypatch.setattr("sampan.http.server.peer_spiffe_id", wrapper)
    return calls


def run(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, Any]
) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@LOOPS
def test_tls_requests_carry_the_peer_id(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    calls = counting(monkeypatch)
    bodies, _ = run(loop_factory, two_requests(tmp_path, tls=True))
    assert bodies == [b"spiffe://sampan.local/svc/orders"] * 2
    assert len(calls) == 1  # once per connection, not per request


@LOOPS
def test_plain_tcp_requests_have_no_peer_id_and_no_lookup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    calls = counting(monkeypatch)
    bodies, _ = run(loop_factory, two_requests(tmp_path, tls=False))
    assert bodies == [b"<absent>"] * 2
    assert calls == []


async def test_tls_without_a_spiffe_id_gives_none(tmp_path: Path) -> None:
    """A server context that does not require client certificates (not the mesh's): the
    request still says peer_id=None rather than leaving it out."""
    server_id, _ = identities(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_id.cert, server_id.key)
    server = HttpServer(echo_peer, LimitsConfig(), ssl=ctx)
    await server.start()
    try:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.load_verify_locations(server_id.ca)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client)
        assert await get(reader, writer) == b"None"
        writer.close()
    finally:
        await server.drain(1.0)
