"""Real mTLS handshakes on 127.0.0.1 with the mesh contexts: who gets in, who does not."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from sampan.mesh.identity.ca import LoadedCa, init_ca, load_ca
from sampan.mesh.identity.certs import issue_certificate
from sampan.mesh.identity.tls import (
    PeerIdentityError,
    check_peer_id,
    client_context,
    peer_spiffe_id,
    server_context,
)

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    ca: Path


def make_ca(directory: Path, trust_domain: str = "sampan.local") -> LoadedCa:
    init_ca(directory, trust_domain, now=NOW - dt.timedelta(days=30))
    return load_ca(directory)


def identity(
    ca: LoadedCa, service: str, out: Path, *, trust: LoadedCa | None = None, **kw: object
) -> Identity:
    issued = issue_certificate(ca, service, out_dir=out, **kw)  # type: ignore[arg-type]
    assert issued.cert_path is not None and issued.key_path is not None
    return Identity(issued.cert_path, issued.key_path, (trust or ca).cert_path)


class Server:
    """A TLS echo of sorts: answers b"ok <client SPIFFE ID>" and remembers who came in."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.peers: list[str | None] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_spiffe_id(writer.get_extra_info("ssl_object"))
        self.peers.append(peer)
        writer.write(b"ok " + (peer or "-").encode() + b"\n")
        await writer.drain()
        writer.close()


async def talk(port: int, ctx: ssl.SSLContext) -> tuple[bytes, ssl.SSLObject]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5)
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        ssl_object = writer.get_extra_info("ssl_object")
    finally:
        writer.close()
    return line, ssl_object


def server_verdict(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Run the handshake in memory (two SSLObjects, bytes pumped between them) and return
    the server's verification error, or None if it accepted the client."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(20):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return str(exc)
        c_in.write(s_out.read())
        if client_done and server_done:
            return None
    raise AssertionError("handshake did not finish")


async def refused_by_server(
    server: Server, ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, reason: str
) -> None:
    """Over a real connection: the server's application never sees the client, which gets
    EOF or an error (TLS 1.3: the client's half of the handshake may finish before the
    server judged its certificate, so the refusal shows on the first read). asyncio's
    streams do not say why, so the server's reason is checked with an in-memory handshake."""
    try:
        line, _ = await talk(server.port, ctx)
    except (ssl.SSLError, ConnectionError):
        line = b""
    assert line == b""
    assert server.peers == []
    verdict = server_verdict(server_ctx, ctx)
    assert verdict is not None and reason in verdict, verdict


@pytest.fixture
def ca(tmp_path: Path) -> LoadedCa:
    return make_ca(tmp_path / "ca")


async def test_good_mtls_both_sides_see_the_peer_identity(ca: LoadedCa, tmp_path: Path) -> None:
    server_id = identity(ca, "payments", tmp_path / "payments")
    client_id = identity(ca, "orders", tmp_path / "orders")
    async with Server(server_context(server_id)) as server:
        line, ssl_object = await talk(server.port, client_context(client_id))
    assert line == b"ok spiffe://sampan.local/svc/orders\n"
    assert server.peers == ["spiffe://sampan.local/svc/orders"]
    assert ssl_object.version() == "TLSv1.3"
    assert check_peer_id(ssl_object, "spiffe://sampan.local/svc/payments") == (
        "spiffe://sampan.local/svc/payments"
    )
    with pytest.raises(PeerIdentityError, match=r"expected spiffe://sampan\.local/svc/inventory"):
        check_peer_id(ssl_object, "spiffe://sampan.local/svc/inventory")


async def test_tls12_still_works_with_forward_secret_aead(ca: LoadedCa, tmp_path: Path) -> None:
    client = client_context(identity(ca, "orders", tmp_path / "o"))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with Server(server_context(identity(ca, "payments", tmp_path / "p"))) as server:
        line, ssl_object = await talk(server.port, client)
    assert line.startswith(b"ok spiffe://")
    assert ssl_object.version() == "TLSv1.2"
    cipher = ssl_object.cipher()
    assert (
        cipher is not None
        and cipher[0].startswith("ECDHE-")
        and ("GCM" in cipher[0] or "CHACHA" in cipher[0])
    )


async def test_client_certificate_from_another_ca_is_refused(ca: LoadedCa, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other")
    server_id = identity(ca, "payments", tmp_path / "payments")
    # the intruder trusts our CA (so it would accept our server) but its own cert is foreign
    intruder = identity(other, "orders", tmp_path / "intruder", trust=ca)
    server_ctx = server_context(server_id)
    async with Server(server_ctx) as server:
        await refused_by_server(
            server, client_context(intruder), server_ctx, "certificate verify failed"
        )


async def test_server_certificate_from_another_ca_is_refused(ca: LoadedCa, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other")
    impostor = identity(other, "payments", tmp_path / "impostor", trust=ca)
    client_id = identity(ca, "orders", tmp_path / "orders")
    async with Server(server_context(impostor)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await talk(server.port, client_context(client_id))


async def test_expired_client_certificate_is_refused(ca: LoadedCa, tmp_path: Path) -> None:
    server_id = identity(ca, "payments", tmp_path / "payments")
    expired = identity(ca, "orders", tmp_path / "orders", ttl=3600, now=NOW - dt.timedelta(days=2))
    server_ctx = server_context(server_id)
    async with Server(server_ctx) as server:
        await refused_by_server(
            server, client_context(expired), server_ctx, "certificate has expired"
        )


async def test_expired_server_certificate_is_refused(ca: LoadedCa, tmp_path: Path) -> None:
    expired = identity(ca, "payments", tmp_path / "p", ttl=3600, now=NOW - dt.timedelta(days=2))
    client_id = identity(ca, "orders", tmp_path / "orders")
    async with Server(server_context(expired)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            await talk(server.port, client_context(client_id))


async def test_client_without_certificate_is_refused(ca: LoadedCa, tmp_path: Path) -> None:
    server_id = identity(ca, "payments", tmp_path / "payments")
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(ca.cert_path)
    server_ctx = server_context(server_id)
    async with Server(server_ctx) as server:
        await refused_by_server(server, anonymous, server_ctx, "peer did not return a certificate")


async def test_name_constraint_refuses_a_foreign_trust_domain(ca: LoadedCa, tmp_path: Path) -> None:
    """Our CA's key signing spiffe://evil.local/... : OpenSSL enforces the CA's name
    constraint, so the chain does not verify (not just a policy decision)."""
    server_id = identity(ca, "payments", tmp_path / "payments")
    forged_ca = LoadedCa(ca.certificate, ca.private_key, "evil.local", ca.cert_path, ca.key_path)
    forged = identity(forged_ca, "orders", tmp_path / "forged")
    server_ctx = server_context(server_id)
    async with Server(server_ctx) as server:
        await refused_by_server(
            server, client_context(forged), server_ctx, "permitted subtree violation"
        )
        # the control: the same CA, its own trust domain, gets in
        line, _ = await talk(server.port, client_context(identity(ca, "orders", tmp_path / "ok")))
    assert line == b"ok spiffe://sampan.local/svc/orders\n"


def test_context_settings(ca: LoadedCa, tmp_path: Path) -> None:
    ident = identity(ca, "orders", tmp_path / "o")
    server = server_context(ident)
    client = client_context(ident)
    for ctx in (server, client):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
        assert ctx.options & ssl.OP_NO_COMPRESSION
    assert not client.check_hostname  # identity is the SPIFFE ID, checked after the handshake
    assert server.num_tickets == 0


def test_peer_spiffe_id_without_a_handshake() -> None:
    assert peer_spiffe_id(None) is None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    assert peer_spiffe_id(obj) is None
