"""Helpers for the plugin unit tests: requests built directly, no server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from sampan.gateway.config import ConsumerConfig
from sampan.gateway.plugins.base import Plugin, PluginEnvironment
from sampan.gateway.plugins.registry import build_plugin
from sampan.http.body import BytesBody
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.observe.metrics import Metrics


def make_request(
    method: str = "GET",
    path: str = "/",
    *,
    query: bytes = b"",
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes | None = None,
    client: str = "203.0.113.7",
) -> Request:
    items = [
        (
            (k if isinstance(k, bytes) else k.encode()).lower(),
            v if isinstance(v, bytes) else v.encode(),
        )
        for k, v in headers
    ]
    target = path.encode() + (b"?" + query if query else b"")
    return Request(
        method,
        target,
        path,
        query,
        Headers(items),
        body=BytesBody(body) if body is not None else BytesBody(b""),
        client=(client, 50000),
    )


def make_env(
    consumers: list[dict[str, Any]] | None = None,
    *,
    route: str | None = "r1",
    redis_url: str | None = None,
    metrics: Metrics | None = None,
) -> PluginEnvironment:
    return PluginEnvironment(
        metrics=metrics or Metrics(),
        consumers=[ConsumerConfig.model_validate(c) for c in consumers or []],
        route=route,
        redis_url=redis_url,
        log=logging.getLogger("sampan.test.plugins"),
    )


@pytest.fixture
def build() -> Callable[..., Plugin]:
    def _build(
        name: str, config: dict[str, Any] | None = None, env: PluginEnvironment | None = None
    ) -> Plugin:
        return build_plugin(name, config or {}, env or make_env())

    return _build


@pytest.fixture
def request_factory() -> Callable[..., Request]:
    return make_request


@pytest.fixture
def env_factory() -> Callable[..., PluginEnvironment]:
    return make_env
