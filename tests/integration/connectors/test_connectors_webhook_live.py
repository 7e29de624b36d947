"""Webhook sink → a local HTTP server whose handler runs the webhook-signature plugin."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httptools
import pytest

from sampan.flows.connectors import webhook
from sampan.flows.connectors.webhook import WebhookRejected
from sampan.flows.message import FlowMessage
from sampan.gateway.plugins import webhook_signature
from sampan.gateway.plugins.base import PluginEnvironment
from sampan.gateway.plugins.webhook_signature import (
    WebhookSignatureOptions,
    WebhookSignaturePlugin,
)
from sampan.http.body import BytesBody
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.upstream_body import UpstreamError
from sampan.observe.metrics import Metrics

SECRET = "integration-test-shared-secret"


@dataclass
class Received:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    url: bytes = b""
    done: bool = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


@dataclass
class Server:
    port: int
    accepted: list[bytes] = field(default_factory=list)
    plugin: WebhookSignaturePlugin | None = None
    clock_skew: float = 0.0


async def handle(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One request per connection: parse, run the plugin, answer 204 or its response."""
    received = Received()
    parser = httptools.HttpRequestParser(received)
    while not received.done:
        data = await reader.read(65536)
        if not data:
            return
        parser.feed_data(data)
    request = Request(
        parser.get_method().decode(),
        received.url,
        received.url.decode(),
        b"",
        Headers(received.headers),
        body=BytesBody(received.body),
    )
    assert server.plugin is not None
    response = await server.plugin.on_request(request)
    if response is None:
        server.accepted.append(await request.body.read())
        status, body, ctype = 204, b"", b"text/plain"
    else:
        status, body = response.status, bytes(response.body)
        ctype = response.headers.get(b"content-type") or b"text/plain"
    writer.write(
        b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, ctype, len(body))
        + body
    )
    await writer.drain()
    writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)
    env = PluginEnvironment(
        metrics=Metrics(), consumers=[], route="hook", log=logging.getLogger("t")
    )
    state.plugin = WebhookSignaturePlugin(
        WebhookSignatureOptions.model_validate({"secret": SECRET}), env
    )

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(state, reader, writer)

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    yield state
    listener.close()
    await listener.wait_closed()


def make_sink(ctx, port: int, **options: Any):
    config = webhook.WebhookConfig.model_validate(
        {"webhook": f"http://127.0.0.1:{port}/hook", "secret": SECRET, **options}
    )
    return webhook.SINK.build(config, ctx)


async def test_signed_delivery_round_trip(ctx, server: Server) -> None:
    sink = make_sink(ctx, server.port, headers={"x-tenant": "hcm"})
    await sink.start()
    try:
        await sink.send(FlowMessage({"order": 1, "name": "Nguyễn"}))
        await sink.send(FlowMessage(raw=b'{"raw": true}'))
    finally:
        await sink.stop()
    assert server.accepted == ['{"order":1,"name":"Nguyễn"}'.encode(), b'{"raw": true}']


async def test_wrong_secret_is_refused_with_401(ctx, server: Server) -> None:
    sink = make_sink(ctx, server.port, secret="some-other-secret-value")
    await sink.start()
    try:
        with pytest.raises(WebhookRejected) as info:
            await sink.send(FlowMessage({"order": 2}))
    finally:
        await sink.stop()
    assert info.value.status == 401
    assert "signature does not match" in info.value.snippet
    assert server.accepted == []


async def test_stale_timestamp_is_refused(ctx, server: Server, monkeypatch) -> None:
    sink = make_sink(ctx, server.port)
    await sink.start()
    real = time.time
    # The receiver's clock is 10 minutes ahead: the signed timestamp looks stale to it.
    monkeypatch.setattr(webhook_signature, "time", SimpleNamespace(time=lambda: real() + 600))
    try:
        with pytest.raises(WebhookRejected) as info:
            await sink.send(FlowMessage({"order": 3}))
    finally:
        await sink.stop()
    assert info.value.status == 401 and "window" in info.value.snippet


async def test_unsigned_and_unreachable(ctx, server: Server) -> None:
    unsigned = webhook.SINK.build(
        webhook.WebhookConfig.model_validate({"webhook": f"http://127.0.0.1:{server.port}/h"}),
        ctx,
    )
    await unsigned.start()
    with pytest.raises(WebhookRejected, match="401"):
        await unsigned.send(FlowMessage({"a": 1}))
    await unsigned.stop()
    nowhere = make_sink(ctx, 1, timeout="1s")
    await nowhere.start()
    with pytest.raises(UpstreamError) as refused:
        await nowhere.send(FlowMessage({"a": 1}))
    assert refused.value.kind == "connect"
    await nowhere.stop()
