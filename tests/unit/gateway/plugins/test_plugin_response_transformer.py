from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from sampan.http.headers import Headers
from sampan.http.response import Response

CONFIG = {
    "headers": {"remove": ["server"], "add": {"x-powered-by": "sampan"}},
    "body": {"remove": ["internal"], "set": {"meta.gateway": "sampan"}},
    "max_body_bytes": 100,
}


def json_response(body: bytes | AsyncIterator[bytes], **headers: str) -> Response:
    items = [(b"content-type", b"application/json"), (b"server", b"upstream")]
    items += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Response(200, Headers(items), body)


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def collect(body: bytes | AsyncIterator[bytes]) -> bytes:
    if isinstance(body, bytes):
        return body
    return b"".join([c async for c in body])


async def test_bytes_body(build, request_factory) -> None:
    plugin = build("response-transformer", CONFIG)
    response = await plugin.on_response(
        request_factory(), json_response(b'{"id": 1, "internal": "x"}', content_length="26")
    )
    assert orjson.loads(response.body) == {"id": 1, "meta": {"gateway": "sampan"}}
    assert response.headers.get(b"content-length") == str(len(response.body)).encode()
    assert b"server" not in response.headers
    assert response.headers.get(b"x-powered-by") == b"sampan"


async def test_small_stream_transformed(build, request_factory) -> None:
    plugin = build("response-transformer", CONFIG)
    response = await plugin.on_response(
        request_factory(), json_response(stream(b'{"id":', b' 2, "internal": 1}'))
    )
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {"id": 2, "meta": {"gateway": "sampan"}}


async def test_large_stream_passed_through(build, request_factory) -> None:
    plugin = build("response-transformer", CONFIG)
    chunks = [b'{"a": "', b"x" * 60, b"x" * 60, b'"}']
    response = await plugin.on_response(request_factory(), json_response(stream(*chunks)))
    assert await collect(response.body) == b"".join(chunks)
    assert b"server" not in response.headers  # headers are still transformed


async def test_untouched_cases(build, request_factory) -> None:
    plugin = build("response-transformer", CONFIG)
    cases = [
        Response(200, Headers([(b"content-type", b"text/plain")]), b'{"internal": 1}'),
        json_response(b'{"internal": 1}', content_encoding="gzip"),
        json_response(b"[1, 2]"),
        json_response(b"{broken"),
        json_response(stream(b"{broken")),
        json_response(b'{"internal": "' + b"x" * 200 + b'"}'),
    ]
    for response in cases:
        original = response.body if isinstance(response.body, bytes) else None
        out = await plugin.on_response(request_factory(), response)
        if original is not None:
            assert out.body == original
        else:
            assert await collect(out.body) == b"{broken"
    head = json_response(b'{"internal": 1}')
    out = await plugin.on_response(request_factory("HEAD"), head)
    assert out.body == b'{"internal": 1}'
