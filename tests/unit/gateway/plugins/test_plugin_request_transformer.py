from __future__ import annotations

import orjson
import pytest

from sampan.gateway.plugins.errors import PluginConfigError

CONFIG = {
    "headers": {
        "remove": ["x-internal"],
        "rename": {"x-old": "x-new"},
        "set": {"x-env": "prod"},
        "add": {"x-default": "1", "accept": "application/json"},
    },
    "query": {"remove": ["debug"], "set": {"v": "2"}, "add": {"lang": "vi", "page": "1"}},
    "body": {
        "remove": ["password", "meta.trace"],
        "rename": {"name": "customer.name"},
        "set": {"source": "gateway", "meta.version": 2},
        "add": {"tags": ["new"], "currency": "VND"},
    },
}


async def test_headers_query_body(build, request_factory) -> None:
    plugin = build("request-transformer", CONFIG)
    body = orjson.dumps(
        {"name": "Lan", "password": "x", "meta": {"trace": 1, "keep": True}, "currency": "USD"}
    )
    request = request_factory(
        "POST",
        query=b"debug=1&v=1&page=3&q=a+b",
        headers=[
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", str(len(body))),
            ("x-internal", "secret"),
            ("x-old", "o"),
            ("x-env", "dev"),
            ("accept", "text/html"),
        ],
        body=body,
    )
    assert await plugin.on_request(request) is None
    h = request.headers
    assert b"x-internal" not in h and b"x-old" not in h
    assert h.get(b"x-new") == b"o"
    assert h.get_all(b"x-env") == [b"prod"]
    assert h.get(b"x-default") == b"1"
    assert h.get_all(b"accept") == [b"text/html"]  # add never overwrites
    assert request.query == b"page=3&q=a+b&v=2&lang=vi"
    data = await request.body.read()
    assert orjson.loads(data) == {
        "customer": {"name": "Lan"},
        "meta": {"keep": True, "version": 2},
        "currency": "USD",
        "source": "gateway",
        "tags": ["new"],
    }
    assert h.get(b"content-length") == str(len(data)).encode()


async def test_config_values_not_shared_between_requests(build, request_factory) -> None:
    plugin = build("request-transformer", {"body": {"set": {"a": {"b": []}}}})
    for _ in range(2):
        request = request_factory(
            "POST", headers=[("content-type", "application/json")], body=b'{"x": 1}'
        )
        await plugin.on_request(request)
        doc = orjson.loads(await request.body.read())
        assert doc == {"x": 1, "a": {"b": []}}


async def test_non_json_untouched_bad_json_400_too_large_413(build, request_factory) -> None:
    plugin = build("request-transformer", {"body": {"set": {"a": 1}}, "max_body_bytes": 20})
    text = request_factory("POST", headers=[("content-type", "text/plain")], body=b"{}")
    assert await plugin.on_request(text) is None
    assert await text.body.read() == b"{}"
    array = request_factory("POST", headers=[("content-type", "application/json")], body=b"[1]")
    assert await plugin.on_request(array) is None
    assert await array.body.read() == b"[1]"
    bad = request_factory("POST", headers=[("content-type", "application/json")], body=b"{nope")
    assert (await plugin.on_request(bad)).status == 400
    big = request_factory(
        "POST",
        headers=[("content-type", "application/vnd.api+json")],
        body=b'{"a": "' + b"x" * 30 + b'"}',
    )
    response = await plugin.on_request(big)
    assert response is not None and response.status == 413


def test_bad_config_located(build) -> None:
    with pytest.raises(PluginConfigError) as info:
        build(
            "request-transformer",
            {
                "headers": {"set": {"bad header": "x", "content-length": "1"}},
                "body": {"remove": ["a..b"]},
            },
        )
    paths = {p for p, _ in info.value.errors}
    assert "headers.set" in paths or any(p.startswith("headers.set") for p in paths)
    assert "body.remove[0]" in paths
    with pytest.raises(PluginConfigError, match="control characters"):
        build("request-transformer", {"headers": {"add": {"x-a": "1\r\nx-b: 2"}}})
