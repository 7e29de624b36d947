"""The gateway's config: listener, limits, consumers, routes, targets and plugin entries.

Plugin options are validated by each plugin's own model (``gateway/plugins/``), so a plugin
entry here only carries its name and a raw mapping; ``gateway/plugins/registry.py`` checks
both, and the config loader reports its errors at the entry's location.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sampan.config_loader import relocated
from sampan.mesh.fault import FaultConfig
from sampan.units import ByteSize, Duration


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ListenConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the data plane binds to.")
    port: int = Field(8080, ge=0, le=65535, description="Data-plane port (0 = any free port).")
    mtls: bool = Field(
        False,
        description="Terminate mTLS with the node's mesh identity and authorise every caller's "
        "SPIFFE ID against mesh.authorization (403 when denied).",
    )


class LimitsConfig(_Section):
    """Defences against hostile or broken clients; each breach answers with its status."""

    max_header_bytes: ByteSize = Field(8192, ge=256, description="Request line + headers (431).")
    max_header_count: int = Field(100, ge=1, description="Header fields per request (431).")
    max_url_bytes: ByteSize = Field(8192, ge=16, description="Request target length (414).")
    max_body_bytes: ByteSize = Field(
        10 * 1024 * 1024, ge=0, description="Default body limit of a route (413)."
    )
    header_timeout: Duration = Field(
        10.0, gt=0, description="Time to receive the request line and headers (408)."
    )
    body_timeout: Duration = Field(
        30.0, gt=0, description="Longest pause between two pieces of a request body (408)."
    )
    keepalive_timeout: Duration = Field(
        60.0, gt=0, description="Idle keep-alive connections are closed after this."
    )
    max_connections_per_client: int = Field(
        256, ge=1, description="Concurrent connections from one client address."
    )
    encoded_slash: Literal["reject", "keep"] = Field(
        "reject",
        description="Paths with %2F or %5C (encoded / and \\): reject with 400, or keep them "
        "encoded (never decoded into a separator).",
    )


class PluginEntry(_Section):
    name: str = Field(description="Plugin name, e.g. key-auth, jwt, rate-limit.")
    config: dict[str, Any] = Field(default_factory=dict, description="The plugin's options.")
    enabled: bool = Field(True, description="Keep the entry but skip the plugin.")

    @model_validator(mode="after")
    def _options_fit_the_plugin(self) -> PluginEntry:
        """Check ``config`` against the plugin's own options model, keeping error locations."""
        from sampan.gateway.plugins.registry import plugin_types  # plugins import this module

        types = plugin_types()
        plugin = types.get(self.name)
        if plugin is not None and not self.enabled:
            return self  # a disabled entry only switches a global plugin off for a route
        if plugin is None:
            raise ValidationError.from_exception_data(
                "PluginEntry",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "unknown_plugin",
                            "unknown plugin '{name}' (expected one of: {known})",
                            {"name": self.name, "known": ", ".join(sorted(types))},
                        ),
                        loc=("name",),
                        input=self.name,
                    )
                ],
            )
        try:
            plugin.Options.model_validate(self.config)
        except ValidationError as exc:
            raise relocated("PluginEntry", exc, ("config",)) from None
        return self


class KeyCredential(_Section):
    key: str | None = Field(None, description="The API key (use ${ENV} or !include).")
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key, instead of it."
    )

    @model_validator(mode="after")
    def _one_form(self) -> KeyCredential:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        return self


class JwtCredential(_Section):
    issuer: str = Field(description="The `iss` claim that selects this credential.")
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"] = Field(
        description="The only algorithm accepted for this issuer."
    )
    secret: str | None = Field(None, description="HMAC secret (HS*).")
    public_key: str | None = Field(None, description="PEM public key (RS256/ES256/EdDSA).")
    jwks_url: str | None = Field(None, description="JWKS document URL (keys by `kid`).")


class ConsumerConfig(_Section):
    username: str = Field(description="Who the caller is once authenticated.")
    groups: list[str] = Field(default_factory=list, description="For the acl plugin.")
    key_auth: list[KeyCredential] = Field(
        default_factory=list, description="API keys this consumer authenticates with."
    )
    jwt: list[JwtCredential] = Field(
        default_factory=list, description="JWT issuers this consumer's tokens come from."
    )


class MatchConfig(_Section):
    """All given conditions must hold. Paths: ``path`` exact or template (``/orders/{id}``),
    ``path_prefix``, or ``path_regex`` (a bounded, backtracking-free subset)."""

    hosts: list[str] = Field(
        default_factory=list, description="Exact (api.example.vn) or wildcard (*.example.vn)."
    )
    path: str | None = Field(None, description="Exact path or template with {params}.")
    path_prefix: str | None = Field(None, description="Path prefix, matched on segment bounds.")
    path_regex: str | None = Field(None, description="Regular expression over the whole path.")
    methods: list[str] = Field(default_factory=list, description="Empty = any method.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header name -> exact value required."
    )
    query: dict[str, str] = Field(
        default_factory=dict, description="Query parameter -> exact value required."
    )

    @model_validator(mode="after")
    def _one_path(self) -> MatchConfig:
        given = [p for p in (self.path, self.path_prefix, self.path_regex) if p is not None]
        if len(given) > 1:
            raise ValueError("give at most one of path, path_prefix, path_regex")
        for p in (self.path, self.path_prefix):
            if p is not None and not p.startswith("/"):
                raise ValueError(f"paths start with '/', got {p!r}")
        return self

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods: list[str]) -> list[str]:
        return [m.upper() for m in methods]


class ServiceTarget(_Section):
    endpoints: list[str] = Field(
        default_factory=list, description="Upstream base URLs (http://host:port)."
    )
    service: str | None = Field(None, description="A named service from `services:` (mesh).")
    connect_timeout: Duration = Field(5.0, gt=0, description="Time to open a connection.")
    read_timeout: Duration = Field(60.0, gt=0, description="Wait for the upstream's response.")
    write_timeout: Duration = Field(60.0, gt=0, description="Time to send the request body.")
    preserve_host: bool = Field(False, description="Send the client's Host upstream.")

    @model_validator(mode="after")
    def _where(self) -> ServiceTarget:
        if not self.endpoints and self.service is None:
            raise ValueError("give endpoints or service")
        return self


class PartitionKeyFrom(_Section):
    header: str | None = Field(None, description="Take the key from this request header.")
    path_param: str | None = Field(None, description="Take the key from this path parameter.")
    json_field: str | None = Field(None, description="Dotted path into a JSON body.")


class TopicTarget(_Section):
    name: str = Field(description="Bus topic the request is published to.")
    type: str = Field("sampan.http.request", description="CloudEvent `type`.")
    source: str | None = Field(None, description="CloudEvent `source` (default: the route).")
    key_from: PartitionKeyFrom | None = Field(None, description="Where the partition key is.")
    headers_as_extensions: list[str] = Field(
        default_factory=list, description="Request headers copied into event extensions."
    )
    idempotency_ttl: Duration = Field(
        86400.0, gt=0, description="How long an Idempotency-Key is remembered."
    )


class RespondTarget(_Section):
    status: int = Field(200, ge=100, le=599, description="HTTP status.")
    headers: dict[str, str] = Field(default_factory=dict, description="Response headers.")
    body: str | None = Field(None, description="Text body.")
    json_body: Any = Field(None, alias="json", description="JSON body.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TargetConfig(_Section):
    service: ServiceTarget | None = Field(None, description="Proxy to an upstream service.")
    topic: TopicTarget | None = Field(
        None, description="Publish the request as a CloudEvent to a bus topic (202)."
    )
    respond: RespondTarget | None = Field(None, description="Answer with a fixed response.")

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetConfig:
        given = [t for t in (self.service, self.topic, self.respond) if t is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of service, topic, respond")
        return self


class RouteConfig(_Section):
    name: str = Field(description="Unique route name (metrics label, logs, OpenAPI).")
    match: MatchConfig = Field(
        default_factory=MatchConfig, description="What requests this route takes."
    )
    target: TargetConfig = Field(description="Where the requests go.")
    strip_prefix: bool = Field(False, description="Drop the matched path_prefix upstream.")
    rewrite: str | None = Field(None, description="Upstream path template, e.g. /v2/orders/{id}.")
    plugins: list[PluginEntry] = Field(
        default_factory=list, description="Plugins of this route (merged with the global ones)."
    )
    max_body_bytes: ByteSize | None = Field(None, description="Overrides limits.max_body_bytes.")
    fault: FaultConfig | None = Field(
        None, description="Inject delays or aborts into a share of requests (resilience tests)."
    )
    description: str | None = Field(None, description="For the OpenAPI document.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ROUTE_NAME.match(value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 100)")
        return value


class GatewayConfig(_Section):
    enabled: bool = Field(True, description="Serve the data plane when routes exist.")
    listen: ListenConfig = Field(default_factory=ListenConfig, description="Where to listen.")
    workers: int | None = Field(
        None, ge=1, le=256, description="Processes with SO_REUSEPORT (default: CPU count)."
    )
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Limits against hostile or broken clients."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs whose X-Forwarded-*/Forwarded headers are believed.",
    )
    plugins: list[PluginEntry] = Field(
        default_factory=list, description="Plugins run on every route."
    )
    latency_header: str | None = Field(
        "x-sampan-proxy-latency", description="Response header with the gateway's own time (ms)."
    )
    drain_timeout: Duration = Field(
        30.0, gt=0, description="How long a shutdown waits for in-flight requests."
    )
    fast_path: bool = Field(
        True,
        description="Serve plain proxy routes (a service target with endpoints given as IP "
        "addresses, no plugins, no fault) from the compiled front; every other request is "
        "the Python server's. See docs/fast-path.md.",
    )
