from __future__ import annotations

import hashlib

import orjson
import pytest

from sampan.gateway.plugins.base import AuthenticatedConsumer
from sampan.gateway.plugins.errors import PluginConfigError
from sampan.gateway.plugins.registry import build_plugin

CONSUMERS = [
    {"username": "alice", "groups": ["staff"], "key_auth": [{"key": "alice-key"}]},
    {
        "username": "bob",
        "key_auth": [{"key_sha256": hashlib.sha256(b"bob-key").hexdigest()}],
    },
]


@pytest.fixture
def plugin(env_factory):
    return build_plugin("key-auth", {}, env_factory(CONSUMERS))


async def test_header_key_authenticates(plugin, request_factory) -> None:
    request = request_factory(headers=[("apikey", "alice-key"), ("accept", "*/*")])
    assert await plugin.on_request(request) is None
    assert request.state["consumer"] == AuthenticatedConsumer("alice", frozenset({"staff"}))
    assert b"apikey" not in request.headers  # hidden by default
    assert request.headers.get(b"accept") == b"*/*"


async def test_hashed_key_and_alternate_header(plugin, request_factory) -> None:
    request = request_factory(headers=[("x-api-key", "bob-key")])
    assert await plugin.on_request(request) is None
    assert request.state["consumer"].username == "bob"


def test_only_digests_kept(plugin) -> None:
    assert all(len(k) == 32 for k in plugin._table)
    assert b"alice-key" not in plugin._table


@pytest.mark.parametrize("headers", [[], [("apikey", "wrong")], [("apikey", "x" * 5000)]])
async def test_rejections_are_problem_json(plugin, request_factory, headers) -> None:
    response = await plugin.on_request(request_factory(headers=headers))
    assert response is not None and response.status == 401
    assert response.headers.get(b"content-type") == b"application/problem+json"
    assert response.headers.get(b"www-authenticate") == b'Key realm="sampan"'
    body = orjson.loads(response.body)
    assert body["status"] == 401 and body["title"] == "Unauthorized"


async def test_query_off_by_default(plugin, request_factory) -> None:
    response = await plugin.on_request(request_factory(query=b"apikey=alice-key"))
    assert response is not None and response.status == 401


async def test_query_key_hidden(env_factory, request_factory) -> None:
    plugin = build_plugin("key-auth", {"key_in_query": True}, env_factory(CONSUMERS))
    request = request_factory(query=b"a=1&apikey=alice%2Dkey&b=2")
    assert await plugin.on_request(request) is None
    assert request.state["consumer"].username == "alice"
    assert request.query == b"a=1&b=2"


async def test_keep_credentials(env_factory, request_factory) -> None:
    plugin = build_plugin("key-auth", {"hide_credentials": False}, env_factory(CONSUMERS))
    request = request_factory(headers=[("apikey", "alice-key")])
    assert await plugin.on_request(request) is None
    assert request.headers.get(b"apikey") == b"alice-key"


async def test_anonymous_only_without_key(env_factory, request_factory) -> None:
    plugin = build_plugin("key-auth", {"anonymous": "guest"}, env_factory(CONSUMERS))
    request = request_factory()
    assert await plugin.on_request(request) is None
    assert request.state["consumer"].username == "guest"
    assert request.state["consumer_anonymous"] is True
    response = await plugin.on_request(request_factory(headers=[("apikey", "nope")]))
    assert response is not None and response.status == 401


def test_shared_key_is_config_error(env_factory) -> None:
    consumers = [
        {"username": "a", "key_auth": [{"key": "same"}]},
        {"username": "b", "key_auth": [{"key": "same"}]},
    ]
    with pytest.raises(PluginConfigError, match="share an API key"):
        build_plugin("key-auth", {}, env_factory(consumers))
