"""The trust domain's certificate authority: one ECDSA P-256 key and a self-signed CA
certificate that may sign leaf certificates only (``pathlen:0``), and only for SPIFFE IDs
of its own trust domain (a critical name constraint on URI SANs, which OpenSSL enforces
during verification).

Files in the CA directory: ``ca.crt`` (the trust bundle every node is given as
``mesh.identity.ca``) and ``ca.key`` (mode 0600; keep it on the machine that issues
certificates, or on a node that re-issues its own with ``mesh.identity.ca_key``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sampan.mesh.identity._files import CERT_MODE, KEY_MODE, write_atomic
from sampan.mesh.identity.spiffe import validate_trust_domain

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CaFiles",
    "CaPrivateKey",
    "LoadedCa",
    "init_ca",
    "load_ca",
]

log = logging.getLogger(__name__)

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
"""Certificates start this long before they are issued, so a peer whose clock is a little
behind does not see a certificate from the future."""

CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class CaFiles:
    """What ``init_ca`` wrote."""

    directory: Path
    cert: Path
    key: Path
    trust_domain: str
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class LoadedCa:
    """A CA ready to sign: its certificate, private key and trust domain."""

    certificate: x509.Certificate
    private_key: CaPrivateKey
    trust_domain: str
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:  # never the key
        return f"LoadedCa(trust_domain={self.trust_domain!r}, cert_path={str(self.cert_path)!r})"


def _random_serial() -> int:
    # 159 random bits: positive, at most 20 octets (RFC 5280 4.1.2.2), unpredictable.
    return secrets.randbits(159) | 1


def init_ca(
    directory: Path,
    trust_domain: str,
    *,
    validity_days: int = 3650,
    force: bool = False,
    now: dt.datetime | None = None,
) -> CaFiles:
    """Create ``directory/ca.crt`` and ``directory/ca.key`` for ``trust_domain``.

    Refuses (FileExistsError) to replace an existing CA unless ``force``: a new CA key
    makes every certificate the old one issued untrusted. ``now`` (default: the current
    time) is when the CA's validity starts, less ``CLOCK_SKEW``."""
    validate_trust_domain(trust_domain)
    if validity_days < 1:
        raise ValueError(f"validity_days must be >= 1, got {validity_days}")
    directory = Path(directory)
    cert_path = directory / CA_CERT_FILE
    key_path = directory / CA_KEY_FILE
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise FileExistsError(
                    f"{path} exists; replacing the CA makes every certificate it issued "
                    "untrusted (use force / --force to do it anyway)"
                )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)
    not_after = now + dt.timedelta(days=validity_days)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sampan"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "sampan mesh CA"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            # RFC 5280 host form: constrains the host part of every URI SAN below this CA,
            # so the CA can only vouch for spiffe://<trust_domain>/... identities.
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(key_path, key_pem, KEY_MODE)
    write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    log.info("created the CA of trust domain %s in %s", trust_domain, directory)
    return CaFiles(directory, cert_path, key_path, trust_domain, not_after)


def constrained_trust_domain(certificate: x509.Certificate) -> str | None:
    """The trust domain a CA certificate's URI name constraint permits (exactly one), or None."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    uris = [
        subtree.value
        for subtree in constraints.permitted_subtrees or ()
        if isinstance(subtree, x509.UniformResourceIdentifier)
    ]
    if len(uris) != 1:
        return None
    try:
        return validate_trust_domain(uris[0])
    except ValueError:
        return None


def load_ca(directory: Path, *, trust_domain: str | None = None) -> LoadedCa:
    """Read the CA that ``init_ca`` wrote in ``directory``."""
    directory = Path(directory)
    return load_ca_files(
        directory / CA_CERT_FILE, directory / CA_KEY_FILE, trust_domain=trust_domain
    )


def load_ca_files(cert_path: Path, key_path: Path, *, trust_domain: str | None = None) -> LoadedCa:
    """Read a CA from its certificate and key files.

    The trust domain comes from the certificate's URI name constraint; a CA without one
    (made elsewhere) needs ``trust_domain``. Raises ValueError if the files do not form a
    CA (not a CA certificate, key not matching, trust domains disagreeing)."""
    cert_path = Path(cert_path)
    key_path = Path(key_path)
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{cert_path}: not a PEM certificate ({exc})") from None
    _warn_if_key_readable(key_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        # the message of a key parsing error is not echoed: it is about secret material
        raise ValueError(f"{key_path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{key_path}: the CA key must be ECDSA or RSA")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        is_ca = constraints.value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(f"{cert_path}: not a CA certificate (basicConstraints CA:false)")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    constrained = constrained_trust_domain(certificate)
    if trust_domain is not None:
        validate_trust_domain(trust_domain)
        if constrained is not None and constrained != trust_domain:
            raise ValueError(
                f"{cert_path} is the CA of trust domain {constrained!r}, not {trust_domain!r}"
            )
    elif constrained is None:
        raise ValueError(f"{cert_path} names no trust domain; give the trust domain explicitly")
    return LoadedCa(certificate, key, trust_domain or str(constrained), cert_path, key_path)


def _warn_if_key_readable(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is accessible by group or others (mode %o); use 0600", path, mode & 0o777)
