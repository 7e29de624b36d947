"""The gateway's compiled front (``sampan.http._fastpath``) wired to the Python gateway.

The front accepts on the gateway's socket and proxies plain routes itself; this module
tells it which routes those are (and asks the Python router on its behalf), feeds its
measurements into the routes' quartets, and gives every connection it hands back to the
Python server. See docs/fast-path.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from sampan.gateway.app import Gateway
from sampan.gateway.config import GatewayConfig
from sampan.gateway.normalize import BadPath, normalize_path
from sampan.gateway.plugins._support import compiled_front
from sampan.gateway.plugins.rate_limit import consumer_bucket
from sampan.gateway.proxy import Proxy, upstream_target
from sampan.gateway.route_table import CompiledRoute, ProxyTarget, RouteTable
from sampan.gateway.router import RouteMatch
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.server import HttpServer, head_without_framing, status_lines
from sampan.observe.metrics import TargetMetrics

log = logging.getLogger("sampan.gateway.fast_front")

_NO_HEADERS: Final = Headers()
METRICS_INTERVAL: Final = 0.25
"""Seconds between two merges of the front's counts into the routes' quartets."""


def load_front() -> Any | None:
    """The compiled module, or None when it was not built (a warning says so)."""
    module = compiled_front()
    if module is None:  # pragma: no cover - the build always compiles it here
        log.warning("gateway.fast_path: the compiled front is not available; Python serves all")
    return module


_FAST_PLUGINS: Final = ("request-id", "key-auth", "rate-limit")


def _plugin_specs(route: CompiledRoute) -> tuple[Any, Any, Any] | None:
    """(request-id, key-auth, rate-limit) options as the front takes them (None where the
    route does not run that plugin), or None when a plugin of the route needs Python."""
    found: dict[str, Any] = {}
    for plugin in route.plugins:
        spec = plugin.fast_path_spec()
        if spec is None or spec[0] not in _FAST_PLUGINS or spec[0] in found:
            return None
        found[spec[0]] = spec[1]
    key_auth = found.get("key-auth")
    if key_auth is not None:
        names, hide, anonymous, keys = key_auth
        key_auth = (
            names,
            hide,
            consumer_bucket(anonymous).encode() if anonymous is not None else None,
            [(digest, consumer_bucket(username).encode()) for digest, username in keys],
        )
    return found.get("request-id"), key_auth, found.get("rate-limit")


def _eligible(route: CompiledRoute) -> Proxy | None:
    """The route's proxy when the front can serve it whole: a service target with endpoints
    and nothing that needs Python per request (fault injection, a rewrite query, plugins
    other than request-id, key-auth and a local rate-limit)."""
    target = route.target
    if route.fault is not None:
        return None
    if not isinstance(target, ProxyTarget) or type(target.proxy) is not Proxy:
        return None
    if target.rewrite is not None and "?" in target.rewrite:
        return None
    return target.proxy


class FrontTable:
    """One route table as the front sees it: eligible routes by index, and a resolver."""

    def __init__(
        self, table: RouteTable, encoded_slash: str, quartet_id: Callable[[TargetMetrics], int]
    ) -> None:
        self.table = table
        self._encoded_slash = encoded_slash
        self.routes: list[CompiledRoute] = []
        self.specs: list[tuple[Any, ...]] = []
        self._index: dict[int, int] = {}
        self.usable = not any(
            route.config.match.headers or route.config.match.query for route in table.routes
        )
        if not self.usable:
            return
        for route in table.routes:
            proxy = _eligible(route)
            spec = proxy.fast_path_spec() if proxy is not None else None
            plugins = _plugin_specs(route)
            if spec is None or plugins is None:
                continue
            self._index[id(route)] = len(self.routes)
            self.routes.append(route)
            failures = [
                (r.status, head_without_framing(r.status, r.headers), r.body) for r in spec.failures
            ]
            self.specs.append(
                (
                    len(self.specs),
                    list(spec.endpoints),
                    spec.preserve_host,
                    spec.connect_timeout,
                    spec.read_timeout,
                    spec.write_timeout,
                    route.body_limit,
                    failures,
                    quartet_id(route.quartet),
                    route.quartet.bounds,
                    plugins,
                )
            )

    def resolve(self, method: str, host: bytes, path: bytes) -> tuple[int, bytes] | None:
        """Called by the front's thread (holding the GIL) for a request it has not seen:
        the route index and upstream path, or None to let Python serve it."""
        text = path.decode("latin-1")
        try:
            if normalize_path(text, encoded_slash=self._encoded_slash) != text:  # type: ignore[arg-type]
                return None
        except BadPath:
            return None
        request = Request(method, path, text, b"", Headers([(b"host", host)]))
        found = self.table.router.match(method, request.host, text, _NO_HEADERS, b"")
        if not isinstance(found, RouteMatch):
            return None
        index = self._index.get(id(found.route))
        if index is None:
            return None
        target = found.route.target
        assert isinstance(target, ProxyTarget)
        upstream = upstream_target(
            request, found.prefix, target.strip_prefix, target.rewrite, found.params
        )
        return index, upstream


class GatewayFront:
    """Owns the compiled front for one gateway listener."""

    def __init__(self, module: Any, server: HttpServer, gateway: Gateway, config: GatewayConfig):
        self._server = server
        self._gateway = gateway
        self._config = config
        self._module = module
        self._front: Any = None
        self._table: FrontTable | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = asyncio.Event()
        self._quartets: list[TargetMetrics] = []
        self._quartet_ids: dict[int, int] = {}
        self._metrics_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        limits = self._config.limits
        sock = self._server.listen()
        latency = self._gateway.latency_header
        front = self._module.Front(
            sock.fileno(),
            (
                int(limits.max_header_bytes),
                int(limits.max_header_count),
                int(limits.max_url_bytes),
                int(limits.max_connections_per_client),
                float(limits.header_timeout),
                float(limits.keepalive_timeout),
                float(limits.body_timeout),
            ),
            latency,
            b"1.1 sampan",
            self._server.scheme.encode("ascii"),
            status_lines(),
        )
        self._front = front
        try:
            self.swap(self._gateway.table)
        except Exception:
            self._front = None  # never started: stop() drains the Python server alone
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._front.notify_fd, self._collect)
        self._front.start()
        self._metrics_timer = self._loop.call_later(METRICS_INTERVAL, self._merge_metrics)

    def prepare(self, table: RouteTable) -> FrontTable:
        """What the front will serve of ``table`` (raises before anything is swapped)."""
        return FrontTable(table, self._gateway.encoded_slash, self._quartet_id)

    def swap(self, table: RouteTable | FrontTable) -> None:
        """Serve ``table`` from the next request on (the front's cached decisions go too)."""
        front_table = table if isinstance(table, FrontTable) else self.prepare(table)
        resolver = front_table.resolve if front_table.usable and front_table.specs else None
        self._front.set_table(resolver, front_table.specs)
        self._table = front_table

    def _quartet_id(self, quartet: TargetMetrics) -> int:
        """A stable number per quartet: counts of a request served on a replaced table still
        reach the right route's quartet."""
        found = self._quartet_ids.get(id(quartet))
        if found is None:
            found = self._quartet_ids[id(quartet)] = len(self._quartets)
            self._quartets.append(quartet)
        return found

    def _merge_metrics(self) -> None:
        front = self._front
        if front is None:
            return
        quartets = self._quartets
        for index, buckets, seconds, errors in front.take_metrics():
            quartets[index].merge(buckets, seconds, errors)
        if self._loop is not None and front.running:
            self._metrics_timer = self._loop.call_later(METRICS_INTERVAL, self._merge_metrics)

    def stats(self) -> dict[str, Any]:
        return dict(self._front.stats()) if self._front is not None else {}

    def _collect(self) -> None:
        front = self._front
        handoffs, observations = front.take()
        if not front.running:
            self._ended.set()
        for fd, refused, ip, _port, data in handoffs:
            self._server.adopt(fd, ip, data, refused=bool(refused), release=front.release)
        table = self._table
        if not observations or table is None:
            return
        routes = table.routes
        for index, _seconds, _status, _failure, detail in observations:
            name = routes[index].name if 0 <= index < len(routes) else "?"
            log.warning("route %s: upstream failed (fast path): %s", name, detail)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (as HttpServer.drain)
        """Stop accepting and let the front's requests finish, then the Python server's."""
        front = self._front
        if front is None:
            await self._server.drain(timeout)
            return
        front.drain()
        self._server.close_listener()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if front.running:
                async with asyncio.timeout(timeout):
                    await self._ended.wait()
        except TimeoutError:
            log.warning("gateway fast path: requests still in flight after %.1fs", timeout)
        front.stop()
        assert self._loop is not None
        self._loop.remove_reader(front.notify_fd)
        if self._metrics_timer is not None:
            self._metrics_timer.cancel()
        self._collect()  # connections handed over at the very end
        self._merge_metrics()
        await self._server.drain(max(0.1, deadline - loop.time()))
        self._front = None
