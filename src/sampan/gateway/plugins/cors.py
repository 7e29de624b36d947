"""cors: answer CORS preflights and label allowed cross-origin responses."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from sampan.gateway.plugins._support import HeaderName, Re2Pattern, re2_compile
from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.units import Duration

PREFLIGHT_STATE = "cors_preflight"
_TCHARS = rb"[!#$%&'*+.^_`|~0-9A-Za-z\-]+"
_HEADER_LIST = re.compile(_TCHARS + rb"(?:[ \t]*,[ \t]*" + _TCHARS + rb")*")


class CorsOptions(PluginOptions):
    origins: list[str] = Field(
        default_factory=list,
        description="Allowed origins, exactly as browsers send them "
        "(`https://shop.example.vn`, no trailing slash), or `*` for any origin.",
    )
    origin_regex: list[Re2Pattern] = Field(
        default_factory=list,
        description="Regular expressions (RE2 syntax) an allowed origin must match in full, "
        r"e.g. `https://[a-z0-9-]+\.example\.vn`.",
    )
    methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"],
        description="Methods a preflight may ask for; others get 403.",
    )
    headers: list[HeaderName] | None = Field(
        None,
        description="Request headers allowed cross-origin. Null: allow what the preflight "
        "asks for (`Access-Control-Request-Headers`, when it is a well-formed list).",
    )
    exposed_headers: list[HeaderName] = Field(
        default_factory=list, description="Response headers scripts may read."
    )
    credentials: bool = Field(
        False,
        description="Send `Access-Control-Allow-Credentials: true` (cookies, Authorization). "
        "Not allowed with `*`: list the origins.",
    )
    max_age: Duration | None = Field(
        600.0, ge=0, description="How long browsers may cache a preflight (null: not sent)."
    )

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods: list[str]) -> list[str]:
        return [m.upper() for m in methods]

    @field_validator("origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin in ("*", "null"):
                continue
            if origin.endswith("/") or "://" not in origin:
                raise ValueError(f"origins look like https://host[:port], got {origin!r}")
        return origins

    @model_validator(mode="after")
    def _safe(self) -> CorsOptions:
        if not self.origins and not self.origin_regex:
            raise ValueError("give origins or origin_regex")
        if self.credentials and "*" in self.origins:
            raise ValueError(
                "credentials: true with origin '*' would let any site act as the user; "
                "list the origins"
            )
        return self


class CorsPlugin(Plugin):
    """A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
    answered here, never proxied: 204 with the CORS headers when the origin and method are
    allowed, 403 problem+json otherwise (the browser fails the call either way; the problem
    body tells a human with curl why). Other requests go through; their response gets
    ``Access-Control-Allow-Origin`` when the origin is allowed, and ``Vary: Origin`` whenever
    the answer depends on the origin."""

    name: ClassVar[str] = "cors"
    priority: ClassVar[int] = 2000
    Options: ClassVar[type[PluginOptions]] = CorsOptions

    def __init__(self, options: CorsOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._any = "*" in options.origins
        self._exact = frozenset(o.encode() for o in options.origins if o != "*")
        self._regexes: list[Any] = [re2_compile(p) for p in options.origin_regex]
        self._methods = frozenset(m.encode() for m in options.methods)
        # With "*" and no credentials the answer is the same for every origin.
        self._literal_star = self._any and not options.credentials
        common: list[tuple[bytes, bytes]] = []
        if options.credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self._preflight_extra = [
            *common,
            (b"access-control-allow-methods", ", ".join(options.methods).encode()),
        ]
        if options.max_age is not None:
            self._preflight_extra.append(
                (b"access-control-max-age", str(math.ceil(options.max_age)).encode())
            )
        self._allow_headers = (
            None if options.headers is None else ", ".join(options.headers).encode()
        )
        self._response_extra = list(common)
        if options.exposed_headers:
            self._response_extra.append(
                (b"access-control-expose-headers", ", ".join(options.exposed_headers).encode())
            )

    def allowed(self, origin: bytes) -> bool:
        if self._any or origin in self._exact:
            return True
        if self._regexes:
            text = origin.decode("latin-1")
            return any(r.fullmatch(text) is not None for r in self._regexes)
        return False

    async def on_request(self, request: Request) -> Response | None:
        if request.method != "OPTIONS":
            return None
        headers = request.headers
        origin = headers.get(b"origin")
        method = headers.get(b"access-control-request-method")
        if origin is None or method is None:
            return None  # a plain OPTIONS request, not a preflight
        if not self.allowed(origin):
            return problem(403, "Forbidden", "CORS: origin not allowed.")
        if method.strip().upper() not in self._methods:
            return problem(403, "Forbidden", "CORS: method not allowed.")
        out = Headers([(b"access-control-allow-origin", b"*" if self._literal_star else origin)])
        out.items.extend(self._preflight_extra)
        allow_headers = self._allow_headers
        if allow_headers is None:
            requested = headers.get(b"access-control-request-headers")
            if requested and _HEADER_LIST.fullmatch(requested.strip()):
                allow_headers = requested.strip()
        if allow_headers:
            out.items.append((b"access-control-allow-headers", allow_headers))
        vary = b"Access-Control-Request-Method, Access-Control-Request-Headers"
        out.items.append((b"vary", vary if self._literal_star else b"Origin, " + vary))
        request.state[PREFLIGHT_STATE] = True  # on_response leaves this answer alone
        return Response(204, out)

    async def on_response(self, request: Request, response: Response) -> Response:
        if request.state.get(PREFLIGHT_STATE):
            return response
        origin = request.headers.get(b"origin")
        items = response.headers.items
        if not self._literal_star:
            items.append((b"vary", b"Origin"))
        if origin is not None and self.allowed(origin):
            items = [kv for kv in items if kv[0] != b"access-control-allow-origin"]
            items.append((b"access-control-allow-origin", b"*" if self._literal_star else origin))
            items.extend(self._response_extra)
            response.headers.items = items
        return response
