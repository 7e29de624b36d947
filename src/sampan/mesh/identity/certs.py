"""Short-lived leaf certificates (X.509 SVIDs) for mesh services.

A leaf has a fresh ECDSA P-256 key, exactly one URI SAN ``spiffe://<td>/svc/<service>``,
``extendedKeyUsage`` serverAuth + clientAuth (a service both accepts and makes calls),
``keyUsage`` digitalSignature, and ``basicConstraints`` CA:false. It starts
``CLOCK_SKEW`` before it is issued and ends ``ttl`` seconds after (never after its CA).
The chain file holds the leaf then the CA certificate.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sampan.mesh.identity._files import CERT_MODE, KEY_MODE, write_atomic
from sampan.mesh.identity.ca import CLOCK_SKEW, LoadedCa
from sampan.mesh.identity.spiffe import parse_spiffe_id, spiffe_id, validate_service

__all__ = [
    "DEFAULT_TTL",
    "IssuedCert",
    "issue_certificate",
    "parse_spiffe_id",
    "spiffe_id",
    "write_identity",
]

DEFAULT_TTL = 86400.0


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A freshly signed leaf: certificate, key, and where they were written (if anywhere)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    spiffe_id: str
    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    cert_path: Path | None = None
    key_path: Path | None = None

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


def issue_certificate(
    ca: LoadedCa,
    service: str,
    *,
    ttl: float = DEFAULT_TTL,
    out_dir: Path | None = None,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """Sign a certificate for ``service`` valid for ``ttl`` seconds from ``now``.

    With ``out_dir`` the chain and key are written (atomically) to
    ``out_dir/<service>.crt`` and ``out_dir/<service>.key`` (mode 0600). ``now`` defaults
    to the current time; tests pass an earlier one to get an already expired certificate.
    A certificate never outlives its CA: ``not_after`` is clamped to the CA's."""
    validate_service(service)
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    issued_at = dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)
    ca_not_after = ca.certificate.not_valid_after_utc
    if issued_at >= ca_not_after:
        raise ValueError(f"the CA {ca.cert_path} expired at {ca_not_after.isoformat()}")
    not_after = min(issued_at + dt.timedelta(seconds=ttl), ca_not_after)
    not_before = max(issued_at - CLOCK_SKEW, ca.certificate.not_valid_before_utc)
    if not_after <= not_before:
        raise ValueError(
            f"the CA {ca.cert_path} is only valid from "
            f"{ca.certificate.not_valid_before_utc.isoformat()}"
        )
    identity = spiffe_id(ca.trust_domain, service)

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    try:
        ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sampan"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ca.trust_domain),
                    x509.NameAttribute(NameOID.COMMON_NAME, service),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    chain_pem = certificate.public_bytes(serialization.Encoding.PEM) + ca.cert_pem
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    issued = IssuedCert(certificate, key, identity, chain_pem, key_pem)
    if out_dir is None:
        return issued
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_identity(issued, out / f"{service}.crt", out / f"{service}.key")


def write_identity(issued: IssuedCert, cert_path: Path, key_path: Path) -> IssuedCert:
    """Write the chain and key (each atomically; key first, 0600) and return ``issued``
    with the paths set. A reader between the two renames may see the new key with the old
    certificate; ``CertificateRotator`` checks a pair loads before using it."""
    write_atomic(Path(key_path), issued.key_pem, KEY_MODE)
    write_atomic(Path(cert_path), issued.chain_pem, CERT_MODE)
    return IssuedCert(
        issued.certificate,
        issued.private_key,
        issued.spiffe_id,
        issued.chain_pem,
        issued.key_pem,
        Path(cert_path),
        Path(key_path),
    )


def certificate_spiffe_id(certificate: x509.Certificate) -> str | None:
    """The SPIFFE ID of a certificate: its one ``spiffe:`` URI SAN, valid, else None.

    A certificate with two SPIFFE URIs (or an invalid one) proves no single identity."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension
        return None
    uris = [
        uri
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri[:7].lower() == "spiffe:"
    ]
    if len(uris) != 1:
        return None
    try:
        parse_spiffe_id(uris[0])
    except ValueError:
        return None
    return uris[0]
