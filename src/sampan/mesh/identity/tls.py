"""TLS contexts for mesh mTLS, and the SPIFFE ID a handshake proved.

Both sides present their certificate and verify the peer's chain against the mesh CA
bundle (``mesh.identity.ca``); TLS 1.2 at least (1.3 is negotiated whenever both sides
have it), ECDHE + AEAD ciphers only for 1.2, strict X.509 checks, no compression or
renegotiation.

**Hostname checking is off on the client context, on purpose.** A mesh certificate names
a workload (``spiffe://<td>/svc/<name>`` as its only URI SAN), not a DNS name, and one
instance is reached by whatever address discovery returned (an IP, a pod name).
The chain check in the handshake proves "some identity of this trust domain"; *which*
identity is checked right after the handshake from the verified certificate:
``peer_spiffe_id`` returns it, ``check_peer_id`` compares it with the one expected
(``services[].tls.spiffe_id``, default ``spiffe://<td>/svc/<service>``). Skipping that
check would let any service of the mesh impersonate any other to its callers.

The server side does the same in reverse: ``HttpServer`` puts ``peer_spiffe_id`` of each
connection on its requests (``request.state["peer_id"]``) and ``AuthorizationGate``
decides with it.

The returned contexts are meant to be long-lived: ``CertificateRotator`` reloads their
certificate in place (``load_cert_chain``), which affects new handshakes only.
"""

from __future__ import annotations

import os
import ssl
from typing import Final, Protocol

from cryptography import x509

from sampan.mesh.identity.certs import certificate_spiffe_id

__all__ = [
    "IdentityFiles",
    "PeerIdentityError",
    "check_peer_id",
    "client_context",
    "peer_spiffe_id",
    "server_context",
]

# For TLS 1.2: forward secrecy and AEAD only (TLS 1.3 suites are all of that already).
_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"


class IdentityFiles(Protocol):
    """Where a node's identity lives: ``mesh.identity`` (``IdentityConfig``) fits."""

    @property
    def cert(self) -> str | os.PathLike[str]: ...

    @property
    def key(self) -> str | os.PathLike[str]: ...

    @property
    def ca(self) -> str | os.PathLike[str]: ...


class PeerIdentityError(ssl.SSLError):
    """The peer's verified certificate does not carry the SPIFFE ID expected."""


def _configure(ctx: ssl.SSLContext, identity: IdentityFiles) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=os.fspath(identity.ca))
    ctx.load_cert_chain(os.fspath(identity.cert), os.fspath(identity.key))
    return ctx


def server_context(identity: IdentityFiles) -> ssl.SSLContext:
    """A server context that requires a client certificate chaining to the mesh CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    # No TLS 1.3 session tickets: every connection does a full handshake, so every
    # connection's client certificate is verified now (expiry included), not remembered.
    ctx.num_tickets = 0
    return _configure(ctx, identity)


def client_context(identity: IdentityFiles) -> ssl.SSLContext:
    """A client context that presents our certificate and verifies the server's chain
    against the mesh CA. Hostname checking is off: check the peer's SPIFFE ID after the
    handshake with ``check_peer_id`` (see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _configure(ctx, identity)


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SPIFFE ID of the peer's certificate after a handshake: its one valid
    ``spiffe:`` URI SAN, or None (no certificate, none or several SPIFFE URIs, invalid).

    The certificate was verified by the handshake (``CERT_REQUIRED``); this only reads it."""
    if ssl_object is None:
        return None
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:  # handshake not done
        return None
    if not der:
        return None
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return certificate_spiffe_id(certificate)


def check_peer_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> str:
    """Return the peer's SPIFFE ID if it is ``expected``; else raise PeerIdentityError.

    The client side's replacement for hostname checking (call it once per connection)."""
    got = peer_spiffe_id(ssl_object)
    if got != expected:
        raise PeerIdentityError(
            f"the peer's certificate is {got or 'without a SPIFFE ID'}, expected {expected}"
        )
    return got
