"""The webhook sink's signature and the webhook-signature gateway plugin that checks it."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sampan.flows.connectors.webhook import WebhookConfig, parse_webhook_url, sign
from sampan.gateway.plugins.base import PluginEnvironment
from sampan.gateway.plugins.webhook_signature import (
    WebhookSignatureOptions,
    WebhookSignaturePlugin,
    parse_signature_header,
    parse_timestamp,
)
from sampan.http.body import BytesBody
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.observe.metrics import Metrics

SECRET = "a-shared-secret-of-some-length"


def plugin(**options: object) -> WebhookSignaturePlugin:
    env = PluginEnvironment(
        metrics=Metrics(), consumers=[], route="r1", log=logging.getLogger("test")
    )
    parsed = WebhookSignatureOptions.model_validate({"secret": SECRET, **options})
    return WebhookSignaturePlugin(parsed, env)


def request(body: bytes, headers: dict[str, str]) -> Request:
    items = [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request("POST", b"/hook", "/hook", b"", Headers(items), body=BytesBody(body))


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    return {
        "x-sampan-timestamp": str(timestamp),
        "x-sampan-signature": sign(secret.encode(), timestamp, body),
    }


def test_sign_is_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign(b"k", 1_700_000_000, b"{}") == f"sha256={expected}"


async def test_good_signature_passes_and_body_is_kept() -> None:
    body = b'{"order": 1}'
    req = request(body, signed(body))
    assert await plugin().on_request(req) is None
    assert await req.body.read() == body  # still there for the proxy


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "not signed"),
        ({"x-sampan-signature": "sha256=zz", "x-sampan-timestamp": "1"}, "malformed"),
        ({"x-sampan-signature": "sha256=" + "0" * 64}, "timestamp"),
        ({"x-sampan-signature": "sha256=" + "0" * 64, "x-sampan-timestamp": "-5"}, "timestamp"),
    ],
)
async def test_refusals_are_401_problem_json(headers: dict[str, str], detail: str) -> None:
    response = await plugin().on_request(request(b"{}", headers))
    assert response is not None and response.status == 401
    assert response.headers.get(b"content-type") == b"application/problem+json"
    assert response.headers.get(b"www-authenticate") is not None
    assert detail in orjson.loads(response.body)["detail"]


async def test_wrong_secret_tampered_body_and_stale_timestamp() -> None:
    body = b'{"amount": 10}'
    check = plugin()
    for req in (
        request(body, signed(body, secret="another-secret-entirely")),
        request(b'{"amount": 99}', signed(body)),
        request(body, signed(body, at=int(time.time()) - 301)),
        request(body, signed(body, at=int(time.time()) + 301)),
    ):
        response = await check.on_request(req)
        assert response is not None and response.status == 401


async def test_tolerance_and_rotation() -> None:
    body = b"x"
    old = "the-previous-secret-value"
    check = plugin(tolerance="10m", previous_secrets=[old])
    assert await check.on_request(request(body, signed(body, at=int(time.time()) - 500))) is None
    assert await check.on_request(request(body, signed(body, secret=old))) is None
    both = signed(body, secret="not-a-known-secret-value")
    both["x-sampan-signature"] += ", " + signed(body)["x-sampan-signature"]
    assert await check.on_request(request(body, both)) is None


async def test_large_body_413() -> None:
    body = b"x" * 2000
    response = await plugin(max_body_bytes=1000).on_request(request(body, signed(body)))
    assert response is not None and response.status == 413


def test_short_secret_refused() -> None:
    with pytest.raises(ValidationError):
        WebhookSignatureOptions.model_validate({"secret": "short"})


digests = st.binary(min_size=32, max_size=32).map(lambda b: b.hex().encode())


@given(st.lists(digests, min_size=1, max_size=8), st.sampled_from([b",", b", ", b" ,\t"]))
def test_signature_header_round_trip(values: list[bytes], sep: bytes) -> None:
    header = sep.join(b"sha256=" + v for v in values)
    assert parse_signature_header(header) == values
    assert parse_signature_header(header.upper().replace(b"SHA256", b"sha256")) == values


@given(st.binary(max_size=600))
def test_signature_header_never_raises(value: bytes) -> None:
    for digest in parse_signature_header(value):
        assert len(digest) == 64 and digest == digest.lower()
        int(digest, 16)


@given(st.lists(digests, min_size=1, max_size=3))
def test_other_schemes_are_skipped_but_garbage_voids(values: list[bytes]) -> None:
    header = b"v1=abc, " + b", ".join(b"sha256=" + v for v in values)
    assert parse_signature_header(header) == values
    assert parse_signature_header(header + b", sha256=nothex") == []
    assert parse_signature_header(header + b", garbage") == []
    assert parse_signature_header(b",".join([b"sha256=" + values[0]] * 9)) == []


@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_timestamps(value: int) -> None:
    assert parse_timestamp(str(value).encode()) == value
    assert parse_timestamp(b" %d " % value) == value
    assert parse_timestamp(b"-%d" % value) is None
    assert parse_timestamp(b"%d.5" % value) is None


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "target"),
    [
        ("http://127.0.0.1:8080/hooks/n", "127.0.0.1", 8080, False, b"/hooks/n"),
        (
            "https://hooks.example.vn/a?token=x&b=1",
            "hooks.example.vn",
            443,
            True,
            b"/a?token=x&b=1",
        ),
        ("http://[::1]/", "::1", 80, False, b"/"),
        ("http://example.vn", "example.vn", 80, False, b"/"),
        ("https://example.vn/đơn-hàng", "example.vn", 443, True, b"/%C4%91%C6%A1n-h%C3%A0ng"),
        ("https://example.vn/a%20b", "example.vn", 443, True, b"/a%20b"),
    ],
)
def test_webhook_url_gives_the_endpoint_and_the_request_target(
    url: str, host: str, port: int, tls: bool, target: bytes
) -> None:
    endpoint, got = parse_webhook_url(url)
    assert (endpoint.host, endpoint.port, endpoint.tls, got) == (host, port, tls, target)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.vn/x", "http:///nohost", "https://user:pw@example.vn/", "http://a.vn:99999/"],
)
def test_webhook_url_refusals(url: str) -> None:
    with pytest.raises(ValueError):
        parse_webhook_url(url)
    with pytest.raises(ValidationError):
        WebhookConfig.model_validate({"webhook": url})
