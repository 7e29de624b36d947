"""webhook-signature: accept only requests signed with a shared secret (HMAC-SHA256).

The sender (sampan's `webhook` flow sink, or any system following the same scheme) puts the
unix time in ``x-sampan-timestamp`` and ``sha256=<hex>`` in ``x-sampan-signature``, the hex
being ``HMAC-SHA256(secret, "<timestamp>.<body>")``. Signing the timestamp with the body and
refusing timestamps outside ``tolerance`` means a captured request cannot be replayed later;
signatures are compared in constant time. Anything else gets 401 problem+json.

The body is read whole (up to ``max_body_bytes``, else 413) to be verified; the server keeps
the bytes, so the proxy still sends them upstream.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import ClassVar, Final

from pydantic import Field, SecretStr

from sampan.gateway.plugins._auth import unauthorized
from sampan.gateway.plugins._support import HeaderName
from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.body import BodyTooLarge
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.units import ByteSize, Duration

SCHEME: Final = b"sha256"
MAX_SIGNATURES: Final = 8
_HEX_DIGEST: Final = re.compile(rb"[0-9a-fA-F]{64}")
_TIMESTAMP: Final = re.compile(rb"[0-9]{1,12}")


def parse_signature_header(value: bytes) -> list[bytes]:
    """The lowercase hex digests of ``sha256=<hex>[, sha256=<hex>...]``.

    Several entries let a sender sign with an old and a new secret while they rotate. Entries
    of another scheme are skipped; a malformed entry, or more than 8, yields no digests (the
    request is refused rather than half-understood)."""
    digests: list[bytes] = []
    entries = value.split(b",")
    if len(entries) > MAX_SIGNATURES:
        return []
    for entry in entries:
        scheme, sep, digest = entry.strip(b" \t").partition(b"=")
        if not sep:
            return []
        if scheme.lower() != SCHEME:
            continue
        if not _HEX_DIGEST.fullmatch(digest):
            return []
        digests.append(digest.lower())
    return digests


def parse_timestamp(value: bytes | None) -> int | None:
    """Unix seconds from a header value of 1 to 12 digits, else None."""
    if value is None:
        return None
    value = value.strip(b" \t")
    return int(value) if _TIMESTAMP.fullmatch(value) else None


class WebhookSignatureOptions(PluginOptions):
    secret: SecretStr = Field(
        min_length=16,
        description="Shared secret (at least 16 characters); write `${WEBHOOK_SECRET}` to keep "
        "it out of the config file.",
    )
    previous_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Secrets still accepted while senders rotate to `secret`.",
    )
    tolerance: Duration = Field(
        300.0,
        gt=0,
        description="Largest difference between the signed timestamp and this node's clock; "
        "older (or future) requests are refused as possible replays.",
    )
    max_body_bytes: ByteSize = Field(
        1024 * 1024, ge=0, description="Bodies are read whole to be verified; larger get 413."
    )
    signature_header: HeaderName = Field(
        "x-sampan-signature", description="Header carrying `sha256=<hex>`."
    )
    timestamp_header: HeaderName = Field(
        "x-sampan-timestamp", description="Header carrying the signed unix time."
    )


class WebhookSignaturePlugin(Plugin):
    """Runs just after the size and IP checks and before the other auth plugins, so an
    unsigned request costs one HMAC at most."""

    name: ClassVar[str] = "webhook-signature"
    priority: ClassVar[int] = 1500
    Options: ClassVar[type[PluginOptions]] = WebhookSignatureOptions

    def __init__(self, options: WebhookSignatureOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._secrets = tuple(
            s.get_secret_value().encode() for s in (options.secret, *options.previous_secrets)
        )
        self._tolerance = options.tolerance
        self._max = options.max_body_bytes
        self._signature_header = options.signature_header.encode()
        self._timestamp_header = options.timestamp_header.encode()
        self._challenge = f'HMAC-SHA256 header="{options.signature_header}"'

    def _refuse(self, detail: str) -> Response:
        return unauthorized(self._challenge, detail)

    async def on_request(self, request: Request) -> Response | None:
        headers = request.headers
        signature = headers.get(self._signature_header)
        if signature is None:
            return self._refuse("The request is not signed.")
        digests = parse_signature_header(signature)
        if not digests:
            return self._refuse("The signature header is malformed (expected sha256=<hex>).")
        timestamp = parse_timestamp(headers.get(self._timestamp_header))
        if timestamp is None:
            return self._refuse("The signature timestamp is missing or malformed.")
        if abs(time.time() - timestamp) > self._tolerance:
            return self._refuse("The signature timestamp is outside the accepted window.")
        try:
            body = await request.body.read(self._max)
        except BodyTooLarge:
            return problem(
                413,
                "Content Too Large",
                f"Signed bodies on this route are limited to {self._max} bytes.",
            )
        signed = b"%d." % timestamp + body
        matched = False
        for secret in self._secrets:
            expected = hmac.new(secret, signed, hashlib.sha256).hexdigest().encode()
            for digest in digests:
                # No early exit: the time taken does not depend on which entry matched.
                matched |= hmac.compare_digest(expected, digest)
        if not matched:
            return self._refuse("The signature does not match.")
        return None
