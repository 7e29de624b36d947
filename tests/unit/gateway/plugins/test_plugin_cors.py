from __future__ import annotations

import pytest

from sampan.gateway.plugins.errors import PluginConfigError
from sampan.http.headers import Headers
from sampan.http.response import Response

CONFIG = {
    "origins": ["https://shop.example.vn"],
    "origin_regex": [r"https://[a-z0-9-]+\.example\.vn"],
    "credentials": True,
    "exposed_headers": ["X-Request-Id"],
    "max_age": "1h",
}


def preflight(request_factory, origin: str, method: str = "POST", headers: str | None = None):
    items = [("origin", origin), ("access-control-request-method", method)]
    if headers is not None:
        items.append(("access-control-request-headers", headers))
    return request_factory("OPTIONS", headers=items)


async def test_preflight_allowed(build, request_factory) -> None:
    plugin = build("cors", CONFIG)
    request = preflight(request_factory, "https://admin.example.vn", headers="content-type, x-a")
    response = await plugin.on_request(request)
    assert response is not None and response.status == 204
    h = response.headers
    assert h.get(b"access-control-allow-origin") == b"https://admin.example.vn"
    assert h.get(b"access-control-allow-credentials") == b"true"
    assert h.get(b"access-control-allow-methods") == b"GET, HEAD, PUT, PATCH, POST, DELETE"
    assert h.get(b"access-control-allow-headers") == b"content-type, x-a"
    assert h.get(b"access-control-max-age") == b"3600"
    assert b"Origin" in h.get(b"vary")
    # the chain runs on_response on the preflight answer too: it must stay as it is
    again = await plugin.on_response(request, response)
    assert again.headers.get_all(b"access-control-allow-origin") == [b"https://admin.example.vn"]


@pytest.mark.parametrize(
    ("origin", "method"),
    [
        ("https://evil.example.com", "POST"),
        ("https://example.vn.evil.com", "POST"),  # regex is a full match
        ("https://shop.example.vn", "TRACE"),
    ],
)
async def test_preflight_refused(build, request_factory, origin, method) -> None:
    plugin = build("cors", CONFIG)
    response = await plugin.on_request(preflight(request_factory, origin, method))
    assert response is not None and response.status == 403
    assert response.headers.get(b"content-type") == b"application/problem+json"
    assert b"access-control-allow-origin" not in response.headers


async def test_malformed_requested_headers_not_reflected(build, request_factory) -> None:
    plugin = build("cors", {"origins": ["*"]})
    response = await plugin.on_request(
        preflight(request_factory, "https://a.vn", headers='x-a, "bad"')
    )
    assert response.status == 204
    assert b"access-control-allow-headers" not in response.headers
    assert response.headers.get(b"access-control-allow-origin") == b"*"


async def test_actual_request(build, request_factory) -> None:
    plugin = build("cors", CONFIG)
    request = request_factory("GET", headers=[("origin", "https://shop.example.vn")])
    assert await plugin.on_request(request) is None
    response = await plugin.on_response(request, Response(200, Headers([(b"vary", b"Accept")])))
    h = response.headers
    assert h.get(b"access-control-allow-origin") == b"https://shop.example.vn"
    assert h.get(b"access-control-expose-headers") == b"x-request-id"
    assert h.get_all(b"vary") == [b"Accept", b"Origin"]
    other = request_factory("GET", headers=[("origin", "https://evil.com")])
    response = await plugin.on_response(other, Response(200))
    assert b"access-control-allow-origin" not in response.headers
    assert response.headers.get(b"vary") == b"Origin"


async def test_plain_options_passes(build, request_factory) -> None:
    plugin = build("cors", {"origins": ["*"]})
    assert await plugin.on_request(request_factory("OPTIONS")) is None


def test_unsafe_configs_refused(build) -> None:
    with pytest.raises(PluginConfigError, match="list the origins"):
        build("cors", {"origins": ["*"], "credentials": True})
    with pytest.raises(PluginConfigError, match="origin_regex"):
        build("cors", {"origin_regex": ["(unclosed"]})
    with pytest.raises(PluginConfigError, match="host"):
        build("cors", {"origins": ["https://a.vn/"]})
