from __future__ import annotations

import pytest

from sampan.gateway.plugins.base import AuthenticatedConsumer
from sampan.gateway.plugins.errors import PluginConfigError


def with_consumer(request_factory, *groups: str, anonymous: bool = False):
    request = request_factory()
    request.state["consumer"] = AuthenticatedConsumer("u", frozenset(groups))
    if anonymous:
        request.state["consumer_anonymous"] = True
    return request


async def test_allow_and_deny(build, request_factory) -> None:
    plugin = build("acl", {"allow": ["staff", "partners"], "deny": ["blocked"]})
    assert await plugin.on_request(with_consumer(request_factory, "staff")) is None
    assert await plugin.on_request(with_consumer(request_factory, "partners", "x")) is None
    for groups in [(), ("other",), ("staff", "blocked")]:
        response = await plugin.on_request(with_consumer(request_factory, *groups))
        assert response is not None and response.status == 403
        assert response.headers.get(b"content-type") == b"application/problem+json"


async def test_deny_only(build, request_factory) -> None:
    plugin = build("acl", {"deny": ["blocked"]})
    assert await plugin.on_request(with_consumer(request_factory)) is None
    assert (await plugin.on_request(with_consumer(request_factory, "blocked"))).status == 403


async def test_needs_consumer(build, request_factory) -> None:
    plugin = build("acl", {"allow": ["staff"]})
    response = await plugin.on_request(request_factory())
    assert response is not None and response.status == 401
    anonymous = with_consumer(request_factory, "staff", anonymous=True)
    assert (await plugin.on_request(anonymous)).status == 401
    lenient = build("acl", {"allow": ["staff"], "allow_anonymous": True})
    assert await lenient.on_request(anonymous) is None


def test_needs_a_rule(build) -> None:
    with pytest.raises(PluginConfigError, match="give allow, deny or both"):
        build("acl", {})
