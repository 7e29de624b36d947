"""One named service at run time: its endpoints and every policy between a caller and them.

A call goes: deadline check → adaptive limit → bulkhead → (pick an endpoint → try → record)
repeated while the retry policy, the retry budget and the deadline allow. Every attempt feeds
the endpoint's latency estimate, its circuit breaker, outlier detection and passive health,
so the next pick already knows what this one learned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sampan.http.body import Body, BytesBody
from sampan.http.client import ConnectionPool, UpstreamError, UpstreamResponse
from sampan.http.headers import Headers
from sampan.mesh.adaptive import AdaptiveLimiter
from sampan.mesh.balancer import make_balancer
from sampan.mesh.breaker import CircuitBreaker
from sampan.mesh.bulkhead import Bulkhead, BulkheadFull
from sampan.mesh.config import ServiceConfig
from sampan.mesh.deadline import Deadline
from sampan.mesh.discovery_dns import DnsDiscoverer
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.endpoint_set import EndpointSet, EndpointSpec
from sampan.mesh.health import ActiveHealthChecker, PassiveHealth
from sampan.mesh.identity.spiffe import spiffe_id
from sampan.mesh.outlier import OutlierDetector
from sampan.mesh.peak_ewma import observe
from sampan.mesh.retry_budget import RetryBudget
from sampan.mesh.retry_policy import RetryDecider
from sampan.mesh.traffic_split import TrafficSplit
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.mesh")

FAILURE_PENALTY = 1.0
"""Seconds of latency a failed attempt counts as in the balancer's estimate."""


class MeshError(Exception):
    """The mesh answers for the service: no endpoint, shed, deadline passed, upstream failed."""

    def __init__(self, status: int, title: str, detail: str, *, local: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.local = local
        """Refused before anything was sent (no endpoint, deadline gone): no latency sample."""


@dataclass(frozen=True, slots=True)
class CallOptions:
    deadline: Deadline
    deadline_header: bytes
    hash_key: bytes | None = None


class MeshService:
    def __init__(
        self,
        config: ServiceConfig,
        pool: ConnectionPool,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        trust_domain: str = "sampan.local",
    ) -> None:
        self.config = config
        tls = config.tls
        # With mTLS every endpoint is reached over TLS and must prove the service's identity.
        self.peer_id = (
            (tls.spiffe_id or spiffe_id(trust_domain, config.name))
            if tls is not None and tls.mtls
            else None
        )
        self.name = config.name
        self.pool = pool
        self.clock = clock
        self.rng = rng or random.Random()
        self.endpoints = EndpointSet(config.name)
        self.endpoints.on_change(self._equip)
        self.balancer = make_balancer(config.balancer, self.rng)
        self.split = TrafficSplit(config.split, self.rng) if config.split else None
        self.retry = RetryDecider(config.retry, self.rng)
        self.budget = RetryBudget(config.retry.budget, clock)
        self.bulkhead = Bulkhead(config.bulkhead)
        self.limiter = (
            AdaptiveLimiter(config.adaptive_concurrency, clock)
            if config.adaptive_concurrency is not None
            else None
        )
        self.outlier = OutlierDetector(config.outlier, clock) if config.outlier else None
        self.passive = (
            PassiveHealth(config.health.passive, clock) if config.health.passive else None
        )
        self.active = (
            ActiveHealthChecker(
                config.name, config.health.active, self.endpoints, pool, clock=clock
            )
            if config.health.active is not None
            else None
        )
        self.dns = (
            DnsDiscoverer(config.dns, self.endpoints, clock=clock)
            if config.dns is not None
            else None
        )
        self.metrics = metrics
        self.quartet = metrics.target("upstream", config.name)
        self.retries = metrics.counter("sampan_mesh_retries", "Retries sent.", service=config.name)
        self.retries_denied = metrics.counter(
            "sampan_mesh_retries_denied",
            "Retries refused by the retry budget.",
            service=config.name,
        )
        self.shed = metrics.counter(
            "sampan_mesh_shed",
            "Calls refused by the bulkhead or the adaptive limit.",
            service=config.name,
        )
        self._tasks: list[asyncio.Task[None]] = []
        if config.endpoints:
            self.endpoints.replace(
                "static",
                [EndpointSpec(e.url, e.weight, e.version, "static") for e in config.endpoints],
            )

    def _equip(self) -> None:
        """Give every new endpoint its own breaker; tell outlier detection the new set."""
        breaker_config = self.config.circuit_breaker
        endpoints = self.endpoints.all()
        for state in endpoints:
            if state.breaker is None and breaker_config is not None:
                state.breaker = CircuitBreaker(breaker_config, self.clock)
            if self.peer_id is not None and state.endpoint.peer_id != self.peer_id:
                state.endpoint = dataclasses.replace(state.endpoint, tls=True, peer_id=self.peer_id)
        if self.outlier is not None:
            self.outlier.track(endpoints)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._equip()
        if self.dns is not None:
            await self.dns.start()
        if self.active is not None:
            await self.active.start()
        if self.outlier is not None:
            self._tasks.append(asyncio.create_task(self._judge_outliers()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.active is not None:
            await self.active.stop()
        if self.dns is not None:
            await self.dns.stop()

    async def _judge_outliers(self) -> None:
        assert self.outlier is not None and self.config.outlier is not None
        while True:
            await asyncio.sleep(self.config.outlier.interval)
            with contextlib.suppress(Exception):
                self.outlier.evaluate(self.endpoints.all())

    # -- calls --------------------------------------------------------------------------------

    def pick(
        self, now: float, hash_key: bytes | None, avoid: Sequence[EndpointState] = ()
    ) -> EndpointState:
        """``avoid``: endpoints this call already tried; a retry goes elsewhere when it can."""
        candidates: Sequence[EndpointState] = [e for e in self.endpoints.all() if e.available(now)]
        if avoid:
            fresh = [e for e in candidates if e not in avoid]
            if fresh:
                candidates = fresh
        if self.split is not None and candidates:
            candidates = self.split.choose(candidates)
        chosen = self.balancer.pick(candidates, hash_key, now)
        if chosen is None:
            raise MeshError(
                503,
                "Service Unavailable",
                f"service {self.name!r} has no healthy endpoint",
                local=True,
            )
        return chosen

    async def call(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body | None,
        options: CallOptions,
    ) -> UpstreamResponse:
        """Send the request to the service; raises MeshError when the mesh must answer."""
        started = self.clock()
        deadline = options.deadline
        if deadline.expired(started):
            raise MeshError(504, "Gateway Timeout", f"the deadline for {self.name!r} has passed")
        # Buffer a replayable body before taking any slot, and never past the deadline: a client
        # trickling its upload must not hold the bulkhead or the concurrency limit.
        try:
            async with asyncio.timeout(deadline.remaining(started)):
                body, replayable = await self._replayable(body)
        except TimeoutError:
            raise MeshError(
                504, "Gateway Timeout", f"the request body for {self.name!r} came too slowly"
            ) from None
        if self.limiter is not None and not self.limiter.try_acquire():
            self.shed.inc()
            raise MeshError(503, "Service Unavailable", f"{self.name!r} is shedding load")
        dropped = False
        sampled = True
        failed = True
        try:
            async with self.bulkhead.slot():
                response = await self._attempts(method, target, headers, body, replayable, options)
            failed = response.status >= 500
            return response
        except BulkheadFull:
            self.shed.inc()
            sampled = False
            raise MeshError(
                503, "Service Unavailable", f"too many calls waiting for {self.name!r}"
            ) from None
        except MeshError as exc:
            sampled = not exc.local
            dropped = exc.status in (503, 504)
            raise
        finally:
            elapsed = self.clock() - started
            if self.limiter is not None:
                if sampled:
                    self.limiter.release(elapsed, dropped=dropped)
                else:
                    self.limiter.cancel()
            self.quartet.observe(elapsed, error=failed)

    async def _replayable(self, body: Body | None) -> tuple[Body | None, bool]:
        """Buffer a small body so that a retry can send it again."""
        if body is None or body.length == 0:
            return None, True
        if isinstance(body, BytesBody):
            return body, True
        limit = self.config.retry.max_body_bytes
        if body.length is not None and body.length <= limit and self.config.retry.attempts > 1:
            return BytesBody(await body.read(limit)), True
        return body, False

    async def _attempts(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body | None,
        replayable: bool,
        options: CallOptions,
    ) -> UpstreamResponse:
        config = self.config
        self.budget.deposit()
        deadline = options.deadline
        attempt = 0
        attempted: list[EndpointState] = []
        while True:
            attempt += 1
            now = self.clock()
            endpoint = self.pick(now, options.hash_key, attempted)
            attempted.append(endpoint)
            remaining = deadline.remaining(now)
            if remaining <= 0:
                raise MeshError(
                    504, "Gateway Timeout", f"the deadline for {self.name!r} passed", local=True
                )
            per_try = deadline.per_try_timeout(now, config.timeouts.per_try)
            sent = headers.copy()
            sent.set(options.deadline_header, deadline.header_value(now))
            path = endpoint.base_path.encode("ascii") + target if endpoint.base_path else target
            breaker = endpoint.breaker
            epoch = breaker.on_start() if isinstance(breaker, CircuitBreaker) else None
            endpoint.in_flight += 1
            endpoint.requests += 1
            tried = self.clock()
            status: int | None = None
            error: UpstreamError | None = None
            response: UpstreamResponse | None = None
            try:
                response = await self.pool.request(
                    endpoint.endpoint,
                    method,
                    path,
                    sent,
                    body,
                    connect_timeout=min(config.timeouts.connect, per_try),
                    read_timeout=per_try,
                    write_timeout=per_try,
                )
                status = response.status
            except UpstreamError as exc:
                error = exc
            except BaseException:
                # Cancelled, or the client's own body failed: no verdict on the endpoint, but a
                # half-open breaker's probe slot must be given back or it is lost for good.
                if isinstance(breaker, CircuitBreaker):
                    breaker.abandon(epoch=epoch)
                raise
            finally:
                endpoint.in_flight -= 1
            done = self.clock()
            self._record(endpoint, done - tried, done, status, error, epoch)
            retry_status = status is not None and str(status) in config.retry.retry_on
            if error is None and not retry_status:
                assert response is not None
                return response
            may_retry = attempt < config.retry.attempts and self.retry.retryable(
                method,
                status=status if error is None else None,
                # A connect timeout sent nothing: it fails over like a refused connection.
                error_kind=(
                    None if error is None else "connect" if error.phase == "connect" else error.kind
                ),
                before_response=error.before_response if error is not None else False,
                body_replayable=replayable,
            )
            pause = self.retry.backoff(attempt) if may_retry else 0.0
            if may_retry and deadline.remaining(self.clock()) <= pause:
                may_retry = False
            if may_retry and not self.budget.try_withdraw():
                self.retries_denied.inc()
                may_retry = False
            if not may_retry:
                if response is not None:
                    return response  # the caller sees the upstream's own 5xx
                assert error is not None
                raise self._failure(error)
            if response is not None:
                await response.aclose()
            self.retries.inc()
            if pause > 0:
                await asyncio.sleep(pause)

    def _record(
        self,
        endpoint: EndpointState,
        rtt: float,
        now: float,
        status: int | None,
        error: UpstreamError | None,
        epoch: int | None,
    ) -> None:
        ok = error is None and status is not None and status < 500
        # A failure is often fast (a refused connection, an instant 503); counted as its real
        # latency it would make the broken endpoint look like the best one.
        sample = rtt if ok else max(rtt, FAILURE_PENALTY)
        observe(endpoint, sample, now, self.config.balancer.decay)
        if not ok:
            endpoint.failures += 1
            endpoint.consecutive_failures += 1
            endpoint.last_error = (
                f"{error.kind}: {error}" if error is not None else f"status {status}"
            )
        else:
            endpoint.consecutive_failures = 0
        breaker = endpoint.breaker
        if isinstance(breaker, CircuitBreaker):
            breaker.record(ok, epoch=epoch)
        if self.outlier is not None:
            self.outlier.record(endpoint, status=status, error=error is not None)
        if self.passive is not None:
            self.passive.record(endpoint, ok=ok)
        self.metrics.target("upstream", f"{self.name}@{endpoint.url}").observe(rtt, error=not ok)

    def _failure(self, error: UpstreamError) -> MeshError:
        if error.kind == "timeout":
            return MeshError(504, "Gateway Timeout", f"{self.name!r} did not answer in time")
        return MeshError(502, "Bad Gateway", f"{self.name!r} failed: {error.kind}")
