"""CertificateRotator: when it renews, re-issue vs re-read, refusing bad pairs, the task."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from sampan.mesh.config import IdentityConfig
from sampan.mesh.identity.ca import LoadedCa, init_ca, load_ca
from sampan.mesh.identity.certs import issue_certificate, write_identity
from sampan.mesh.identity.rotation import CertificateRotator
from sampan.mesh.identity.tls import client_context, server_context
from sampan.observe.metrics import Metrics

TTL = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ca(tmp_path: Path) -> LoadedCa:
    init_ca(tmp_path / "ca", "sampan.local")
    return load_ca(tmp_path / "ca")


def node_identity(
    ca: LoadedCa, tmp_path: Path, *, reissue: bool, rotate_before: float = 600.0
) -> IdentityConfig:
    issued = issue_certificate(ca, "orders", ttl=TTL, out_dir=tmp_path / "node")
    return IdentityConfig(
        service="orders",
        cert=str(issued.cert_path),
        key=str(issued.key_path),
        ca=str(ca.cert_path),
        ca_key=str(ca.key_path) if reissue else None,
        rotate_before=rotate_before,
    )


def served_serial(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> int:
    """The serial of the certificate a new handshake with ``server_ctx`` presents."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, into in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            into.write(out.read())
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_renewal_is_due_within_rotate_before(ca: LoadedCa, tmp_path: Path) -> None:
    clock = Clock()
    rotator = CertificateRotator(
        node_identity(ca, tmp_path, reissue=True), [], clock=clock, reissue=True
    )
    not_after = rotator.current.not_valid_after_utc.timestamp()
    assert rotator.due_at() == not_after - 600
    assert not rotator.needs_rotation()
    assert rotator.seconds_left() == pytest.approx(TTL, abs=5)
    clock.now = not_after - 601
    assert not rotator.needs_rotation()
    clock.now = not_after - 600
    assert rotator.needs_rotation()


def test_reissue_writes_a_fresh_certificate_and_loads_it(ca: LoadedCa, tmp_path: Path) -> None:
    identity = node_identity(ca, tmp_path, reissue=True)
    server_ctx = server_context(identity)
    client_ctx = client_context(identity)
    rotator = CertificateRotator(identity, [server_ctx], clock=time.time, reissue=True)
    old = rotator.current
    assert served_serial(server_ctx, client_ctx) == old.serial_number
    new = rotator.rotate_now()
    assert new.serial_number != old.serial_number
    assert rotator.current is new and rotator.rotations == 1
    assert served_serial(server_ctx, client_ctx) == new.serial_number
    on_disk = x509.load_pem_x509_certificates(Path(identity.cert).read_bytes())
    assert on_disk[0] == new and len(on_disk) == 2  # leaf + CA
    assert stat.S_IMODE(Path(identity.key).stat().st_mode) == 0o600
    lifetime = new.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert abs(lifetime.total_seconds() - TTL) < 5  # same lifetime as before
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://sampan.local/svc/orders"
    ]


def test_reissue_needs_the_ca_key(ca: LoadedCa, tmp_path: Path) -> None:
    identity = node_identity(ca, tmp_path, reissue=False)
    with pytest.raises(ValueError, match="ca_key"):
        CertificateRotator(identity, [], reissue=True)
    assert not CertificateRotator(identity, []).reissue
    assert CertificateRotator(node_identity(ca, tmp_path, reissue=True), []).reissue


def test_reread_picks_up_an_external_renewal(
    ca: LoadedCa, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = node_identity(ca, tmp_path, reissue=False)
    server_ctx = server_context(identity)
    rotator = CertificateRotator(identity, [server_ctx], reissue=False)
    old = rotator.current.serial_number
    # nothing renewed yet: same certificate, a warning (once), no failure
    caplog.set_level(logging.INFO, logger="sampan.mesh.identity.rotation")
    rotator._attempt()
    rotator._attempt()
    assert rotator.current.serial_number == old and rotator.failures == 0
    assert caplog.text.count("waiting for its renewal") == 1
    # the external issuer renews the files
    renewed = issue_certificate(ca, "orders", ttl=TTL)
    write_identity(renewed, Path(identity.cert), Path(identity.key))
    rotator._attempt()
    assert rotator.current.serial_number == renewed.serial
    assert served_serial(server_ctx, client_context(identity)) == renewed.serial
    assert "PRIVATE KEY" not in caplog.text


def test_a_mismatched_pair_is_refused_and_the_old_certificate_kept(
    ca: LoadedCa, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = node_identity(ca, tmp_path, reissue=False)
    server_ctx = server_context(identity)
    client_ctx = client_context(identity)
    rotator = CertificateRotator(identity, [server_ctx], reissue=False, metrics=Metrics())
    old = rotator.current.serial_number
    # half-way through an external renewal: new certificate, old key
    renewed = issue_certificate(ca, "orders", ttl=TTL)
    Path(identity.cert).write_bytes(renewed.chain_pem)
    with pytest.raises(ssl.SSLError):
        rotator.rotate_now()
    assert rotator.current.serial_number == old
    assert served_serial(server_ctx, client_ctx) == old  # live context untouched
    rotator._attempt()  # the background path: logged and counted, not raised
    assert rotator.failures == 1
    assert "rotation failed" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
    # the key arrives: the next attempt succeeds
    Path(identity.key).write_bytes(renewed.key_pem)
    rotator._attempt()
    assert served_serial(server_ctx, client_ctx) == renewed.serial


async def test_background_task_rotates_when_due(ca: LoadedCa, tmp_path: Path) -> None:
    clock = Clock()
    metrics = Metrics()
    identity = node_identity(ca, tmp_path, reissue=True)
    server_ctx = server_context(identity)
    rotator = CertificateRotator(
        identity,
        [server_ctx],
        clock=clock,
        check_interval=0.02,
        retry_interval=0.02,
        metrics=metrics,
    )
    first = rotator.current.serial_number
    await rotator.start()
    try:
        await asyncio.sleep(0.1)
        assert rotator.rotations == 0  # not due: nothing happens
        clock.now = rotator.due_at() + 1
        for _ in range(200):
            if rotator.rotations:
                break
            await asyncio.sleep(0.01)
        assert rotator.rotations == 1
        second = rotator.current.serial_number
        assert second != first
        await asyncio.sleep(0.1)
        assert rotator.rotations == 1  # the new certificate is not due yet
        clock.now = rotator.due_at() + 1
        for _ in range(200):
            if rotator.rotations == 2:
                break
            await asyncio.sleep(0.01)
        assert rotator.rotations == 2 and rotator.current.serial_number != second
    finally:
        await rotator.stop()
        await rotator.stop()  # idempotent
    text = metrics.render().decode()
    assert 'sampan_mesh_cert_rotations_total{result="ok"} 2' in text
    assert "sampan_mesh_cert_expiry_seconds " in text


async def test_background_task_survives_failures(ca: LoadedCa, tmp_path: Path) -> None:
    clock = Clock()
    identity = node_identity(ca, tmp_path, reissue=True)
    rotator = CertificateRotator(identity, [], clock=clock, retry_interval=0.01)
    ca.key_path.write_bytes(b"garbage")  # the CA key became unreadable
    clock.now = rotator.due_at() + 1
    await rotator.start()
    try:
        for _ in range(200):
            if rotator.failures >= 3:
                break
            await asyncio.sleep(0.01)
        assert rotator.failures >= 3 and rotator.rotations == 0
    finally:
        await rotator.stop()
