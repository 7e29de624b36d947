"""acl: allow or deny consumers by group. Needs an auth plugin earlier in the chain."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from sampan.gateway.plugins.base import (
    AuthenticatedConsumer,
    Plugin,
    PluginEnvironment,
    PluginOptions,
)
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, problem


class AclOptions(PluginOptions):
    allow: list[str] = Field(
        default_factory=list,
        description="Groups allowed in: a consumer must belong to at least one (when given).",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Groups kept out: a consumer in any of them is refused, even if also in "
        "an allowed group (deny wins).",
    )
    allow_anonymous: bool = Field(
        False,
        description="Let the anonymous consumer of key-auth/jwt through the group checks "
        "(it is refused with 401 otherwise).",
    )

    @model_validator(mode="after")
    def _some(self) -> AclOptions:
        if not self.allow and not self.deny:
            raise ValueError("give allow, deny or both")
        return self


class AclPlugin(Plugin):
    """A request without an authenticated consumer gets 401 (authenticate first: the auth
    plugins run before acl by priority); a consumer outside the rules gets 403."""

    name: ClassVar[str] = "acl"
    priority: ClassVar[int] = 950
    Options: ClassVar[type[PluginOptions]] = AclOptions

    def __init__(self, options: AclOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._allow = frozenset(options.allow)
        self._deny = frozenset(options.deny)
        self._allow_anonymous = options.allow_anonymous

    async def on_request(self, request: Request) -> Response | None:
        consumer = request.state.get("consumer")
        anonymous = request.state.get("consumer_anonymous", False)
        if not isinstance(consumer, AuthenticatedConsumer) or (
            anonymous and not self._allow_anonymous
        ):
            return problem(
                401,
                "Unauthorized",
                "This route needs an authenticated consumer.",
                headers=Headers([(b"www-authenticate", b'Bearer realm="sampan"')]),
            )
        groups = consumer.groups
        if (self._deny and not groups.isdisjoint(self._deny)) or (
            self._allow and groups.isdisjoint(self._allow)
        ):
            return problem(403, "Forbidden", "This consumer may not use this route.")
        return None
