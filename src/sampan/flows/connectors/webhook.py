"""webhook: POST each message to a URL, signed with HMAC-SHA256 over timestamp and body.

The receiver checks ``x-sampan-signature: sha256=<hex>`` against
``HMAC-SHA256(secret, "<x-sampan-timestamp>.<body>")`` (the gateway plugin
``webhook-signature`` does exactly that) and refuses stale timestamps, so a captured request
cannot be replayed later. A 2xx answer means delivered; anything else raises with the status
and the start of the answer, and the flow retries.

Requests go through sampan's own keep-alive client (the gateway's and the mesh's), not httpx:
in the demo, httpx was a third of the node's CPU.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Final, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sampan.flows.endpoint import EndpointContext, EndpointKind, Sink
from sampan.flows.message import FlowMessage
from sampan.http.body import BodyTooLarge, BytesBody
from sampan.http.client import ConnectionPool, Endpoint, endpoint_of
from sampan.http.headers import Headers
from sampan.units import Duration

HEADER_TIMESTAMP: Final = "x-sampan-timestamp"
HEADER_SIGNATURE: Final = "x-sampan-signature"
SIGNATURE_SCHEME: Final = "sha256"
_SNIPPET: Final = 200
_ANSWER_LIMIT: Final = 64 * 1024
"""Most of an answer read; a longer one is dropped with its connection."""
_RESERVED: Final = frozenset({HEADER_TIMESTAMP, HEADER_SIGNATURE, "content-length", "host"})


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: str = Field(description="URL the messages are sent to (`https://...`).")
    secret: SecretStr | None = Field(
        None,
        description="Shared secret for the `x-sampan-signature` HMAC; write "
        "`${WEBHOOK_SECRET}` to keep it out of the file. Without it requests are unsigned.",
    )
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="HTTP method.")
    timeout: Duration = Field(
        5.0, gt=0, description="Longest wait for the whole exchange; longer counts as failed."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers (the signature headers cannot be overridden).",
    )
    content_type: str = Field("application/json", description="Content-Type of the request body.")

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parse_webhook_url(value)
        return value

    @field_validator("headers")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name.lower() in _RESERVED:
                raise ValueError(f"header {name!r} is set by the sink itself")
            if any(c in name + text for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: names and values cannot hold CR, LF or NUL")
        return value


def parse_webhook_url(url: str) -> tuple[Endpoint, bytes]:
    """``http(s)://host[:port]/path?query`` -> where to connect and the request target."""
    if any(c in url for c in " \r\n\0"):
        raise ValueError(f"{url!r}: spaces and control characters must be percent-encoded")
    parts = urlsplit(url.strip())
    endpoint = endpoint_of(url, parts)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # Non-ASCII (a Vietnamese path segment, say) is percent-encoded; what is encoded stays.
    return endpoint, quote(target, safe="/?&=%:@!$'()*+,;~-._").encode("ascii")


class WebhookSink(Sink):
    def __init__(self, config: WebhookConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._secret = (
            config.secret.get_secret_value().encode() if config.secret is not None else None
        )
        self._endpoint, self._target = parse_webhook_url(config.webhook)
        self._pool: ConnectionPool | None = None
        self._static = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in {"content-type": config.content_type, **config.headers}.items()
        ]

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ConnectionPool()

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def send(self, message: FlowMessage) -> None:
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        body = message.body()
        headers = Headers(list(self._static))
        if self._secret is not None:
            timestamp = int(time.time())
            headers.items.append((HEADER_TIMESTAMP.encode(), b"%d" % timestamp))
            headers.items.append(
                (HEADER_SIGNATURE.encode(), sign(self._secret, timestamp, body).encode())
            )
        timeout = self._config.timeout
        async with asyncio.timeout(timeout):  # the whole exchange, as the option says
            response = await self._pool.request(
                self._endpoint,
                self._config.method,
                self._target,
                headers,
                BytesBody(body),
                connect_timeout=timeout,
                read_timeout=timeout,
                write_timeout=timeout,
            )
            try:
                answer = await response.body.read(_ANSWER_LIMIT)
            except BodyTooLarge:
                answer = b""  # the connection is dropped; the status still counts
        if not 200 <= response.status < 300:
            snippet = answer[:_SNIPPET].decode("utf-8", "replace")
            raise WebhookRejected(response.status, snippet, self._config.webhook)


class WebhookRejected(Exception):
    """The receiver answered with a non-2xx status."""

    def __init__(self, status: int, snippet: str, url: str) -> None:
        super().__init__(f"webhook {url} answered {status}: {snippet!r}")
        self.status = status
        self.snippet = snippet


def _build(config: WebhookConfig, ctx: EndpointContext) -> Sink:
    return WebhookSink(config, ctx)


SINK: EndpointKind[WebhookConfig, Sink] = EndpointKind(
    key="webhook",
    config=WebhookConfig,
    build=_build,
    summary="POSTs each message to a URL, HMAC-SHA256 signed; 2xx means delivered.",
)
