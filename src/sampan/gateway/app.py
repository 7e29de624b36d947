"""The gateway's request handler: normalise, route, run the plugin chain, call the target.

Every answer the gateway gives itself is RFC 9457 problem+json; every request is counted in
the route's quartet (latency to the response head, throughput, 5xx as errors).
"""

from __future__ import annotations

import ipaddress
import logging
import time

from sampan.gateway.config import GatewayConfig
from sampan.gateway.forwarded import client_ip
from sampan.gateway.normalize import BadPath, normalize_path
from sampan.gateway.route_table import RouteTable
from sampan.gateway.router import MethodNotAllowed
from sampan.http.body import BodyTooLarge
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.http.streaming_body import BodyReadError
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig, table: RouteTable, metrics: Metrics) -> None:
        self.table = table
        self.encoded_slash = config.limits.encoded_slash
        self.trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies]
        self.latency_header = (
            config.latency_header.lower().encode("latin-1") if config.latency_header else None
        )
        self._unrouted = metrics.target("route", "(unmatched)")

    def swap(self, table: RouteTable) -> RouteTable:
        """Serve ``table`` from the next request on; returns the previous one to close."""
        previous, self.table = self.table, table
        return previous

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        table = self.table  # one table for the whole request, even across a reload
        try:
            request.path = normalize_path(request.path, encoded_slash=self.encoded_slash)
        except BadPath as exc:
            return self._finish(problem(400, "Bad request path", exc.reason), started, None)
        found = table.router.match(
            request.method, request.host, request.path, request.headers, request.query
        )
        if found is None:
            return self._finish(
                problem(404, "Not Found", f"no route for {request.method} {request.path}"),
                started,
                None,
            )
        if isinstance(found, MethodNotAllowed):
            allow = ", ".join(found.allow)
            return self._finish(
                problem(
                    405,
                    "Method Not Allowed",
                    f"{request.method} is not allowed here; use {allow}",
                    headers=Headers([(b"allow", allow.encode())]),
                ),
                started,
                None,
            )
        route = found.route
        request.state["route"] = route.name
        request.state["params"] = found.params
        request.state["client_ip"] = client_ip(request, self.trusted)
        request.body.limit = route.body_limit
        declared = request.body.length
        if declared is not None and declared > route.body_limit:
            return self._finish(_too_large(route.body_limit), started, route)
        try:
            response = None
            for plugin in route.request_plugins:
                response = await plugin.on_request(request)
                if response is not None:
                    break
            if response is None and route.fault is not None:
                response = await route.fault.apply(request)
            if response is None:
                response = await route.target(request, found, route.body_limit)
            # Every response hook runs, even after a plugin answered early (request-id echoes
            # its id on a 401, rate-limit sets its headers on a 429), as in Kong.
            for plugin in route.response_plugins:
                response = await plugin.on_response(request, response)
        except BodyTooLarge as exc:
            response = _too_large(exc.limit)
        except BodyReadError:
            raise  # the client's fault (bad chunk, stalled body): the server answers 400/408
        except Exception:
            log.exception("route %s failed on %s %s", route.name, request.method, request.path)
            response = problem(500, "Internal Server Error", f"route {route.name!r} failed")
        return self._finish(response, started, route)

    def _finish(self, response: Response, started: float, route: object | None) -> Response:
        elapsed = time.perf_counter() - started
        if self.latency_header is not None:
            response.headers.add(self.latency_header, b"%d" % int(elapsed * 1000))
        quartet = getattr(route, "quartet", None) or self._unrouted
        quartet.observe(elapsed, error=response.status >= 500)
        return response


def _too_large(limit: int) -> Response:
    return problem(413, "Content Too Large", f"the body must not exceed {limit} bytes")
