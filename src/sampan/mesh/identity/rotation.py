"""Renewing a node's certificate before it expires, without dropping connections.

``CertificateRotator`` watches the certificate of ``mesh.identity``; once it is within
``rotate_before`` of its ``notAfter`` it gets a new one:

- **re-issue** (``ca_key`` configured): sign a fresh certificate for ``identity.service``
  with the CA, same lifetime as the current one, and write chain and key atomically over
  ``identity.cert``/``identity.key``;
- **re-read** (no CA key on the node): an external issuer (``sampan mesh cert issue`` in a
  cron job, a secrets operator) is expected to have replaced the files; they are read
  again, and re-checked every ``retry_interval`` while they still hold the old certificate.

The new pair is first loaded into a scratch context (a half-written or mismatched pair is
refused there and retried), then ``load_cert_chain`` is called on every live
``SSLContext`` in place. OpenSSL copies the certificate into each connection when the
connection is created, so new handshakes present the new certificate and established
connections (pooled keep-alive ones included) continue untouched until they close.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from sampan.mesh.identity.ca import CLOCK_SKEW, load_ca_files
from sampan.mesh.identity.certs import (
    DEFAULT_TTL,
    certificate_spiffe_id,
    issue_certificate,
    write_identity,
)
from sampan.mesh.identity.spiffe import parse_spiffe_id, spiffe_id

if TYPE_CHECKING:
    from sampan.mesh.config import IdentityConfig
    from sampan.observe.metrics import Metrics

__all__ = ["CertificateRotator"]

log = logging.getLogger(__name__)

MIN_TTL = 60.0


def _read_leaf(path: Path) -> x509.Certificate:
    """The first certificate of a PEM chain file (the leaf)."""
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: no PEM certificate ({exc})") from None
    return chain[0]


class CertificateRotator:
    """Keeps ``contexts`` serving a valid certificate for ``identity``.

    ``clock`` returns epoch seconds (``time.time``); ``reissue`` defaults to "``ca_key`` is
    configured" and needs it. ``trust_domain`` defaults to the current certificate's.
    ``ttl`` of a re-issued certificate defaults to the current certificate's lifetime.
    The background task checks at least every ``check_interval`` seconds; after a failed
    or ineffective attempt it tries again after ``retry_interval``."""

    def __init__(
        self,
        identity: IdentityConfig,
        contexts: Sequence[ssl.SSLContext],
        *,
        clock: Callable[[], float] = time.time,
        reissue: bool | None = None,
        trust_domain: str | None = None,
        ttl: float | None = None,
        check_interval: float = 30.0,
        retry_interval: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        if reissue is None:
            reissue = identity.ca_key is not None
        if reissue and identity.ca_key is None:
            raise ValueError("re-issuing certificates needs mesh.identity.ca_key")
        if check_interval <= 0 or retry_interval <= 0:
            raise ValueError("check_interval and retry_interval must be > 0")
        self.identity = identity
        self.contexts = list(contexts)
        self.reissue = reissue
        self._clock = clock
        self._trust_domain = trust_domain
        self._ttl = ttl
        self._check_interval = check_interval
        self._retry_interval = retry_interval
        self._task: asyncio.Task[None] | None = None
        self._stale_warned: int | None = None
        self.current = _read_leaf(Path(identity.cert))
        self.rotations = 0
        self.failures = 0
        self._rotated = (
            None
            if metrics is None
            else metrics.counter(
                "sampan_mesh_cert_rotations", "Certificate rotations of this node.", result="ok"
            )
        )
        self._failed = (
            None
            if metrics is None
            else metrics.counter(
                "sampan_mesh_cert_rotations", "Certificate rotations of this node.", result="failed"
            )
        )
        if metrics is not None:
            metrics.gauge(
                "sampan_mesh_cert_expiry_seconds",
                "Seconds until this node's certificate expires.",
                self.seconds_left,
            )

    # -- state -----------------------------------------------------------------------------

    def seconds_left(self) -> float:
        """Seconds until the current certificate expires (negative once it has)."""
        return self.current.not_valid_after_utc.timestamp() - self._clock()

    def due_at(self) -> float:
        """Epoch seconds from which the certificate is renewed."""
        return self.current.not_valid_after_utc.timestamp() - self.identity.rotate_before

    def needs_rotation(self) -> bool:
        return self._clock() >= self.due_at()

    # -- rotating ---------------------------------------------------------------------------

    def rotate_now(self) -> x509.Certificate:
        """Get a certificate now (re-issue or re-read, see the module docstring), load it into
        every context, and return it. Raises if no usable pair could be loaded; the contexts
        then keep the certificate they had."""
        cert_path = Path(self.identity.cert)
        key_path = Path(self.identity.key)
        if self.reissue:
            self._reissue(cert_path, key_path)
        # Scratch context first: a bad or mismatched pair must not reach the live ones
        # (load_cert_chain on a live context could replace the certificate, then fail on
        # the key).
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(cert_path, key_path)
        leaf = _read_leaf(cert_path)
        for ctx in self.contexts:
            ctx.load_cert_chain(cert_path, key_path)
        previous = self.current
        self.current = leaf
        if leaf.serial_number != previous.serial_number:
            self.rotations += 1
            if self._rotated is not None:
                self._rotated.inc()
            log.info(
                "mesh certificate rotated: %s serial %x valid until %s (%d context(s))",
                certificate_spiffe_id(leaf),
                leaf.serial_number,
                leaf.not_valid_after_utc.isoformat(),
                len(self.contexts),
            )
        return leaf

    def _reissue(self, cert_path: Path, key_path: Path) -> None:
        assert self.identity.ca_key is not None
        trust_domain = self._trust_domain
        current_id = certificate_spiffe_id(self.current)
        if trust_domain is None and current_id is not None:
            trust_domain = parse_spiffe_id(current_id)[0]
        ca = load_ca_files(
            Path(self.identity.ca), Path(self.identity.ca_key), trust_domain=trust_domain
        )
        wanted = spiffe_id(ca.trust_domain, self.identity.service)
        if current_id is not None and current_id != wanted:
            log.warning("re-issuing %s as %s (mesh.identity.service)", current_id, wanted)
        ttl = self._ttl
        if ttl is None:
            lifetime = (
                self.current.not_valid_after_utc - self.current.not_valid_before_utc - CLOCK_SKEW
            ).total_seconds()
            ttl = lifetime if lifetime >= MIN_TTL else DEFAULT_TTL
        if ttl <= self.identity.rotate_before:
            log.warning(
                "certificate lifetime %gs is not longer than rotate_before %gs: it will be "
                "renewed again at once",
                ttl,
                self.identity.rotate_before,
            )
        issued = issue_certificate(
            ca,
            self.identity.service,
            ttl=ttl,
            now=dt.datetime.fromtimestamp(self._clock(), dt.UTC),
        )
        write_identity(issued, cert_path, key_path)

    def _attempt(self) -> None:
        """One rotation in the background task: failures are logged and counted, never raised."""
        before = self.current.serial_number
        try:
            leaf = self.rotate_now()
        except Exception as exc:
            self.failures += 1
            if self._failed is not None:
                self._failed.inc()
            # str(exc) of ssl/OS errors names files and reasons, never key material
            log.error(
                "mesh certificate rotation failed (%s: %s); retrying in %gs; the current "
                "certificate expires %s",
                type(exc).__name__,
                exc,
                self._retry_interval,
                self.current.not_valid_after_utc.isoformat(),
            )
            return
        if leaf.serial_number == before and self._stale_warned != before:
            self._stale_warned = before
            log.warning(
                "%s still holds the certificate expiring %s; waiting for its renewal",
                self.identity.cert,
                leaf.not_valid_after_utc.isoformat(),
            )

    async def _run(self) -> None:
        while True:
            wait = self.due_at() - self._clock()
            if wait > 0:
                await asyncio.sleep(min(wait, self._check_interval))
                continue
            self._attempt()
            if self.needs_rotation():
                await asyncio.sleep(self._retry_interval)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="sampan-mesh-cert-rotation"
            )

    async def stop(self) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
