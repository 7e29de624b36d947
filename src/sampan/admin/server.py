"""The node's admin HTTP app: ``/metrics`` for Prometheus, ``/healthz``, ``/api/metrics``.

Starlette is fine here — the admin port is not on the data path. Every endpoint is
``async`` on purpose: Starlette runs sync endpoints in a thread pool, and the metrics
instruments are only safe to read on the event-loop thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sampan.admin.problem import problem_response
from sampan.observe.metrics import Metrics

__all__ = ["PROMETHEUS_CONTENT_TYPE", "create_admin_app"]

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def create_admin_app(
    metrics: Metrics,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    health: HealthCheck | None = None,
) -> Starlette:
    """Build the admin app; other layers add their endpoints through ``extra_routes``.

    ``health`` returns the ``/healthz`` body; if it raises, ``/healthz`` answers 503 so a
    probe sees the failure. Every error response is RFC 9457 problem+json.
    """

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        if health is None:
            return JSONResponse({"status": "ok"})
        try:
            body = await health()
        except Exception as exc:
            log.exception("health check failed")
            return problem_response(
                503,
                f"health check failed: {exc}",
                title="Unhealthy",
                instance=request.url.path,
            )
        return JSONResponse(body)

    async def api_metrics(request: Request) -> Response:
        currency = metrics.currency
        return JSONResponse(
            [{**dataclasses.asdict(s), "currency": currency} for s in metrics.snapshots()]
        )

    routes: list[BaseRoute] = [
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/metrics", api_metrics, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_problem, Exception: _server_problem},
    )


async def _http_problem(request: Request, exc: Exception) -> Response:
    """Turn Starlette's HTTPException (404, 405, or one raised by a route) into problem+json."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    path = request.url.path
    if status == 404:
        detail = f"no admin endpoint at {path}"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        detail = f"{request.method} is not allowed on {path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    else:
        detail = exc.detail
    if status < 200 or status in (204, 304):
        # No body allowed; nothing to wrap.
        return Response(status_code=status, headers=exc.headers)
    return problem_response(status, detail, instance=path, headers=exc.headers)


async def _server_problem(request: Request, exc: Exception) -> Response:
    """A bug: answer 500 without leaking internals (the server logs the traceback)."""
    return problem_response(
        500,
        "the admin server failed while handling this request; the node log has the traceback",
        instance=request.url.path,
    )
