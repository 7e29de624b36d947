"""key-auth: callers present an API key; the key names a consumer.

Only SHA-256 digests of keys are held in memory. A presented key is hashed and looked up by
digest; a dict lookup on a digest leaks, through timing, at most how a *hash* compares, which
tells an attacker nothing usable about any key (finding a key with a chosen digest prefix is
a preimage search). The final check still uses ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import ClassVar
from urllib.parse import unquote_to_bytes

from pydantic import Field, field_validator

from sampan.gateway.plugins._auth import (
    ANONYMOUS_STATE,
    anonymous_consumer,
    consumer_of,
    quote,
    unauthorized,
)
from sampan.gateway.plugins._support import HeaderName
from sampan.gateway.plugins.base import (
    AuthenticatedConsumer,
    Plugin,
    PluginEnvironment,
    PluginOptions,
)
from sampan.gateway.plugins.errors import PluginConfigError
from sampan.http.request import Request
from sampan.http.response import Response

MAX_KEY_BYTES = 1024


class KeyAuthOptions(PluginOptions):
    key_names: list[HeaderName] = Field(
        default_factory=lambda: ["apikey", "x-api-key"],
        min_length=1,
        description="Header names (and, with `key_in_query`, query parameter names) that may "
        "carry the key; the first one present is used.",
    )
    key_in_header: bool = Field(True, description="Look for the key in the request headers.")
    key_in_query: bool = Field(
        False,
        description="Also look in the query string. Off by default: URLs end up in logs, "
        "browser history and Referer headers.",
    )
    hide_credentials: bool = Field(
        True,
        description="Remove the key (header and query parameter) before the request is "
        "proxied, so upstreams never see it.",
    )
    anonymous: str | None = Field(
        None,
        description="Username of the consumer to use when the request carries no key at all "
        "(a wrong key is still rejected). Its groups come from `consumers` if it is defined "
        "there. `request.state['consumer_anonymous']` is then True.",
    )
    realm: str = Field("sampan", description="Realm in the `WWW-Authenticate` challenge.")

    @field_validator("key_names")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))


class KeyAuthPlugin(Plugin):
    name: ClassVar[str] = "key-auth"
    priority: ClassVar[int] = 1250
    Options: ClassVar[type[PluginOptions]] = KeyAuthOptions

    def __init__(self, options: KeyAuthOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._names = tuple(n.encode() for n in options.key_names)
        self._name_set = frozenset(self._names)
        self._in_header = options.key_in_header
        self._in_query = options.key_in_query
        self._hide = options.hide_credentials
        self._anonymous = anonymous_consumer(options.anonymous, env.consumers)
        self._challenge = f'Key realm="{quote(options.realm)}"'
        table: dict[bytes, tuple[bytes, AuthenticatedConsumer]] = {}
        owners: dict[bytes, str] = {}
        errors: list[tuple[str, str]] = []
        for consumer in env.consumers:
            identity = consumer_of(consumer)
            for credential in consumer.key_auth:
                if credential.key is not None:
                    digest = hashlib.sha256(credential.key.encode()).digest()
                else:
                    assert credential.key_sha256 is not None
                    digest = bytes.fromhex(credential.key_sha256)
                if digest in owners and owners[digest] != consumer.username:
                    errors.append(
                        (
                            "",
                            f"consumers {owners[digest]!r} and {consumer.username!r} share an "
                            "API key; keys must identify one consumer",
                        )
                    )
                owners[digest] = consumer.username
                table[digest] = (digest, identity)
        if errors:
            raise PluginConfigError(self.name, errors)
        self._table = table

    def fast_path_spec(self) -> tuple[str, object] | None:
        """Keys from headers only: (names, hide, anonymous username, [(digest, username)])."""
        if self._in_query or not self._in_header:
            return None
        anonymous = self._anonymous.username if self._anonymous is not None else None
        keys = [(digest, identity.username) for digest, (_, identity) in self._table.items()]
        return self.name, (list(self._names), self._hide, anonymous, keys)

    def _find_in_query(self, request: Request) -> bytes | None:
        if not request.query:
            return None
        for pair in request.query.split(b"&"):
            name, _, value = pair.partition(b"=")
            if unquote_to_bytes(name.replace(b"+", b" ")).lower() in self._name_set:
                return unquote_to_bytes(value.replace(b"+", b" "))
        return None

    def _strip_query(self, request: Request) -> None:
        kept = [
            pair
            for pair in request.query.split(b"&")
            if unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" ")).lower()
            not in self._name_set
        ]
        request.query = b"&".join(kept)

    async def on_request(self, request: Request) -> Response | None:
        key: bytes | None = None
        if self._in_header:
            names = self._name_set
            for name, value in request.headers.items:
                if name in names:
                    key = value
                    break
        from_query = False
        if key is None and self._in_query:
            key = self._find_in_query(request)
            from_query = key is not None
        if key is None:
            if self._anonymous is not None:
                request.state["consumer"] = self._anonymous
                request.state[ANONYMOUS_STATE] = True
                return None
            return unauthorized(self._challenge, "No API key found in the request.")
        if not key or len(key) > MAX_KEY_BYTES:
            return unauthorized(self._challenge, "Invalid API key.")
        digest = hashlib.sha256(key).digest()
        found = self._table.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return unauthorized(self._challenge, "Invalid API key.")
        request.state["consumer"] = found[1]
        if self._hide:
            if self._in_header:
                names = self._name_set
                request.headers.items = [kv for kv in request.headers.items if kv[0] not in names]
            if self._in_query and (from_query or request.query):
                self._strip_query(request)
        return None
