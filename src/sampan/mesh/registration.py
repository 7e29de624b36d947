"""Endpoints that register themselves through the admin API, kept alive by heartbeats.

An instance of a service with ``registration: {enabled: true}`` announces itself with
``PUT /api/services/{name}/endpoints`` and repeats the same call as its heartbeat, more
often than the service's ``ttl``. An endpoint whose last heartbeat is older than the TTL
is removed by ``Registry.expire`` (run every quarter TTL by ``start()``), so a crashed
instance leaves the set on its own; a stopping one calls ``DELETE`` to leave at once.

The registry also answers ``GET /api/services``: every service the node knows (whatever
the discovery source) with its endpoints and their live state, for ``sampan services``.

Registrations live in the node's memory: every node of a cluster must be sent the
heartbeats (or sit behind one admin address that fans out); a restarted node is refilled
by the next round of heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sampan.admin.problem import problem_response
from sampan.mesh.config import RegistrationConfig
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.endpoint_set import EndpointSet, EndpointSpec, canonical_url

__all__ = [
    "MAX_REGISTERED_PER_SERVICE",
    "SOURCE",
    "Registry",
    "RegistryFull",
    "UnknownService",
    "endpoint_view",
    "registration_routes",
]

log = logging.getLogger(__name__)

SOURCE = "registered"
MAX_REGISTERED_PER_SERVICE = 1000
"""Registered endpoints one service may hold (the admin API must not grow memory forever)."""
MAX_WEIGHT = 1000
MAX_VERSION_LENGTH = 64


class UnknownService(LookupError):
    """No such service, or it does not accept registrations."""


class RegistryFull(Exception):
    """The service holds ``MAX_REGISTERED_PER_SERVICE`` registered endpoints already."""


@dataclass(slots=True)
class _Service:
    endpoint_set: EndpointSet
    config: RegistrationConfig
    registered: dict[str, EndpointSpec]
    """canonical url -> spec (expires_at = last heartbeat + ttl)."""


class Registry:
    """The services of a node and their registered endpoints."""

    def __init__(
        self,
        endpoint_sets: Mapping[str, EndpointSet] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_per_service: int = MAX_REGISTERED_PER_SERVICE,
    ) -> None:
        """``endpoint_sets`` (service name -> set) are listed by ``GET /api/services``;
        ``enable`` (or ``add_service`` with a config) lets one accept registrations."""
        self.clock = clock
        self.max_per_service = max_per_service
        self._services: dict[str, _Service] = {}
        self._task: asyncio.Task[None] | None = None
        for name, endpoint_set in (endpoint_sets or {}).items():
            if name != endpoint_set.service:
                raise ValueError(f"endpoint set of {endpoint_set.service!r} given as {name!r}")
            self.add_service(endpoint_set)

    # -- services -----------------------------------------------------------------------------

    def add_service(
        self, endpoint_set: EndpointSet, config: RegistrationConfig | None = None
    ) -> None:
        """Make ``endpoint_set.service`` known (listed by ``GET /api/services``); it accepts
        registrations when ``config.enabled``."""
        name = endpoint_set.service
        if name in self._services:
            raise ValueError(f"service {name!r} is added twice")
        self._services[name] = _Service(
            endpoint_set, config if config is not None else RegistrationConfig(), {}
        )

    def enable(self, service: str, ttl: float) -> None:
        """Let a known service accept registrations that expire ``ttl`` seconds after their
        last heartbeat."""
        found = self._services.get(service)
        if found is None:
            raise UnknownService(f"no service named {service!r}")
        found.config = RegistrationConfig(enabled=True, ttl=ttl)

    def service_names(self) -> list[str]:
        return sorted(self._services)

    def endpoint_set(self, service: str) -> EndpointSet:
        found = self._services.get(service)
        if found is None:
            raise UnknownService(f"no service named {service!r}")
        return found.endpoint_set

    def _accepting(self, service: str) -> _Service:
        found = self._services.get(service)
        if found is None:
            raise UnknownService(f"no service named {service!r}")
        if not found.config.enabled:
            raise UnknownService(
                f"service {service!r} does not accept registrations "
                "(set registration: {enabled: true} in its config)"
            )
        return found

    # -- registrations ------------------------------------------------------------------------

    def register(
        self,
        service: str,
        url: str,
        *,
        weight: int = 1,
        version: str | None = None,
        ttl: float | None = None,
    ) -> EndpointSpec:
        """Register ``url`` or, if it is registered already, take this as its heartbeat
        (weight and version follow the latest call). ``ttl`` defaults to the service's.

        Raises ``UnknownService``, ``ValueError`` (bad URL, weight or ttl) or
        ``RegistryFull``."""
        entry = self._accepting(service)
        key = canonical_url(url)
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError("weight must be an integer")
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be between 1 and {MAX_WEIGHT}, not {weight}")
        if version is not None and not (0 < len(version) <= MAX_VERSION_LENGTH):
            raise ValueError(f"version must be 1 to {MAX_VERSION_LENGTH} characters")
        lifetime = float(entry.config.ttl if ttl is None else ttl)
        if not (lifetime > 0 and math.isfinite(lifetime)):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        if key not in entry.registered and len(entry.registered) >= self.max_per_service:
            raise RegistryFull(
                f"service {service!r} has {len(entry.registered)} registered endpoints already"
            )
        spec = EndpointSpec(key, weight, version, SOURCE, self.clock() + lifetime)
        if key not in entry.registered:
            log.info("service %s: %s registered (weight %d)", service, key, weight)
        entry.registered[key] = spec
        entry.endpoint_set.replace(SOURCE, list(entry.registered.values()))
        return spec

    def is_registered(self, service: str, url: str) -> bool:
        found = self._services.get(service)
        if found is None:
            return False
        try:
            return canonical_url(url) in found.registered
        except ValueError:
            return False

    def deregister(self, service: str, url: str) -> bool:
        """Remove ``url`` now; False if it was not registered."""
        entry = self._accepting(service)
        spec = entry.registered.pop(canonical_url(url), None)
        if spec is None:
            return False
        log.info("service %s: %s deregistered", service, spec.url)
        entry.endpoint_set.replace(SOURCE, list(entry.registered.values()))
        return True

    def expire(self, now: float | None = None) -> list[tuple[str, str]]:
        """Remove endpoints whose heartbeat is overdue; returns (service, url) removed."""
        if now is None:
            now = self.clock()
        removed: list[tuple[str, str]] = []
        for name, entry in self._services.items():
            gone = [
                key
                for key, spec in entry.registered.items()
                if spec.expires_at is not None and spec.expires_at <= now
            ]
            if not gone:
                continue
            for key in gone:
                del entry.registered[key]
                removed.append((name, key))
                log.warning("service %s: %s expired (no heartbeat within its ttl)", name, key)
            entry.endpoint_set.replace(SOURCE, list(entry.registered.values()))
        return removed

    # -- the expiry loop ----------------------------------------------------------------------

    def expiry_interval(self) -> float:
        """A quarter of the shortest TTL, between 50 ms and 5 s."""
        ttls = [float(s.config.ttl) for s in self._services.values() if s.config.enabled]
        if not ttls:
            return 5.0
        return min(max(min(ttls) / 4, 0.05), 5.0)

    async def start(self) -> None:
        """Run ``expire`` periodically until ``stop()``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="registry-expiry")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self.expiry_interval()
        while self._task is not None:  # ends with stop()
            await asyncio.sleep(interval)
            try:
                self.expire()
            except Exception:
                log.exception("registry expiry failed")

    # -- views --------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every service with its endpoints and their state (the ``GET /api/services`` body)."""
        now = self.clock()
        services: list[dict[str, Any]] = []
        for name in sorted(self._services):
            entry = self._services[name]
            endpoint_set = entry.endpoint_set
            endpoints = [endpoint_view(state, now) for state in endpoint_set.all()]
            services.append(
                {
                    "name": name,
                    "version": endpoint_set.version,
                    "sources": list(endpoint_set.sources()),
                    "registration": {
                        "enabled": entry.config.enabled,
                        "ttl": float(entry.config.ttl),
                    },
                    "endpoints": endpoints,
                    "available": sum(1 for e in endpoints if e["available"]),
                }
            )
        return services


def endpoint_view(state: EndpointState, now: float) -> dict[str, Any]:
    """One endpoint as JSON. ``*_until`` are monotonic clock values as the mesh keeps them;
    ``*_for`` are the seconds left (0 when not in effect), which is what a person reads."""
    breaker = getattr(state.breaker, "state", None) if state.breaker is not None else None
    return {
        "url": state.url,
        "source": state.source,
        "weight": state.weight,
        "version": state.version,
        "available": state.available(now),
        "healthy": state.healthy,
        "unhealthy_until": state.unhealthy_until,
        "unhealthy_for": round(max(state.unhealthy_until - now, 0.0), 3),
        "ejected_until": state.ejected_until,
        "ejected_for": round(max(state.ejected_until - now, 0.0), 3),
        "ejections": state.ejections,
        "in_flight": state.in_flight,
        "ewma_ms": round(state.ewma * 1000, 3),
        "breaker": None if breaker is None else str(getattr(breaker, "value", breaker)),
        "requests": state.requests,
        "failures": state.failures,
        "last_error": state.last_error,
        "expires_in": (
            None if state.expires_at is None else round(max(state.expires_at - now, 0.0), 3)
        ),
    }


# -- the admin API ------------------------------------------------------------------------------


def registration_routes(
    registry: Registry, services: Mapping[str, object] | None = None
) -> list[Route]:
    """``PUT``/``DELETE /api/services/{name}/endpoints`` and ``GET /api/services``.

    ``services`` (name -> anything with an ``endpoints`` ``EndpointSet``) adds services the
    registry does not know yet to the listing."""
    for name, service in (services or {}).items():
        endpoint_set = getattr(service, "endpoints", None)
        if isinstance(endpoint_set, EndpointSet) and name not in registry.service_names():
            registry.add_service(endpoint_set)

    async def put_endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        path = request.url.path
        try:
            body = await request.json()
        except ValueError:
            return problem_response(400, "the body must be JSON", instance=path)
        if not isinstance(body, dict):
            return problem_response(
                422, 'the body must be a JSON object: {"url": ...}', instance=path
            )
        unknown = sorted(set(body) - {"url", "weight", "version"})
        if unknown:
            return problem_response(
                422,
                f"unknown fields: {', '.join(unknown)} (use url, weight, version)",
                instance=path,
            )
        url = body.get("url")
        weight = body.get("weight", 1)
        version = body.get("version")
        if not isinstance(url, str):
            return problem_response(422, '"url" must be a string', instance=path)
        if isinstance(weight, bool) or not isinstance(weight, int):
            return problem_response(422, '"weight" must be an integer', instance=path)
        if version is not None and not isinstance(version, str):
            return problem_response(422, '"version" must be a string or null', instance=path)
        try:
            existed = registry.is_registered(name, url)
            spec = registry.register(name, url, weight=weight, version=version)
        except UnknownService as exc:
            return problem_response(404, str(exc), instance=path)
        except RegistryFull as exc:
            return problem_response(409, str(exc), instance=path)
        except ValueError as exc:
            return problem_response(422, str(exc), instance=path)
        expires_at = spec.expires_at if spec.expires_at is not None else registry.clock()
        return JSONResponse(
            {
                "service": name,
                "url": spec.url,
                "weight": spec.weight,
                "version": spec.version,
                "expires_in": round(max(expires_at - registry.clock(), 0.0), 3),
            },
            status_code=200 if existed else 201,
        )

    async def delete_endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        path = request.url.path
        url = request.query_params.get("url")
        if not url:
            return problem_response(400, "give the endpoint as ?url=...", instance=path)
        try:
            removed = registry.deregister(name, url)
        except UnknownService as exc:
            return problem_response(404, str(exc), instance=path)
        except ValueError as exc:
            return problem_response(422, str(exc), instance=path)
        if not removed:
            return problem_response(
                404, f"{url} is not registered for service {name!r}", instance=path
            )
        return Response(status_code=204)

    async def list_services(request: Request) -> Response:
        return JSONResponse({"services": registry.snapshot()})

    return [
        Route("/api/services", list_services, methods=["GET"]),
        Route("/api/services/{name}/endpoints", put_endpoint, methods=["PUT"]),
        Route("/api/services/{name}/endpoints", delete_endpoint, methods=["DELETE"]),
    ]
