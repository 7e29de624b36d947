"""Mesh mTLS end to end on 127.0.0.1: the real HttpServer terminating mTLS with an
AuthorizationGate, the real ConnectionPool originating it, and live certificate rotation.

Refused: a client certificate from another CA, an expired one, none at all, and an
identity the policy does not allow (403, counted)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from sampan.gateway.config import LimitsConfig
from sampan.http.client import ConnectionPool, Endpoint, UpstreamError
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import HttpServer
from sampan.mesh.config import IdentityConfig
from sampan.mesh.identity.authz import AuthorizationGate, AuthorizationPolicy
from sampan.mesh.identity.ca import LoadedCa, init_ca, load_ca
from sampan.mesh.identity.certs import issue_certificate
from sampan.mesh.identity.rotation import CertificateRotator
from sampan.mesh.identity.tls import check_peer_id, client_context, server_context
from sampan.observe.metrics import Metrics

TD = "sampan.local"
NOW = dt.datetime.now(dt.UTC)


def make_ca(directory: Path) -> LoadedCa:
    init_ca(directory, TD, now=NOW - dt.timedelta(days=30))
    return load_ca(directory)


def make_identity(
    ca: LoadedCa, service: str, out: Path, *, ttl: float = 3600, **kw: object
) -> IdentityConfig:
    issued = issue_certificate(ca, service, ttl=ttl, out_dir=out, **kw)  # type: ignore[arg-type]
    return IdentityConfig(
        service=service,
        cert=str(issued.cert_path),
        key=str(issued.key_path),
        ca=str(ca.cert_path),
        ca_key=str(ca.key_path),
    )


@dataclass
class Payments:
    """The "payments" service behind mTLS: only svc/orders may call it."""

    server: HttpServer
    identity: IdentityConfig
    context: ssl.SSLContext
    metrics: Metrics
    handled: list[str | None]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(
            "127.0.0.1", self.server.port, tls=True, peer_id="spiffe://sampan.local/svc/payments"
        )

    def denied(self) -> str | None:
        prefix = 'sampan_mesh_authz_denied_total{service="payments"} '
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None


@pytest.fixture
def ca(tmp_path: Path) -> LoadedCa:
    return make_ca(tmp_path / "ca")


@pytest.fixture
async def payments(ca: LoadedCa, tmp_path: Path) -> AsyncIterator[Payments]:
    identity = make_identity(ca, "payments", tmp_path / "payments")
    metrics = Metrics()
    gate = AuthorizationGate(
        AuthorizationPolicy.parse(["svc/orders -> svc/payments"], TD), "payments", metrics
    )
    handled: list[str | None] = []

    async def handler(request: Request) -> Response:
        denied = gate.authorize(request)
        if denied is not None:
            return denied
        handled.append(request.state["peer_id"])
        return Response(200, body=str(request.state["peer_id"]).encode())

    context = server_context(identity)
    server = HttpServer(handler, LimitsConfig(), ssl=context)
    await server.start()
    try:
        yield Payments(server, identity, context, metrics, handled)
    finally:
        await server.drain(1.0)


async def call(pool: ConnectionPool, endpoint: Endpoint) -> tuple[int, bytes]:
    response = await pool.request(
        endpoint,
        "GET",
        b"/pay",
        Headers(),
        connect_timeout=5.0,
        read_timeout=5.0,
        write_timeout=5.0,
    )
    return response.status, await response.body.read()


async def test_authorised_call_succeeds_and_the_server_sees_the_caller(
    ca: LoadedCa, tmp_path: Path, payments: Payments
) -> None:
    orders = make_identity(ca, "orders", tmp_path / "orders")
    pool = ConnectionPool(ssl_context=client_context(orders), peer_verifier=check_peer_id)
    try:
        assert await call(pool, payments.endpoint) == (200, b"spiffe://sampan.local/svc/orders")
        assert await call(pool, payments.endpoint) == (200, b"spiffe://sampan.local/svc/orders")
        assert pool.stats()["created"] == 1  # one mTLS connection, kept alive
    finally:
        await pool.close()
    assert payments.handled == ["spiffe://sampan.local/svc/orders"] * 2
    assert payments.denied() is None
    # the caller's side of the check: the server is who we meant to call
    _, writer = await asyncio.open_connection(
        "127.0.0.1", payments.server.port, ssl=client_context(orders)
    )
    check_peer_id(writer.get_extra_info("ssl_object"), "spiffe://sampan.local/svc/payments")
    writer.close()


async def test_unauthorised_spiffe_id_gets_403_and_is_counted(
    ca: LoadedCa, tmp_path: Path, payments: Payments
) -> None:
    inventory = make_identity(ca, "inventory", tmp_path / "inventory")
    pool = ConnectionPool(ssl_context=client_context(inventory), peer_verifier=check_peer_id)
    try:
        response = await pool.request(
            payments.endpoint,
            "POST",
            b"/pay",
            Headers(),
            connect_timeout=5.0,
            read_timeout=5.0,
            write_timeout=5.0,
        )
        assert response.status == 403
        assert response.headers.get(b"content-type") == b"application/problem+json"
        problem = orjson.loads(await response.body.read())
        assert problem["status"] == 403
        assert problem["detail"] == "spiffe://sampan.local/svc/inventory may not call payments"
        status, _ = await call(pool, payments.endpoint)
        assert status == 403
    finally:
        await pool.close()
    assert payments.handled == []
    assert payments.denied() == "2"


async def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, ca: LoadedCa, payments: Payments
) -> None:
    other = make_ca(tmp_path / "other-ca")
    intruder = make_identity(other, "orders", tmp_path / "intruder")  # same name, wrong CA
    ctx = client_context(intruder)
    ctx.load_verify_locations(ca.cert_path)  # it trusts our server: only its own cert is wrong
    pool = ConnectionPool(ssl_context=ctx, peer_verifier=check_peer_id)
    try:
        with pytest.raises(UpstreamError):
            await call(pool, payments.endpoint)
    finally:
        await pool.close()
    assert payments.handled == []


async def test_expired_certificate_is_refused(
    ca: LoadedCa, tmp_path: Path, payments: Payments
) -> None:
    expired = make_identity(ca, "orders", tmp_path / "old", now=NOW - dt.timedelta(days=2))
    pool = ConnectionPool(ssl_context=client_context(expired), peer_verifier=check_peer_id)
    try:
        with pytest.raises(UpstreamError):
            await call(pool, payments.endpoint)
    finally:
        await pool.close()
    assert payments.handled == []


async def test_expired_server_certificate_is_refused_by_the_client(
    ca: LoadedCa, tmp_path: Path
) -> None:
    stale = make_identity(ca, "payments", tmp_path / "stale", now=NOW - dt.timedelta(days=2))
    server = HttpServer(lambda r: _never(), LimitsConfig(), ssl=server_context(stale))
    await server.start()
    orders = make_identity(ca, "orders", tmp_path / "orders")
    pool = ConnectionPool(ssl_context=client_context(orders), peer_verifier=check_peer_id)
    try:
        with pytest.raises(UpstreamError) as caught:
            await call(
                pool,
                Endpoint(
                    "127.0.0.1", server.port, tls=True, peer_id="spiffe://sampan.local/svc/payments"
                ),
            )
        assert "certificate has expired" in str(caught.value)
    finally:
        await pool.close()
        await server.drain(1.0)


async def _never() -> Response:
    raise AssertionError("the handler must not run")


async def test_plain_http_to_the_mtls_port_is_refused(payments: Payments) -> None:
    pool = ConnectionPool()
    try:
        with pytest.raises(UpstreamError):
            await call(pool, Endpoint("127.0.0.1", payments.server.port))
    finally:
        await pool.close()
    assert payments.handled == []


def _served_serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_rotation_keeps_live_connections_and_new_ones_get_the_new_certificate(
    ca: LoadedCa, tmp_path: Path
) -> None:
    """The server's certificate is renewed by the rotator's own background task (due half a
    second after it was issued) while a pooled keep-alive connection is open."""
    metrics = Metrics()
    short = make_identity(ca, "payments", tmp_path / "payments", ttl=60)
    identity = short.model_copy(update={"rotate_before": 59.5})
    context = server_context(identity)

    async def handler(request: Request) -> Response:
        return Response(200, body=b"ok")

    server = HttpServer(handler, LimitsConfig(), ssl=context)
    await server.start()
    rotator = CertificateRotator(
        identity, [context], clock=time.time, ttl=3600, check_interval=0.05, metrics=metrics
    )
    orders = make_identity(ca, "orders", tmp_path / "orders")
    client_ctx = client_context(orders)
    pool = ConnectionPool(ssl_context=client_ctx, peer_verifier=check_peer_id)
    endpoint = Endpoint(
        "127.0.0.1", server.port, tls=True, peer_id="spiffe://sampan.local/svc/payments"
    )
    try:
        _, before_writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx)
        old_serial = _served_serial(before_writer)
        before_writer.close()
        assert old_serial == rotator.current.serial_number
        assert await call(pool, endpoint) == (200, b"ok")  # the live connection
        await rotator.start()
        for _ in range(500):
            if rotator.rotations:
                break
            await asyncio.sleep(0.01)
        assert rotator.rotations == 1
        new_serial = rotator.current.serial_number
        assert new_serial != old_serial
        # the established connection keeps working: no new connection was needed
        for _ in range(3):
            assert await call(pool, endpoint) == (200, b"ok")
        stats = pool.stats()
        assert stats["created"] == 1 and stats["reused"] == 3
        # a new connection handshakes with the new certificate
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx)
        assert _served_serial(writer) == new_serial
        check_peer_id(writer.get_extra_info("ssl_object"), "spiffe://sampan.local/svc/payments")
        writer.close()
        assert rotator.rotations == 1  # renewed for an hour: not due again
    finally:
        await rotator.stop()
        await pool.close()
        await server.drain(1.0)
    assert 'sampan_mesh_cert_rotations_total{result="ok"} 1' in metrics.render().decode()


async def test_a_server_with_another_services_identity_is_refused(
    ca: LoadedCa, tmp_path: Path
) -> None:
    """A certificate from the mesh CA is not enough: the server must be the service called."""
    impostor = make_identity(ca, "orders", tmp_path / "impostor")
    server = HttpServer(lambda r: _never(), LimitsConfig(), ssl=server_context(impostor))
    await server.start()
    billing = make_identity(ca, "billing", tmp_path / "billing")
    pool = ConnectionPool(ssl_context=client_context(billing), peer_verifier=check_peer_id)
    try:
        with pytest.raises(UpstreamError) as caught:
            await call(
                pool,
                Endpoint(
                    "127.0.0.1", server.port, tls=True, peer_id="spiffe://sampan.local/svc/payments"
                ),
            )
        assert "wrong server identity" in str(caught.value)
        # An https endpoint that names no identity gets the system's hostname checks instead,
        # so the mesh CA alone cannot vouch for it either.
        with pytest.raises(UpstreamError):
            await call(pool, Endpoint("127.0.0.1", server.port, tls=True))
    finally:
        await pool.close()
        await server.drain(1.0)
