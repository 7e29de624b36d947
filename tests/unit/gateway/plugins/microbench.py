"""Micro-benchmark of the hot plugins: µs per ``on_request`` (+ ``on_response``).

Run: ``.venv/bin/python tests/unit/gateway/plugins/microbench.py``. Not collected by pytest
(no ``test_`` prefix); the numbers go in docs/plugins.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sampan.gateway.config import ConsumerConfig
from sampan.gateway.plugins.base import Plugin, PluginEnvironment
from sampan.gateway.plugins.registry import build_plugin
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.observe.metrics import Metrics

N = 100_000


def _request() -> Request:
    headers = Headers(
        [
            (b"host", b"api.example.vn"),
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"application/json"),
            (b"apikey", b"key-500"),
        ]
    )
    return Request("GET", b"/orders/1", "/orders/1", b"", headers, client=("10.0.0.1", 1))


async def _measure(plugin: Plugin, make: Callable[[], Request], with_response: bool) -> float:
    requests = [make() for _ in range(N)]
    response = Response(200)
    on_request = plugin.on_request
    on_response = plugin.on_response
    started = time.perf_counter()
    for request in requests:
        await on_request(request)
        if with_response:
            await on_response(request, response)
    elapsed = time.perf_counter() - started
    # the baseline: the same loop around a no-op coroutine
    started = time.perf_counter()
    for request in requests:
        await _noop(request)
    baseline = time.perf_counter() - started
    return (elapsed - baseline) / N * 1e6


async def _noop(request: Request) -> None:
    return None


async def main() -> None:
    consumers = [
        ConsumerConfig.model_validate({"username": f"c{i}", "key_auth": [{"key": f"key-{i}"}]})
        for i in range(1000)
    ]
    env = PluginEnvironment(Metrics(), consumers, "bench", log=logging.getLogger("bench"))
    cases: list[tuple[str, dict[str, Any], bool]] = [
        ("request-id", {}, True),
        ("key-auth", {}, False),
        ("rate-limit", {"rate": 10**9, "limit_by": "ip"}, True),
    ]
    print(f"{'plugin':<14} {'µs/request':>10}")
    for name, config, with_response in cases:
        plugin = build_plugin(name, config, env)
        best = min([await _measure(plugin, _request, with_response) for _ in range(3)])
        print(f"{name:<14} {best:>10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
