"""What the auth plugins (key-auth, jwt) share: the consumer table and the 401 answer."""

from __future__ import annotations

from collections.abc import Sequence

from sampan.gateway.config import ConsumerConfig
from sampan.gateway.plugins.base import AuthenticatedConsumer
from sampan.http.headers import Headers
from sampan.http.response import Response, problem

ANONYMOUS_STATE = "consumer_anonymous"
"""``request.state`` key set to True when the consumer is the configured anonymous one."""


def consumer_of(config: ConsumerConfig) -> AuthenticatedConsumer:
    return AuthenticatedConsumer(config.username, frozenset(config.groups))


def anonymous_consumer(
    name: str | None, consumers: Sequence[ConsumerConfig]
) -> AuthenticatedConsumer | None:
    """The anonymous consumer: a configured consumer of that name (with its groups) or, if
    there is none, a consumer of that name without groups."""
    if name is None:
        return None
    for config in consumers:
        if config.username == name:
            return consumer_of(config)
    return AuthenticatedConsumer(name, frozenset())


def quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def unauthorized(challenge: str, detail: str) -> Response:
    headers = Headers([(b"www-authenticate", challenge.encode())])
    return problem(401, "Unauthorized", detail, headers=headers)
