from __future__ import annotations

import orjson


class StreamingBody:
    """Stands in for the server's streaming body, which has a settable limit."""

    def __init__(self) -> None:
        self.length = None
        self.limit: int | None = 10_000_000

    async def chunks(self):  # pragma: no cover - not read here
        yield b""

    async def read(self, limit=None):  # pragma: no cover
        return b""


async def test_declared_length(build, request_factory) -> None:
    plugin = build("request-size-limit", {"max_bytes": "1KiB"})
    ok = request_factory("POST", headers=[("content-length", "1024")])
    assert await plugin.on_request(ok) is None
    response = await plugin.on_request(
        request_factory("POST", headers=[("content-length", "1025")])
    )
    assert response is not None and response.status == 413
    assert orjson.loads(response.body)["max_bytes"] == 1024


async def test_chunked_sets_body_limit(build, request_factory) -> None:
    plugin = build("request-size-limit", {"max_bytes": 100})
    request = request_factory("POST", headers=[("transfer-encoding", "chunked")])
    request.body = StreamingBody()
    assert await plugin.on_request(request) is None
    assert request.body.limit == 100
    # a body object without a limit attribute is left alone
    assert (
        await plugin.on_request(request_factory("POST", headers=[("transfer-encoding", "chunked")]))
        is None
    )


async def test_require_content_length(build, request_factory) -> None:
    plugin = build("request-size-limit", {"max_bytes": 100, "require_content_length": True})
    response = await plugin.on_request(
        request_factory("POST", headers=[("transfer-encoding", "chunked")])
    )
    assert response is not None and response.status == 411
    assert await plugin.on_request(request_factory("GET")) is None
