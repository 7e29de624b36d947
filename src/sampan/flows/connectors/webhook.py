"""webhook: POST each message to a URL, signed with HMAC-SHA256 over timestamp and body.

The receiver checks ``x-sampan-signature: sha256=<hex>`` against
``HMAC-SHA256(secret, "<x-sampan-timestamp>.<body>")`` (the gateway plugin
``webhook-signature`` does exactly that) and refuses stale timestamps, so a captured request
cannot be replayed later. A 2xx answer means delivered; anything else raises with the status
and the start of the answer, and the flow retries.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sampan.flows.endpoint import EndpointContext, EndpointKind, Sink
from sampan.flows.message import FlowMessage
from sampan.units import Duration

HEADER_TIMESTAMP: Final = "x-sampan-timestamp"
HEADER_SIGNATURE: Final = "x-sampan-signature"
SIGNATURE_SCHEME: Final = "sha256"
_SNIPPET: Final = 200
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
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
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


class WebhookSink(Sink):
    def __init__(self, config: WebhookConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._secret = (
            config.secret.get_secret_value().encode() if config.secret is not None else None
        )
        self._client: httpx.AsyncClient | None = None
        self._static = {"content-type": config.content_type, **config.headers}

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._config.timeout)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, message: FlowMessage) -> None:
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = message.body()
        headers = dict(self._static)
        if self._secret is not None:
            timestamp = int(time.time())
            headers[HEADER_TIMESTAMP] = str(timestamp)
            headers[HEADER_SIGNATURE] = sign(self._secret, timestamp, body)
        response = await self._client.request(
            self._config.method, self._config.webhook, content=body, headers=headers
        )
        if not response.is_success:
            snippet = response.text[:_SNIPPET]
            raise WebhookRejected(response.status_code, snippet, self._config.webhook)


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
