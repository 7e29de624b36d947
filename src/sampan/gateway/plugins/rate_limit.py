"""rate-limit: GCRA (a leaky bucket kept as one timestamp) per consumer, IP, header or route.

For each key the limiter stores the *theoretical arrival time* (TAT): when the bucket would
be empty again. A request costs ``period / rate`` seconds of TAT; it is accepted while the
TAT stays within ``burst`` requests' worth of the present. One number per key, no windows,
so there is no boundary burst (a fixed window lets 2x the limit through around its edges).

``policy: local`` keeps the TATs in this process (per worker process, per node).
``policy: redis`` keeps them in Redis and decides in one Lua script (atomic, exact across
every node); the script reads the clock with Redis ``TIME``, so the nodes' clocks do not
matter. When Redis cannot be reached the request is let through or refused as
``on_redis_error`` says; either way it is counted in
``sampan_ratelimit_redis_errors_total{route}`` and logged at most once per 10 s. After a
failure Redis is not asked again for ``redis_retry_interval`` (requests in between take the
``on_redis_error`` path at once instead of each waiting for a timeout).

Every response carries ``RateLimit-Policy`` and ``RateLimit`` in the Structured-Fields form
of draft-ietf-httpapi-ratelimit-headers (-08 and later): ``RateLimit-Policy:
"default";q=100;w=60`` (``rate`` per ``period`` seconds) and ``RateLimit:
"default";r=42;t=5`` (``r`` requests left now, ``t`` seconds until the quota is whole again).
A refused request gets 429 problem+json with ``Retry-After`` (whole seconds, rounded up).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sampan.gateway.plugins._support import HeaderName, ThrottledLog, compiled_front
from sampan.gateway.plugins.base import (
    AuthenticatedConsumer,
    Plugin,
    PluginEnvironment,
    PluginOptions,
)
from sampan.gateway.plugins.errors import PluginConfigError
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.units import Duration

HEADERS_STATE = "ratelimit_headers"

# KEYS[1] = bucket key; ARGV[1] = emission interval (µs per request), ARGV[2] = burst.
# Returns {allowed (0/1), retry_after µs, reset µs, remaining}. Times are integers of µs
# (below 2^53, exact in Lua's doubles); TIME is the Redis server's clock.
GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local tolerance = burst * interval
if new_tat - now > tolerance then
  return {0, new_tat - tolerance - now, tat - now, 0}
end
local ttl = math.ceil((new_tat - now) / 1000)
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {1, 0, new_tat - now, math.floor((tolerance - (new_tat - now)) / interval)}
"""


class RateLimitOptions(PluginOptions):
    rate: int = Field(gt=0, description="Requests allowed per `period`, sustained.")
    period: Duration = Field(60.0, gt=0, description="The period `rate` is counted over.")
    burst: int | None = Field(
        None,
        ge=1,
        description="Most requests accepted back to back from a full bucket (default: "
        "`rate`). After a burst, requests are accepted at `rate` per `period`.",
    )
    limit_by: Literal["consumer", "ip", "header", "route"] = Field(
        "consumer",
        description="Whose requests share a bucket: the authenticated consumer (the client "
        "IP when there is none), the client IP (`request.state['client_ip']`, else the "
        "peer), a header's value (`header_name`; the client IP when absent), or the whole "
        "route.",
    )
    header_name: HeaderName | None = Field(None, description="For `limit_by: header`.")
    policy: Literal["local", "redis"] = Field(
        "local",
        description="`local`: counters in this process (a node with N workers allows up to "
        "N x the rate). `redis`: one exact limit across all nodes and workers.",
    )
    redis_url: str | None = Field(
        None, description="Redis for `policy: redis` (default: the node's redis_url)."
    )
    redis_timeout: Duration = Field(
        0.2, gt=0, description="Connect and command timeout for Redis calls."
    )
    redis_retry_interval: Duration = Field(
        1.0,
        ge=0,
        description="After a Redis failure, skip Redis for this long (requests follow "
        "`on_redis_error` meanwhile).",
    )
    on_redis_error: Literal["allow", "deny"] = Field(
        "allow",
        description="Redis unreachable: `allow` lets requests through (fail open), `deny` "
        "answers 503 problem+json (fail closed).",
    )
    key_prefix: str = Field("sampan:rl", description="Prefix of the Redis keys.")
    shared_across_routes: bool = Field(
        False,
        description="Leave the route out of the bucket key, so every route with this plugin "
        "config shares the buckets (redis policy; with local, only one plugin instance's).",
    )
    policy_name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Policy name in the RateLimit headers.",
    )
    headers: bool = Field(True, description="Send `RateLimit-Policy` and `RateLimit`.")

    @model_validator(mode="after")
    def _header(self) -> RateLimitOptions:
        if self.limit_by == "header" and self.header_name is None:
            raise ValueError("limit_by: header needs header_name")
        return self


class RateLimitPlugin(Plugin):
    name: ClassVar[str] = "rate-limit"
    priority: ClassVar[int] = 910
    Options: ClassVar[type[PluginOptions]] = RateLimitOptions

    def __init__(self, options: RateLimitOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self.opts = options
        self._burst = options.burst if options.burst is not None else options.rate
        self._interval = options.period / options.rate
        self._tolerance = self._burst * self._interval
        self._interval_us = max(1, round(self._interval * 1_000_000))
        route = env.route or "global"
        scope = "*" if options.shared_across_routes else route
        self._prefix = f"{options.key_prefix}:{scope}:"
        self._header_name = (options.header_name or "").encode()
        self._policy_header = (
            f'"{options.policy_name}";q={options.rate};w={math.ceil(options.period)}'.encode()
        )
        self._state_prefix = f'"{options.policy_name}";'.encode()
        self._redis_url = options.redis_url or env.redis_url
        if options.policy == "redis" and not self._redis_url:
            raise PluginConfigError(
                self.name, [("redis_url", "policy: redis needs redis_url (or the node's)")]
            )
        self._tats: dict[str, float] = {}
        self._sweep_at = 1024
        # The compiled buckets, when built, hold the TATs instead of the dict: the gateway's
        # compiled front draws from the same buckets for the requests it serves itself.
        self.buckets: Any = None
        if options.policy == "local":
            compiled = compiled_front()
            if compiled is not None:
                self.buckets = compiled.Buckets(self._interval, self._tolerance)
        self._redis: Redis | None = None
        self._script: Any = None
        self._redis_down_until = -math.inf
        self._redis_errors = env.metrics.counter(
            "sampan_ratelimit_redis_errors",
            "Rate-limit decisions made without Redis (unreachable or failing).",
            route=route,
        )
        self._rejected = env.metrics.counter(
            "sampan_ratelimit_rejected", "Requests refused by rate-limit.", route=route
        )
        self._log = ThrottledLog(env.log)
        self.clock = time.monotonic

    async def start(self) -> None:
        if self.opts.policy != "redis" or self._redis is not None:
            return
        assert self._redis_url is not None
        timeout = self.opts.redis_timeout
        self._redis = Redis.from_url(
            self._redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._redis.register_script(GCRA_LUA)
        try:
            await self._redis.script_load(GCRA_LUA)
        except Exception as exc:  # the route serves anyway, per on_redis_error
            self._failed(exc)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # ------------------------------------------------------------------ keys

    def _key(self, request: Request) -> str:
        by = self.opts.limit_by
        if by == "route":
            return self._prefix + "route"
        if by == "consumer":
            consumer = request.state.get("consumer")
            if isinstance(consumer, AuthenticatedConsumer):
                return self._prefix + consumer_bucket(consumer.username)
        elif by == "header":
            value = request.headers.get(self._header_name)
            if value:
                return self._prefix + "h:" + _bounded(value.decode("latin-1"))
        ip = request.state.get("client_ip")
        if not isinstance(ip, str) or not ip:
            ip = request.client[0]
        return self._prefix + "ip:" + ip

    # ------------------------------------------------------------------ decisions

    def fast_path_spec(self) -> tuple[str, object] | None:
        """The compiled front applies this plugin itself with the `local` policy, limiting by
        consumer, IP or route, on the same buckets."""
        by = {"consumer": 0, "ip": 1, "route": 2}.get(self.opts.limit_by)
        if self.buckets is None or by is None:
            return None
        return (
            self.name,
            (
                self.buckets,
                by,
                self.opts.headers,
                self._prefix.encode(),
                self._policy_header,
                self._state_prefix,
            ),
        )

    def _local(self, key: str) -> tuple[bool, float, float, int]:
        buckets = self.buckets
        if buckets is not None:
            allowed, retry_after, reset, remaining = buckets.take(key.encode(), self.clock())
            return bool(allowed), float(retry_after), float(reset), int(remaining)
        now = self.clock()
        tats = self._tats
        tat = tats.get(key, now)
        tat = max(tat, now)
        new_tat = tat + self._interval
        if new_tat - now > self._tolerance:
            return False, new_tat - self._tolerance - now, tat - now, 0
        tats[key] = new_tat
        if len(tats) > self._sweep_at:
            self._sweep(now)
        remaining = math.floor((self._tolerance - (new_tat - now)) / self._interval + 1e-9)
        return True, 0.0, new_tat - now, remaining

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again (same as never seen); amortised O(1)."""
        self._tats = {k: v for k, v in self._tats.items() if v > now}
        self._sweep_at = max(1024, 2 * len(self._tats))

    async def _remote(self, key: str) -> tuple[bool, float, float, int] | None:
        if self._redis is None or self.clock() < self._redis_down_until:
            self._redis_errors.inc()
            return None
        try:
            result = await self._script(keys=[key], args=[self._interval_us, self._burst])
        except Exception as exc:  # redis errors, OSError, timeouts: all mean "no answer"
            self._failed(exc)
            return None
        allowed, retry_us, reset_us, remaining = (int(x) for x in result)
        return bool(allowed), retry_us / 1e6, reset_us / 1e6, remaining

    def _failed(self, exc: BaseException) -> None:
        self._redis_errors.inc()
        self._redis_down_until = self.clock() + self.opts.redis_retry_interval
        self._log.warning(
            "rate-limit (route %s): Redis %s failed, requests are %s: %r",
            self.env.route or "global",
            self._redis_url,
            "allowed" if self.opts.on_redis_error == "allow" else "refused",
            exc,
        )

    async def on_request(self, request: Request) -> Response | None:
        key = self._key(request)
        if self.opts.policy == "local":
            decision = self._local(key)
        else:
            found = await self._remote(key)
            if found is None:
                if self.opts.on_redis_error == "allow":
                    return None
                return problem(
                    503,
                    "Service Unavailable",
                    "The rate limiter is unavailable.",
                    headers=Headers([(b"retry-after", b"1")]),
                )
            decision = found
        allowed, retry_after, reset, remaining = decision
        headers: list[tuple[bytes, bytes]] | None = None
        if self.opts.headers:
            headers = [
                (b"ratelimit-policy", self._policy_header),
                (
                    b"ratelimit",
                    self._state_prefix + b"r=%d;t=%d" % (remaining, math.ceil(reset - 1e-9)),
                ),
            ]
        if allowed:
            if headers is not None:
                request.state[HEADERS_STATE] = headers
            return None
        self._rejected.inc()
        out = Headers(headers)
        out.items.append((b"retry-after", b"%d" % max(1, math.ceil(retry_after - 1e-9))))
        return problem(429, "Too Many Requests", "Rate limit exceeded; retry later.", headers=out)

    async def on_response(self, request: Request, response: Response) -> Response:
        headers = request.state.get(HEADERS_STATE)
        if headers is not None:
            response.headers.items.extend(headers)
        return response


def consumer_bucket(username: str) -> str:
    """The part of a bucket key that names a consumer (after the plugin's prefix)."""
    return "c:" + _bounded(username)


def _bounded(value: str) -> str:
    """Keys from client-controlled text stay short (memory, Redis key size)."""
    if len(value) <= 64:
        return value
    return "#" + hashlib.sha256(value.encode()).hexdigest()[:32]
