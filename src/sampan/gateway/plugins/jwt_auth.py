"""jwt: callers present a signed JSON Web Token; its ``iss`` names a consumer's credential.

Each consumer credential (``consumers[].jwt``) pins *one* algorithm for its issuer. The
token header's ``alg`` must equal it before any key is touched, so ``alg: none`` and
algorithm confusion (an RS256 public key used as an HS256 secret) fail with 401, and PyJWT is
only ever given that single algorithm.

Keys come from the credential (``secret`` for HS*, ``public_key`` PEM otherwise) or from a
JWKS URL. JWKS documents are fetched on ``start`` (failures are logged, counted, and retried
on demand: an identity provider being down must not stop the gateway), cached by ``kid``,
refreshed lazily once ``jwks_cache_ttl`` has passed and immediately when a token names an
unknown ``kid`` — but never more often than ``jwks_min_refresh_interval`` per URL, so tokens
with random ``kid`` values cannot turn the gateway into a request amplifier against the
identity provider. Concurrent refreshes of one URL are merged into one fetch; a failed
refresh keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote_plus

import httpx
import jwt
import orjson
from pydantic import Field

from sampan.gateway.config import JwtCredential
from sampan.gateway.plugins._auth import (
    ANONYMOUS_STATE,
    anonymous_consumer,
    consumer_of,
    quote,
    unauthorized,
)
from sampan.gateway.plugins._support import HeaderName, ThrottledLog, safe_header_value
from sampan.gateway.plugins.base import (
    AuthenticatedConsumer,
    Plugin,
    PluginEnvironment,
    PluginOptions,
)
from sampan.gateway.plugins.errors import PluginConfigError
from sampan.http.request import Request
from sampan.http.response import Response
from sampan.units import ByteSize, Duration

CLAIMS_STATE = "jwt_claims"
"""``request.state`` key holding the verified claims (a dict)."""


class JwtOptions(PluginOptions):
    header_names: list[HeaderName] = Field(
        default_factory=lambda: ["authorization"],
        description="Headers that may carry the token, as `Bearer <token>` (for other "
        "headers a bare token is accepted too).",
    )
    cookie_names: list[str] = Field(
        default_factory=list, description="Cookies that may carry the token (off by default)."
    )
    query_params: list[str] = Field(
        default_factory=list,
        description="Query parameters that may carry the token (off by default: URLs are logged).",
    )
    required_claims: list[str] = Field(
        default_factory=lambda: ["exp"],
        description="Claims every token must have. `exp`/`nbf`/`iat` are verified whenever "
        "present; listing `exp` here also refuses tokens that never expire.",
    )
    audience: list[str] = Field(
        default_factory=list,
        description="Accepted `aud` values (one must match). Empty: `aud` is not checked.",
    )
    leeway: Duration = Field(0.0, ge=0, description="Clock skew allowed for `exp`/`nbf`/`iat`.")
    max_token_bytes: int = Field(8192, ge=64, description="Longer tokens are rejected unread.")
    claims_to_headers: dict[str, HeaderName] = Field(
        default_factory=dict,
        description="Claim -> upstream request header, e.g. `{sub: x-user-id}`. Those headers "
        "are always removed from the client's request first, so they cannot be spoofed. "
        "Strings are sent as is, numbers and booleans as JSON scalars, lists and objects as "
        "JSON; values with control characters are dropped.",
    )
    hide_credentials: bool = Field(
        True, description="Remove the token (header, cookie or query parameter) upstream."
    )
    anonymous: str | None = Field(
        None,
        description="Username of the consumer to use when the request carries no token (an "
        "invalid token is still rejected).",
    )
    realm: str = Field("sampan", description="Realm in the `WWW-Authenticate` challenge.")
    jwks_cache_ttl: Duration = Field(
        300.0, gt=0, description="A JWKS document is refreshed after this long."
    )
    jwks_min_refresh_interval: Duration = Field(
        10.0,
        ge=0,
        description="Never fetch one JWKS URL more often than this, whatever the tokens say.",
    )
    jwks_timeout: Duration = Field(5.0, gt=0, description="Timeout of one JWKS fetch.")
    jwks_max_bytes: ByteSize = Field(
        512 * 1024, ge=1024, description="Larger JWKS documents are refused."
    )


class Jwks:
    """The keys of one JWKS URL for one pinned algorithm."""

    def __init__(
        self,
        url: str,
        algorithm: str,
        options: JwtOptions,
        log: ThrottledLog,
        on_error: Any,
    ) -> None:
        self.url = url
        self.algorithm = algorithm
        self.ttl = options.jwks_cache_ttl
        self.min_interval = options.jwks_min_refresh_interval
        self.timeout = options.jwks_timeout
        self.max_bytes = options.jwks_max_bytes
        self.keys: dict[str | None, Any] = {}
        self.fetched_at = -float("inf")
        self.attempted_at = -float("inf")
        self.fetches = 0
        self._lock = asyncio.Lock()
        self._log = log
        self._on_error = on_error
        self.clock = time.monotonic

    async def key(self, kid: str | None, client: httpx.AsyncClient) -> Any:
        now = self.clock()
        if now - self.fetched_at >= self.ttl and now - self.attempted_at >= self.min_interval:
            await self.refresh(client)
        found = self.keys.get(kid)
        if found is None and self.clock() - self.attempted_at >= self.min_interval:
            await self.refresh(client)
            found = self.keys.get(kid)
        return found

    async def refresh(self, client: httpx.AsyncClient) -> None:
        asked = self.clock()
        async with self._lock:
            if self.attempted_at >= asked:
                return  # someone refreshed while we waited
            self.attempted_at = self.clock()
            self.fetches += 1
            try:
                keys = await self._fetch(client)
            except Exception as exc:
                self._on_error()
                self._log.warning(
                    "JWKS %s: fetch failed, keeping %d known keys: %s",
                    self.url,
                    len(self.keys),
                    exc,
                )
                return
            self.keys = keys
            self.fetched_at = self.clock()

    async def _fetch(self, client: httpx.AsyncClient) -> dict[str | None, Any]:
        body = bytearray()
        async with client.stream("GET", self.url, timeout=self.timeout) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP status {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise ValueError(f"document larger than {self.max_bytes} bytes")
        document = orjson.loads(body)
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        keys: dict[str | None, Any] = {}
        anonymous: list[Any] = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            if entry.get("use", "sig") != "sig" or entry.get("alg", self.algorithm) != (
                self.algorithm
            ):
                continue
            try:
                key = jwt.PyJWK(entry, algorithm=self.algorithm).key
            except (jwt.PyJWTError, ValueError, TypeError):
                continue  # a key of another type or a broken one: not ours to use
            kid = entry.get("kid")
            if isinstance(kid, str):
                keys[kid] = key
            else:
                anonymous.append(key)
        if len(anonymous) == 1:  # one key without a kid serves tokens without a kid
            keys[None] = anonymous[0]
        if not keys:
            raise ValueError(f"no usable {self.algorithm} signing key in the document")
        return keys


@dataclass(frozen=True, slots=True)
class _Issuer:
    consumer: AuthenticatedConsumer
    algorithm: str
    key: Any  # prepared static key, or None with jwks
    jwks: Jwks | None


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return orjson.loads(base64.urlsafe_b64decode(padded))


class JwtPlugin(Plugin):
    name: ClassVar[str] = "jwt"
    priority: ClassVar[int] = 1450
    Options: ClassVar[type[PluginOptions]] = JwtOptions

    def __init__(self, options: JwtOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self.opts = options
        route = env.route or "global"
        self._errors = env.metrics.counter(
            "sampan_jwt_jwks_errors", "JWKS fetches that failed.", route=route
        )
        self._log = ThrottledLog(env.log)
        self._issuers: dict[str, _Issuer] = {}
        self.jwks: dict[tuple[str, str], Jwks] = {}
        problems: list[tuple[str, str]] = []
        owners: dict[str, str] = {}
        for consumer in env.consumers:
            identity = consumer_of(consumer)
            for credential in consumer.jwt:
                where = f"consumer {consumer.username!r}, issuer {credential.issuer!r}"
                if credential.issuer in owners:
                    problems.append(
                        ("", f"{where}: issuer already belongs to {owners[credential.issuer]!r}")
                    )
                    continue
                owners[credential.issuer] = consumer.username
                try:
                    self._issuers[credential.issuer] = self._issuer(identity, credential)
                except ValueError as exc:
                    problems.append(("", f"{where}: {exc}"))
        if problems:
            raise PluginConfigError(self.name, problems)
        self._header_names = tuple(n.encode() for n in options.header_names)
        self._cookie_names = tuple(options.cookie_names)
        self._query_params = tuple(options.query_params)
        self._claim_headers = tuple((c, h.encode()) for c, h in options.claims_to_headers.items())
        self._spoofable = frozenset(h for _, h in self._claim_headers)
        self._audience = list(options.audience) or None
        self._decode_options: jwt.types.Options = {
            "require": list(options.required_claims),
            "verify_aud": bool(options.audience),
        }
        self._anonymous = anonymous_consumer(options.anonymous, env.consumers)
        realm = quote(options.realm)
        self._missing = f'Bearer realm="{realm}"'
        self._invalid = f'Bearer realm="{realm}", error="invalid_token"'
        self._client: httpx.AsyncClient | None = None

    def _issuer(self, consumer: AuthenticatedConsumer, credential: JwtCredential) -> _Issuer:
        algorithm = credential.algorithm
        given = [
            name
            for name in ("secret", "public_key", "jwks_url")
            if getattr(credential, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of secret, public_key, jwks_url")
        if credential.jwks_url is not None:
            if not credential.jwks_url.startswith(("https://", "http://")):
                raise ValueError("jwks_url must be an http(s) URL")
            cache_key = (credential.jwks_url, algorithm)
            jwks = self.jwks.get(cache_key)
            if jwks is None:
                jwks = Jwks(credential.jwks_url, algorithm, self.opts, self._log, self._errors.inc)
                self.jwks[cache_key] = jwks
            return _Issuer(consumer, algorithm, None, jwks)
        hmac = algorithm.startswith("HS")
        if hmac and credential.secret is None:
            raise ValueError(f"{algorithm} needs a secret (or a jwks_url)")
        if not hmac and credential.public_key is None:
            raise ValueError(f"{algorithm} needs a public_key (or a jwks_url)")
        material = credential.secret if hmac else credential.public_key
        assert material is not None
        try:
            key = jwt.PyJWS().get_algorithm_by_name(algorithm).prepare_key(material)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ValueError(f"unusable key for {algorithm}: {exc}") from None
        return _Issuer(consumer, algorithm, key, None)

    async def start(self) -> None:
        if not self.jwks:
            return
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        await asyncio.gather(*(jwks.refresh(self._client) for jwks in self.jwks.values()))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ token extraction

    def _token(self, request: Request) -> tuple[str, str, str] | None:
        """(token, where: header|cookie|query, name)."""
        items = request.headers.items
        for wanted in self._header_names:
            for name, value in items:
                if name != wanted:
                    continue
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer" and rest:
                    return rest.strip().decode("latin-1"), "header", name.decode()
                if wanted != b"authorization" and value:
                    return value.strip().decode("latin-1"), "header", name.decode()
        if self._cookie_names:
            for name, value in items:
                if name != b"cookie":
                    continue
                for pair in value.decode("latin-1").split(";"):
                    key, _, cookie = pair.strip().partition("=")
                    if key in self._cookie_names and cookie:
                        return cookie.strip('"'), "cookie", key
        if self._query_params and request.query:
            for param, text in parse_qsl(request.query.decode("latin-1")):
                if param in self._query_params and text:
                    return text, "query", param
        return None

    def _hide(self, request: Request, where: str, name: str) -> None:
        headers = request.headers
        if where == "header":
            headers.remove(name.encode())
        elif where == "cookie":
            rebuilt: list[tuple[bytes, bytes]] = []
            for key, value in headers.items:
                if key == b"cookie":
                    kept = [
                        p
                        for p in value.decode("latin-1").split(";")
                        if p.strip().partition("=")[0] != name
                    ]
                    remaining = ";".join(kept).strip().encode("latin-1")
                    if remaining:
                        rebuilt.append((key, remaining))
                    continue
                rebuilt.append((key, value))
            headers.items = rebuilt
        else:
            request.query = b"&".join(
                pair
                for pair in request.query.split(b"&")
                if unquote_plus(pair.partition(b"=")[0].decode("latin-1")) != name
            )

    # ------------------------------------------------------------------ the hook

    async def on_request(self, request: Request) -> Response | None:
        if self._spoofable:
            spoofable = self._spoofable
            request.headers.items = [kv for kv in request.headers.items if kv[0] not in spoofable]
        found = self._token(request)
        if found is None:
            if self._anonymous is not None:
                request.state["consumer"] = self._anonymous
                request.state[ANONYMOUS_STATE] = True
                return None
            return unauthorized(self._missing, "No bearer token found in the request.")
        token, where, name = found
        claims = await self._verify(token)
        if isinstance(claims, str):
            return unauthorized(
                f'{self._invalid}, error_description="{quote(claims)}"', f"Invalid token: {claims}."
            )
        issuer = self._issuers[claims["iss"]]
        request.state["consumer"] = issuer.consumer
        request.state[CLAIMS_STATE] = claims
        for claim, header in self._claim_headers:
            value = claims.get(claim)
            if value is None:
                continue
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            encoded = safe_header_value(text)
            if encoded is not None:
                request.headers.items.append((header, encoded))
        if self.opts.hide_credentials:
            self._hide(request, where, name)
        return None

    async def _verify(self, token: str) -> dict[str, Any] | str:
        """The verified claims, or why the token is refused."""
        if len(token) > self.opts.max_token_bytes:
            return "token too long"
        parts = token.split(".")
        if len(parts) != 3:
            return "malformed token"
        try:
            header = _b64json(parts[0])
            payload = _b64json(parts[1])
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            return "malformed token"
        if not isinstance(header, dict) or not isinstance(payload, dict):
            return "malformed token"
        iss = payload.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            return "unknown issuer"
        if header.get("alg") != issuer.algorithm:
            return "algorithm not allowed"
        key = issuer.key
        if issuer.jwks is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                return "malformed token"
            if self._client is None:
                self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
            key = await issuer.jwks.key(kid, self._client)
            if key is None:
                return "unknown signing key"
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[issuer.algorithm],
                options=self._decode_options,
                audience=self._audience,
                issuer=iss,
                leeway=self.opts.leeway,
            )
        except jwt.ExpiredSignatureError:
            return "token expired"
        except jwt.ImmatureSignatureError:
            return "token not yet valid"
        except jwt.InvalidAudienceError:
            return "audience not accepted"
        except jwt.MissingRequiredClaimError as exc:
            return f"missing claim {exc.claim}"
        except jwt.InvalidSignatureError:
            return "signature verification failed"
        except jwt.PyJWTError:
            return "token rejected"
        return claims
