from __future__ import annotations

import asyncio
import re
import time

from sampan.gateway.plugins.request_id import RequestIdPlugin
from sampan.http.response import Response

HEX32 = re.compile(r"[0-9a-f]{32}")


async def test_generates_uuid4_and_sets_everywhere(build, request_factory) -> None:
    plugin = build("request-id")
    assert isinstance(plugin, RequestIdPlugin)
    request = request_factory()
    assert await plugin.on_request(request) is None
    rid = request.state["request_id"]
    assert HEX32.fullmatch(rid)
    assert rid[12] == "4" and rid[16] in "89ab"
    assert request.headers.get(b"x-request-id") == rid.encode()
    response = await plugin.on_response(request, Response(200))
    assert response.headers.get_all(b"x-request-id") == [rid.encode()]


async def test_propagates_valid_incoming(build, request_factory) -> None:
    plugin = build("request-id")
    request = request_factory(headers=[("x-request-id", "abc-123:def")])
    await plugin.on_request(request)
    assert request.state["request_id"] == "abc-123:def"
    assert request.headers.get_all(b"x-request-id") == [b"abc-123:def"]


async def test_rejects_injection_and_overlong(build, request_factory) -> None:
    plugin = build("request-id", {"max_length": 16})
    bad_values = [
        b"abc\r\nx-admin: 1",
        b"has space",
        b'quote"',
        b"x" * 17,
        b"",
        "vi\u1ec7t".encode(),
    ]
    for bad in bad_values:
        request = request_factory(headers=[(b"x-request-id", bad)])
        await plugin.on_request(request)
        rid = request.state["request_id"]
        assert HEX32.fullmatch(rid), bad
        assert request.headers.get_all(b"x-request-id") == [rid.encode()]


async def test_duplicate_incoming_replaced(build, request_factory) -> None:
    plugin = build("request-id")
    request = request_factory(headers=[("x-request-id", "a"), ("x-request-id", "b")])
    await plugin.on_request(request)
    assert request.state["request_id"] not in ("a", "b")
    assert len(request.headers.get_all(b"x-request-id")) == 1


async def test_always_generate(build, request_factory) -> None:
    plugin = build("request-id", {"trust_incoming": False, "header_name": "X-Correlation-ID"})
    request = request_factory(headers=[("x-correlation-id", "client-chosen")])
    await plugin.on_request(request)
    assert request.state["request_id"] != "client-chosen"
    assert request.headers.get(b"x-correlation-id") == request.state["request_id"].encode()


async def test_time_ordered_ids_sort(build, request_factory) -> None:
    plugin = build("request-id", {"generator": "time-ordered", "echo_downstream": False})
    ids = []
    for _ in range(3):
        request = request_factory()
        await plugin.on_request(request)
        ids.append(request.state["request_id"])
        await asyncio.sleep(0.002)
    assert ids == sorted(ids)
    assert all(i[12] == "7" for i in ids)
    ms = int(ids[0][:12], 16)
    assert abs(ms - time.time() * 1000) < 5000
    response = await plugin.on_response(request, Response(200))
    assert b"x-request-id" not in response.headers
