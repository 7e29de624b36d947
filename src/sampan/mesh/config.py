"""The mesh's config: named services with discovery, balancing and resilience policies, and
the node's identity and authorisation policy for mTLS."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sampan.units import ByteSize, Duration

SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StaticEndpoint(_Section):
    url: str = Field(description="http://host:port or https://host:port of one instance.")
    weight: int = Field(1, ge=1, le=1000, description="Relative share of traffic.")
    version: str | None = Field(None, description="Version label for traffic splits (v1, v2).")


class DnsDiscovery(_Section):
    name: str = Field(description="DNS name to resolve (A/AAAA) or SRV name (_http._tcp...).")
    record: Literal["A", "AAAA", "A+AAAA", "SRV"] = Field("A", description="Record type.")
    port: int | None = Field(None, ge=1, le=65535, description="Port for A/AAAA records.")
    scheme: Literal["http", "https"] = Field("http", description="Scheme of the endpoints.")
    nameserver: str | None = Field(
        None, description="host:port of the resolver (default: the system's)."
    )
    min_ttl: Duration = Field(1.0, gt=0, description="Re-resolve no more often than this.")
    max_ttl: Duration = Field(300.0, gt=0, description="Re-resolve at least this often.")

    @model_validator(mode="after")
    def _port_for_address_records(self) -> DnsDiscovery:
        if self.record != "SRV" and self.port is None:
            raise ValueError("A/AAAA discovery needs a port")
        return self


class RegistrationConfig(_Section):
    enabled: bool = Field(False, description="Accept endpoints registered via the admin API.")
    ttl: Duration = Field(30.0, gt=0, description="An endpoint without heartbeat expires after.")


class ActiveHealthCheck(_Section):
    path: str = Field("/health", description="Path probed with GET.")
    interval: Duration = Field(5.0, gt=0, description="Time between probes of one endpoint.")
    timeout: Duration = Field(1.0, gt=0, description="A probe slower than this failed.")
    healthy_threshold: int = Field(2, ge=1, description="Successes to mark healthy again.")
    unhealthy_threshold: int = Field(3, ge=1, description="Failures to mark unhealthy.")
    expected_statuses: list[int] = Field(
        default_factory=lambda: list(range(200, 400)), description="Statuses that count as up."
    )


class PassiveHealthCheck(_Section):
    consecutive_failures: int = Field(
        5, ge=1, description="Failures on live traffic (connect errors, 5xx) to mark unhealthy."
    )
    unhealthy_for: Duration = Field(
        10.0, gt=0, description="How long a passively failed endpoint sits out."
    )


class HealthConfig(_Section):
    active: ActiveHealthCheck | None = Field(None, description="Probe endpoints periodically.")
    passive: PassiveHealthCheck | None = Field(
        default_factory=PassiveHealthCheck, description="Judge endpoints by live traffic."
    )


class HashOn(_Section):
    header: str | None = Field(None, description="Hash this request header.")
    cookie: str | None = Field(None, description="Hash this cookie.")
    client_ip: bool = Field(False, description="Hash the client's IP address.")

    @model_validator(mode="after")
    def _one(self) -> HashOn:
        given = [self.header is not None, self.cookie is not None, self.client_ip]
        if sum(given) != 1:
            raise ValueError("give exactly one of header, cookie, client_ip")
        return self


class BalancerConfig(_Section):
    type: Literal["p2c-peak-ewma", "least-request", "round-robin", "consistent-hash"] = Field(
        "p2c-peak-ewma", description="How an endpoint is chosen for each request."
    )
    decay: Duration = Field(
        2.0,
        gt=0,
        description="Peak-EWMA decay time (how fast latency is forgotten). 2 s, not Linkerd's "
        "10 s: measured with 64 callers, 10 s kept fast endpoints' estimates near old peaks and "
        "let a 10x slower endpoint into the p99 (bench/mesh.py).",
    )
    default_rtt: Duration = Field(
        0.01, gt=0, description="Latency assumed for an endpoint not measured yet."
    )
    hash_on: HashOn | None = Field(None, description="For consistent-hash: what to hash.")

    @model_validator(mode="after")
    def _hash_needs_key(self) -> BalancerConfig:
        if self.type == "consistent-hash" and self.hash_on is None:
            raise ValueError("consistent-hash needs hash_on")
        return self


class SplitEntry(_Section):
    version: str = Field(description="Endpoint version label.")
    weight: int = Field(ge=0, le=100_000, description="Relative share of requests.")


class BackoffConfig(_Section):
    initial: Duration = Field(0.025, ge=0, description="Delay before the first retry.")
    max: Duration = Field(0.25, ge=0, description="Longest delay between retries.")
    jitter: float = Field(0.5, ge=0, le=1, description="Randomised fraction of each delay.")


class RetryBudgetConfig(_Section):
    ratio: float = Field(0.2, ge=0, le=10, description="Retries allowed as a fraction of requests.")
    min_per_second: float = Field(10.0, ge=0, description="Retries always allowed per second.")
    window: Duration = Field(10.0, gt=0, description="Time over which requests are counted.")


class MeshRetryConfig(_Section):
    attempts: int = Field(3, ge=1, le=10, description="Tries in all, the first included.")
    retry_on: list[str] = Field(
        default_factory=lambda: ["connect", "reset", "502", "503", "504"],
        description="Failures that may be retried: connect, reset, timeout, or a status.",
    )
    idempotent_only: bool = Field(
        True, description="Retry only GET/HEAD/OPTIONS/PUT/DELETE unless set false."
    )
    max_body_bytes: ByteSize = Field(
        65536, ge=0, description="Bodies up to this size are buffered so they can be replayed."
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig, description="Retry delays.")
    budget: RetryBudgetConfig = Field(
        default_factory=RetryBudgetConfig, description="Caps retries so they cannot storm."
    )

    @field_validator("retry_on")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in ("connect", "reset", "timeout") and not (
                value.isdigit() and 100 <= int(value) <= 599
            ):
                raise ValueError(f"{value!r}: use connect, reset, timeout or an HTTP status")
        return values


class TimeoutsConfig(_Section):
    connect: Duration = Field(1.0, gt=0, description="Time to open a connection.")
    per_try: Duration = Field(10.0, gt=0, description="Time for one attempt's response head.")
    total: Duration = Field(30.0, gt=0, description="Time for the call, retries included.")


class CircuitBreakerConfig(_Section):
    consecutive_failures: int = Field(5, ge=1, description="Failures in a row that open it.")
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Failure share in the window that opens it."
    )
    window: Duration = Field(10.0, gt=0, description="Window for the failure rate.")
    min_requests: int = Field(
        20, ge=1, description="Requests in the window before the rate counts."
    )
    open_for: Duration = Field(5.0, gt=0, description="Time open before probing (half-open).")
    half_open_probes: int = Field(3, ge=1, description="Successful probes that close it.")


class OutlierConfig(_Section):
    consecutive_5xx: int = Field(5, ge=1, description="5xx in a row that eject an endpoint.")
    success_rate_min_hosts: int = Field(
        3, ge=1, description="Endpoints with enough traffic before success-rate ejection runs."
    )
    success_rate_min_requests: int = Field(
        50, ge=1, description="Requests an endpoint needs in the interval to be judged."
    )
    success_rate_stdev_factor: float = Field(
        1.9, gt=0, description="Eject below mean - factor x stdev of success rates."
    )
    interval: Duration = Field(10.0, gt=0, description="How often success rates are judged.")
    base_ejection: Duration = Field(
        30.0, gt=0, description="First ejection time; grows with each ejection."
    )
    max_ejection_percent: int = Field(
        50, ge=0, le=100, description="Never eject more than this share of endpoints."
    )


class BulkheadConfig(_Section):
    max_concurrent: int = Field(1000, ge=1, description="Requests in flight to the service.")
    max_pending: int = Field(1000, ge=0, description="Requests waiting for a slot (then 503).")


class AdaptiveConcurrencyConfig(_Section):
    algorithm: Literal["aimd", "gradient"] = Field("gradient", description="Limit algorithm.")
    initial_limit: int = Field(20, ge=1, description="Starting concurrency limit.")
    min_limit: int = Field(1, ge=1, description="Never below.")
    max_limit: int = Field(1000, ge=1, description="Never above.")
    latency_threshold: Duration = Field(
        0.5, gt=0, description="AIMD: a slower response counts as overload."
    )


class ServiceTlsConfig(_Section):
    mtls: bool = Field(True, description="Present our certificate and verify the peer's.")
    spiffe_id: str | None = Field(
        None,
        description="Expected peer identity (default spiffe://<trust domain>/svc/<name>).",
    )


class ServiceConfig(_Section):
    name: str = Field(description="Service name used by routes and flows.")
    endpoints: list[StaticEndpoint] = Field(default_factory=list, description="Static endpoints.")
    dns: DnsDiscovery | None = Field(None, description="Endpoints from DNS, re-resolved on TTL.")
    registration: RegistrationConfig = Field(
        default_factory=RegistrationConfig, description="Endpoints registering themselves."
    )
    balancer: BalancerConfig = Field(default_factory=BalancerConfig, description="Balancing.")
    split: list[SplitEntry] = Field(
        default_factory=list, description="Traffic split between endpoint versions (canary)."
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health checks.")
    retry: MeshRetryConfig = Field(default_factory=MeshRetryConfig, description="Retries.")
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig, description="Timeouts.")
    circuit_breaker: CircuitBreakerConfig | None = Field(
        default_factory=CircuitBreakerConfig, description="Per-endpoint circuit breaker."
    )
    outlier: OutlierConfig | None = Field(
        default_factory=OutlierConfig, description="Outlier ejection."
    )
    bulkhead: BulkheadConfig = Field(default_factory=BulkheadConfig, description="Bulkhead.")
    adaptive_concurrency: AdaptiveConcurrencyConfig | None = Field(
        None, description="Shed load (503) before latency explodes."
    )
    tls: ServiceTlsConfig | None = Field(None, description="mTLS to this service.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVICE_NAME.match(value):
            raise ValueError("lowercase letters, digits and '-' (a DNS label)")
        return value

    @model_validator(mode="after")
    def _some_source(self) -> ServiceConfig:
        if not self.endpoints and self.dns is None and not self.registration.enabled:
            raise ValueError("give endpoints, dns, or registration: {enabled: true}")
        return self


class IdentityConfig(_Section):
    service: str = Field(description="This node's service name (its SPIFFE ID's last part).")
    cert: str = Field(description="PEM certificate chain file.")
    key: str = Field(description="PEM private key file.")
    ca: str = Field(description="PEM trust bundle (the mesh CA certificate).")
    ca_key: str | None = Field(
        None, description="CA key, if this node may re-issue its own certificate on rotation."
    )
    rotate_before: Duration = Field(
        3600.0, gt=0, description="Renew the certificate this long before it expires."
    )


class MeshConfig(_Section):
    trust_domain: str = Field("sampan.local", description="SPIFFE trust domain.")
    identity: IdentityConfig | None = Field(None, description="This node's mTLS identity.")
    authorization: list[str] = Field(
        default_factory=list,
        description="Allowed calls, e.g. 'svc/orders -> svc/payments' ('*' wildcards a side).",
    )
    deadline_header: str = Field(
        "x-sampan-deadline-ms", description="Header carrying the caller's remaining time (ms)."
    )
