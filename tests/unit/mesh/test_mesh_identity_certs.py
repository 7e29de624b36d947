"""Leaf certificates (X.509 SVIDs) and SPIFFE ID parsing."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sampan.mesh.identity.ca import CLOCK_SKEW, LoadedCa, init_ca, load_ca
from sampan.mesh.identity.certs import (
    certificate_spiffe_id,
    issue_certificate,
    parse_spiffe_id,
    spiffe_id,
)
from sampan.mesh.identity.spiffe import service_of


@pytest.fixture
def ca(tmp_path: Path) -> LoadedCa:
    init_ca(tmp_path / "ca", "sampan.local")
    return load_ca(tmp_path / "ca")


def test_leaf_contents(ca: LoadedCa) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issued = issue_certificate(ca, "orders", ttl=3600, now=now)
    cert = issued.certificate
    assert issued.spiffe_id == "spiffe://sampan.local/svc/orders"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [issued.spiffe_id]
    assert san.get_values_for_type(x509.DNSName) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)  # signed by the CA's key
    assert cert.not_valid_before_utc == now - CLOCK_SKEW  # backdated for clock skew
    assert cert.not_valid_after_utc == now + dt.timedelta(hours=1)
    assert issued.not_after == cert.not_valid_after_utc
    assert issued.serial == cert.serial_number > 0
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_each_certificate_has_its_own_key_and_serial(ca: LoadedCa) -> None:
    a = issue_certificate(ca, "orders")
    b = issue_certificate(ca, "orders")
    assert a.serial != b.serial
    assert a.key_pem != b.key_pem


def test_chain_and_key_files(ca: LoadedCa, tmp_path: Path) -> None:
    issued = issue_certificate(ca, "payments", out_dir=tmp_path / "out")
    assert issued.cert_path == tmp_path / "out" / "payments.crt"
    assert issued.key_path == tmp_path / "out" / "payments.key"
    chain = x509.load_pem_x509_certificates(issued.cert_path.read_bytes())
    assert [c.serial_number for c in chain] == [issued.serial, ca.certificate.serial_number]
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert key.public_key() == issued.certificate.public_key()
    assert "BEGIN" not in repr(issued)  # neither key nor chain in the repr


def test_lifetime_is_clamped_to_the_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, "sampan.local", validity_days=1)
    ca = load_ca(tmp_path)
    issued = issue_certificate(ca, "orders", ttl=10 * 86400)
    assert issued.not_after == ca.certificate.not_valid_after_utc


def test_refuses_bad_ttl_service_and_expired_ca(ca: LoadedCa) -> None:
    for ttl in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            issue_certificate(ca, "orders", ttl=ttl)
    for service in ("", "a/b", "..", "ớ", "svc name"):
        with pytest.raises(ValueError, match="service name"):
            issue_certificate(ca, service)
    with pytest.raises(ValueError, match="expired"):
        issue_certificate(ca, "orders", now=dt.datetime.now(dt.UTC) + dt.timedelta(days=4000))


def test_backdated_issue_gives_an_expired_certificate(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    init_ca(tmp_path, "sampan.local", now=now - dt.timedelta(days=30))
    ca = load_ca(tmp_path)
    issued = issue_certificate(ca, "orders", ttl=3600, now=now - dt.timedelta(days=2))
    assert issued.not_after < now


def test_refuses_to_issue_before_the_ca_starts(ca: LoadedCa) -> None:
    with pytest.raises(ValueError, match="only valid from"):
        issue_certificate(ca, "orders", ttl=60, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))


def test_spiffe_id() -> None:
    assert spiffe_id("sampan.local", "orders") == "spiffe://sampan.local/svc/orders"
    with pytest.raises(ValueError):
        spiffe_id("Sampan.local", "orders")
    with pytest.raises(ValueError):
        spiffe_id("sampan.local", "a/b")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://sampan.local/svc/orders", ("sampan.local", "/svc/orders")),
        ("spiffe://td", ("td", "")),
        ("spiffe://a-b_c.d/x/Y.z/_-", ("a-b_c.d", "/x/Y.z/_-")),
    ],
)
def test_parse_spiffe_id_valid(uri: str, expected: tuple[str, str]) -> None:
    assert parse_spiffe_id(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe:/td/svc/a",
        "SPIFFE://td/svc/a",
        "https://td/svc/a",
        "spiffe://",
        "spiffe:///svc/a",
        "spiffe://TD/svc/a",
        "spiffe://td:443/svc/a",
        "spiffe://user@td/svc/a",
        "spiffe://td/svc/a/",
        "spiffe://td//a",
        "spiffe://td/svc/../admin",
        "spiffe://td/./a",
        "spiffe://td/svc/a%2Fb",
        "spiffe://td/svc/a?x=1",
        "spiffe://td/svc/a#f",
        "spiffe://td?x",
        "spiffe://td/svc/ớ",
        "spiffe://td/" + "a" * 2100,
        " spiffe://td/svc/a",
    ],
)
def test_parse_spiffe_id_strict(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_spiffe_id(uri)


def test_service_of() -> None:
    assert service_of("spiffe://td/svc/orders", "td") == "orders"
    assert service_of("spiffe://other/svc/orders", "td") is None
    assert service_of("spiffe://td/ns/x/svc/orders", "td") is None
    assert service_of("spiffe://td/svc/orders/extra", "td") is None
    assert service_of("spiffe://td/svc/", "td") is None
    assert service_of("not an id", "td") is None


def _leaf_with_uris(ca: LoadedCa, uris: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(ca.private_key, hashes.SHA256())


def test_certificate_spiffe_id_needs_exactly_one_valid_spiffe_uri(ca: LoadedCa) -> None:
    one = "spiffe://sampan.local/svc/a"
    assert certificate_spiffe_id(_leaf_with_uris(ca, [one])) == one
    assert certificate_spiffe_id(_leaf_with_uris(ca, [one, "https://x.vn/"])) == one
    assert certificate_spiffe_id(_leaf_with_uris(ca, [one, "spiffe://sampan.local/svc/b"])) is None
    assert certificate_spiffe_id(_leaf_with_uris(ca, [one, "SPIFFE://sampan.local/svc/b"])) is None
    assert certificate_spiffe_id(_leaf_with_uris(ca, ["spiffe://sampan.local/svc/a/"])) is None
    assert certificate_spiffe_id(_leaf_with_uris(ca, [])) is None
