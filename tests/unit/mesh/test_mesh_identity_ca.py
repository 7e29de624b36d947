"""The trust domain CA: key type, constraints, files and their modes, loading back."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sampan.mesh.identity.ca import CA_CERT_FILE, CA_KEY_FILE, init_ca, load_ca, load_ca_files


def test_init_ca_writes_a_constrained_p256_ca(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "ca", "sampan.local", validity_days=30)
    assert files.cert == tmp_path / "ca" / CA_CERT_FILE
    assert files.key == tmp_path / "ca" / CA_KEY_FILE
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer  # self-signed
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.UniformResourceIdentifier("sampan.local")]
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)
    assert files.not_after == pytest.approx(cert.not_valid_after_utc, abs=dt.timedelta(seconds=1))


def test_ca_key_is_private_and_directory_closed(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "ca", "sampan.local")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    assert not list((tmp_path / "ca").glob("*.tmp"))  # no leftovers of the atomic writes


def test_init_ca_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path, "sampan.local")
    before = first.cert.read_bytes(), first.key.read_bytes()
    with pytest.raises(FileExistsError, match="force"):
        init_ca(tmp_path, "sampan.local")
    assert (first.cert.read_bytes(), first.key.read_bytes()) == before
    second = init_ca(tmp_path, "other.local", force=True)
    assert second.cert.read_bytes() != before[0]
    assert load_ca(tmp_path).trust_domain == "other.local"


def test_init_ca_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    (tmp_path / CA_KEY_FILE).write_bytes(b"not mine")
    with pytest.raises(FileExistsError):
        init_ca(tmp_path, "sampan.local")
    assert (tmp_path / CA_KEY_FILE).read_bytes() == b"not mine"


@pytest.mark.parametrize(
    "trust_domain", ["", "Sampan.local", "sampan.local:8443", "a/b", "user@td", "td?x", "x" * 256]
)
def test_init_ca_rejects_invalid_trust_domains(tmp_path: Path, trust_domain: str) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        init_ca(tmp_path, trust_domain)
    assert not list(tmp_path.iterdir())


def test_load_ca_round_trip(tmp_path: Path) -> None:
    files = init_ca(tmp_path, "prod.example_vn")
    ca = load_ca(tmp_path)
    assert ca.trust_domain == "prod.example_vn"
    assert ca.cert_pem == files.cert.read_bytes()
    assert "PRIVATE" not in repr(ca) and "key" not in repr(ca).lower().replace("cert_path", "")


def test_load_ca_checks_key_and_trust_domain(tmp_path: Path) -> None:
    init_ca(tmp_path / "a", "a.local")
    init_ca(tmp_path / "b", "b.local")
    with pytest.raises(ValueError, match="is not the key of"):
        load_ca_files(tmp_path / "a" / CA_CERT_FILE, tmp_path / "b" / CA_KEY_FILE)
    with pytest.raises(ValueError, match=r"not 'b\.local'"):
        load_ca(tmp_path / "a", trust_domain="b.local")
    (tmp_path / "a" / CA_KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_ca(tmp_path / "a")


def test_load_ca_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_ca(tmp_path)


def test_load_ca_refuses_a_leaf_certificate(tmp_path: Path) -> None:
    from sampan.mesh.identity.certs import issue_certificate

    init_ca(tmp_path / "ca", "sampan.local")
    leaf = issue_certificate(load_ca(tmp_path / "ca"), "orders", out_dir=tmp_path / "leaf")
    assert leaf.cert_path is not None and leaf.key_path is not None
    with pytest.raises(ValueError, match="not a CA certificate"):
        load_ca_files(leaf.cert_path, leaf.key_path, trust_domain="sampan.local")


def test_load_ca_warns_about_a_readable_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = init_ca(tmp_path, "sampan.local")
    files.key.chmod(0o644)
    load_ca(tmp_path)
    assert "accessible by group or others" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
