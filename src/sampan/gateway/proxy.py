"""The proxy step of a ``service`` target: one request to an upstream, its answer back.

See docs/proxy.md. In short: hop-by-hop headers are dropped both ways (and any header the
Connection header names); X-Forwarded-For/-Proto/-Host, X-Real-IP and Forwarded are
written by us, extending the client's values only when the direct peer is a trusted
proxy; Via is added both ways; endpoints are used round-robin over the shared pool;
timeouts answer 504 and other upstream failures 502 (problem+json naming the route, never
the upstream's address); WebSocket upgrades are tunnelled; streamed bodies (SSE) are
relayed piece by piece.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from sampan.gateway.config import ServiceTarget
from sampan.gateway.forwarded import TrustedProxies, client_ip, peer_is_trusted
from sampan.http.body import Body
from sampan.http.client import (
    ConnectionPool,
    Endpoint,
    UpstreamBody,
    UpstreamError,
    UpstreamResponse,
    UpstreamTunnel,
    split_base_url,
)
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import RawConnection, Response, problem
from sampan.mesh.tracing import next_traceparent

log = logging.getLogger("sampan.gateway.proxy")

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones proxies know about.
HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    )
)
# Request fields we drop besides: framing is recomputed by the client, and Expect is
# answered by our own server, never passed on.
_REQUEST_DROP: Final = HOP_BY_HOP | frozenset((b"content-length", b"expect"))
# Request fields we rewrite.
_FORWARDING: Final = frozenset(
    (b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")
)
_REWRITTEN: Final = _FORWARDING | frozenset((b"x-real-ip", b"via"))
_NO_BODY_STATUS: Final = frozenset((204, 304))

_Reader = Callable[[], Awaitable[bytes]]
_Writer = Callable[[bytes], None]
_Drainer = Callable[[], Awaitable[None]]


_NOTHING: Final[frozenset[bytes]] = frozenset()
# Names the request pass looks at (everything else is copied without a second look).
_REQUEST_SPECIAL: Final = _REQUEST_DROP | _REWRITTEN
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | frozenset((b"via",))
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _tokens(values: list[bytes]) -> frozenset[bytes]:
    """Lowercased field names listed in Connection headers (RFC 9110 §7.6.1)."""
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def quote_token(value: bytes) -> bytes:
    """An RFC 7239 value: as is when it is a token, else a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class Proxy:
    """Forward a request to one of ``target.endpoints`` (round-robin) through ``pool``."""

    __slots__ = (
        "_connect_timeout",
        "_next",
        "_pool",
        "_preserve_host",
        "_read_timeout",
        "_trusted",
        "_upstreams",
        "_via",
        "_write_timeout",
        "route_name",
    )

    def __init__(
        self,
        target: ServiceTarget,
        pool: ConnectionPool,
        *,
        route_name: str,
        trusted_proxies: Sequence[str],
        via: str = "1.1 sampan",
    ) -> None:
        if not target.endpoints:
            raise ValueError(
                f"route {route_name!r}: a service target without endpoints needs the mesh"
            )
        self._upstreams: list[tuple[Endpoint, bytes, bytes]] = []
        for url in target.endpoints:
            endpoint, base = split_base_url(url)
            self._upstreams.append(
                (endpoint, base.encode("ascii"), endpoint.authority.encode("idna"))
            )
        self._pool = pool
        self.route_name = route_name
        self._trusted = TrustedProxies(trusted_proxies).networks
        self._via = via.encode("latin-1")
        self._preserve_host = target.preserve_host
        self._connect_timeout = float(target.connect_timeout)
        self._read_timeout = float(target.read_timeout)
        self._write_timeout = float(target.write_timeout)
        self._next = 0

    async def __call__(self, request: Request, *, upstream_path: str | bytes) -> Response:
        """``upstream_path``: the request target to send (path and query, encoded), e.g.
        what ``upstream_target`` returns (bytes, or str holding latin-1 bytes)."""
        upstreams = self._upstreams
        index = self._next
        self._next = index + 1 if index + 1 < len(upstreams) else 0
        endpoint, base, authority = upstreams[index]
        target = (
            upstream_path if isinstance(upstream_path, bytes) else upstream_path.encode("latin-1")
        )
        if base:
            target = base + target if target.startswith(b"/") else base + b"/" + target
        headers, upgrade = self._request_headers(request, authority)
        headers.set(b"traceparent", next_traceparent(request.headers.get(b"traceparent")))
        try:
            if upgrade is not None:
                return await self._upgrade(request, endpoint, target, headers, upgrade)
            body: Body | None = request.body
            if body is not None and body.length == 0:
                body = None
            response = await self._pool.request(
                endpoint,
                request.method,
                target,
                headers,
                body,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                write_timeout=self._write_timeout,
            )
        except UpstreamError as exc:
            return self._failure(exc, endpoint)
        return self._response(request, response)

    def fast_path_spec(self) -> FastPathSpec | None:
        """What the compiled front needs to proxy this route itself, or None when it cannot
        (TLS upstreams, endpoints given by name: the front connects to IP literals only)."""
        endpoints: list[tuple[str, int, bytes, bytes]] = []
        for endpoint, base, authority in self._upstreams:
            if endpoint.tls or not _is_ip(endpoint.host):
                return None
            endpoints.append((endpoint.host, endpoint.port, base, authority))
        if not endpoints or self._via != b"1.1 sampan":
            return None
        route = self.route_name
        failures = [
            self._failure(UpstreamError(kind, "fast path", phase="connect"), None)
            for kind in ("connect", "protocol", "timeout")
        ]
        return FastPathSpec(
            endpoints=endpoints,
            preserve_host=self._preserve_host,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            write_timeout=self._write_timeout,
            failures=failures,
            route=route,
        )

    # -- request ------------------------------------------------------------------------------

    def _request_headers(self, request: Request, authority: bytes) -> tuple[Headers, bytes | None]:
        """The headers to send upstream, and the Upgrade value when this is an upgrade."""
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        host: bytes | None = None
        upgrade: bytes | None = None
        connection: list[bytes] | None = None
        xff: list[bytes] = []
        proto: bytes | None = None
        fwd_host: bytes | None = None
        forwarded: list[bytes] = []
        via: list[bytes] = []
        for pair in request.headers.items:  # one pass; ordinary fields are copied as they are
            name = pair[0]
            if name not in _REQUEST_SPECIAL:
                append(pair)
            elif name == b"host":
                host = pair[1]
            elif name == b"connection":
                if connection is None:
                    connection = []
                connection.append(pair[1])
            elif name == b"upgrade":
                upgrade = pair[1]
            elif name == b"x-forwarded-for":
                xff.append(pair[1])
            elif name == b"x-forwarded-proto":
                proto = proto or pair[1]
            elif name == b"x-forwarded-host":
                fwd_host = fwd_host or pair[1]
            elif name == b"forwarded":
                forwarded.append(pair[1])
            elif name == b"via":
                via.append(pair[1])
            # else: hop-by-hop, framing, Expect, X-Real-IP: dropped (the last is ours)
        named = _tokens(connection) if connection is not None else _NOTHING
        if named:
            out = [pair for pair in out if pair[0] not in named]

        peer = request.client[0] or "unknown"
        scheme = request.scheme
        trusted = self._trusted
        if trusted and peer_is_trusted(request, trusted):
            xff.append(peer.encode("latin-1"))
            xff_value = b", ".join(xff)
            proto = proto or scheme.encode("latin-1")
            fwd_host = fwd_host or host
        else:  # the client's forwarding headers are not believed: replaced, never extended
            forwarded = []
            xff_value = peer.encode("latin-1")
            proto = scheme.encode("latin-1")
            fwd_host = host
        node = f'"[{peer}]"' if ":" in peer else peer  # the peer is an IP literal
        element = f"for={node};proto={scheme}".encode("latin-1")
        if fwd_host is not None:
            element += b";host=" + quote_token(fwd_host)
        forwarded.append(element)
        real_ip = request.state.get("client_ip") or client_ip(request, trusted)
        via.append(self._via)
        out += (
            (b"host", host if self._preserve_host and host is not None else authority),
            (b"x-forwarded-for", xff_value),
            (b"x-forwarded-proto", proto),
            (b"forwarded", b", ".join(forwarded)),
            (b"x-real-ip", real_ip.encode("latin-1")),
            (b"via", b", ".join(via)),
        )
        if fwd_host is not None:
            out.append((b"x-forwarded-host", fwd_host))
        if upgrade is not None and b"upgrade" in named:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", upgrade))
            return Headers(out), upgrade
        return Headers(out), None

    # -- response -----------------------------------------------------------------------------

    def _response_headers(self, upstream: Headers) -> Headers:
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        connection: list[bytes] | None = None
        via: list[bytes] = []
        for pair in upstream.items:
            name = pair[0]
            if name not in _RESPONSE_SPECIAL:
                append(pair)
            elif name == b"via":
                via.append(pair[1])
            elif name == b"connection":
                if connection is None:
                    connection = []
                connection.append(pair[1])
        if connection is not None:
            named = _tokens(connection)
            if named:
                out = [pair for pair in out if pair[0] not in named]
        via.append(self._via)
        out.append((b"via", b", ".join(via)))
        return Headers(out)

    def _response(self, request: Request, upstream: UpstreamResponse) -> Response:
        headers = self._response_headers(upstream.headers)
        status = upstream.status
        content = upstream.content
        if request.method == "HEAD" or status in _NO_BODY_STATUS:
            # No body, whatever Content-Length says (it describes the GET representation).
            return Response(status, headers, b"")
        if content is not None:
            headers.remove(b"content-length")  # the server sets it from the bytes
            return Response(status, headers, content)
        # Streamed: Content-Length, when the upstream gave one, is kept for the server.
        return Response(status, headers, _relay(upstream.body, self.route_name))

    def _failure(self, exc: UpstreamError, endpoint: Endpoint | None) -> Response:
        if endpoint is not None:
            log.warning(
                "route %s: upstream %s:%d failed (%s, %s): %s",
                self.route_name,
                endpoint.host,
                endpoint.port,
                exc.kind,
                exc.phase,
                exc,
            )
        route = self.route_name
        if exc.kind == "timeout":
            return problem(
                504,
                "Gateway Timeout",
                f"the upstream service of route {route!r} did not answer in time",
                route=route,
            )
        detail = (
            f"the upstream service of route {route!r} sent an invalid response"
            if exc.kind == "protocol"
            else f"the upstream service of route {route!r} is unavailable"
        )
        return problem(502, "Bad Gateway", detail, route=route)

    # -- upgrades -----------------------------------------------------------------------------

    async def _upgrade(
        self, request: Request, endpoint: Endpoint, target: bytes, headers: Headers, kind: bytes
    ) -> Response:
        response, tunnel = await self._pool.upgrade(
            endpoint,
            request.method,
            target,
            headers,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            write_timeout=self._write_timeout,
        )
        if tunnel is None:
            return self._response(request, response)
        out = self._response_headers(response.headers)
        # The server adds "connection: upgrade" itself and keeps Upgrade on a 101.
        out.add(b"upgrade", response.headers.get(b"upgrade") or kind)
        relay = _TunnelRelay(tunnel, self._read_timeout, self.route_name)
        return Response(101, out, upgrade=relay)


@dataclass(frozen=True, slots=True)
class FastPathSpec:
    """A plain proxy route as the compiled front serves it (see gateway/fast_front.py)."""

    endpoints: list[tuple[str, int, bytes, bytes]]  # host (IP literal), port, base, authority
    preserve_host: bool
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    failures: list[Response]  # the answers to: unavailable, invalid response, timeout
    route: str


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _relay(body: UpstreamBody, route: str) -> AsyncIterator[bytes]:
    """The upstream body, piece by piece as it arrives (SSE, long downloads). An upstream
    failure mid-body is re-raised so the server cuts the client connection rather than end
    a truncated body cleanly."""
    try:
        async for chunk in body.chunks():
            yield chunk
    except UpstreamError as exc:
        log.warning("route %s: upstream body failed (%s): %s", route, exc.kind, exc)
        raise
    finally:
        await body.aclose()


class _TunnelRelay:
    """Pumps bytes both ways between the client and the upstream until either side closes
    or nothing moves for ``idle_timeout`` seconds (the route's read timeout, as nginx does
    for WebSockets)."""

    __slots__ = ("_idle_timeout", "_last", "_route", "_upstream")

    def __init__(self, upstream: UpstreamTunnel, idle_timeout: float, route: str) -> None:
        self._upstream = upstream
        self._idle_timeout = idle_timeout
        self._route = route
        self._last = 0.0

    async def __call__(self, client: RawConnection) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        upstream = self._upstream
        tasks = {
            asyncio.ensure_future(self._pump(client.read, upstream.write, upstream.drain)),
            asyncio.ensure_future(self._pump(upstream.read, client.write, client.drain)),
        }
        try:
            idle = self._idle_timeout
            # Bounded: each round either ends the tunnel or sleeps at most `idle` seconds,
            # and `_last` must move for another round.
            while True:
                done, _ = await asyncio.wait(
                    tasks, timeout=idle, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    for task in done:
                        if not task.cancelled() and task.exception() is not None:
                            log.info("route %s: tunnel ended: %s", self._route, task.exception())
                    break
                quiet = loop.time() - self._last
                if quiet >= idle:
                    log.info("route %s: tunnel idle for %.0fs, closed", self._route, quiet)
                    break
                idle = self._idle_timeout - quiet
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            upstream.close()
            client.close()

    async def _pump(self, read: _Reader, write: _Writer, drain: _Drainer) -> None:
        loop = asyncio.get_running_loop()
        # Bounded by the connection: ends at EOF, on error, or when the tunnel is cancelled.
        while data := await read():
            self._last = loop.time()
            write(data)
            await drain()


def upstream_target(
    request: Request,
    route_prefix: str | None,
    strip_prefix: bool,
    rewrite_template: str | None,
    params: Mapping[str, str],
) -> bytes:
    """The request target to send upstream: the normalised path (prefix stripped, or the
    ``rewrite`` template filled in) followed by the client's raw query string.

    In a rewrite template, ``{name}`` is replaced by the percent-encoded parameter (a ``/``
    in it is encoded too) and ``{name...}`` by a catch-all value whose ``/`` are kept; a
    template may carry its own query, which comes before the client's."""
    query = request.query
    if rewrite_template is not None:
        path, _, extra = rewrite_template.partition("?")
        filled = _PARAM.sub(lambda m: _fill(m, params), path)
        out = encode_path(filled if filled.startswith("/") else "/" + filled)
        if extra:
            query = extra.encode("ascii") + (b"&" + query if query else b"")
    elif strip_prefix and route_prefix is not None:
        path = request.path
        prefix = route_prefix.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            path = path[len(prefix) :] or "/"
        out = encode_path(path)
    else:
        out = encode_path(request.path)
    return out + b"?" + query if query else out


_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")
_PATH_SAFE: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_ESCAPE_OR_UNSAFE: Final = re.compile(r"%[0-9A-Fa-f]{2}|[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")
_SEGMENT_UNSAFE: Final = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@]")


def _pct(m: re.Match[str]) -> str:
    text = m.group()
    if len(text) == 3 and text[0] == "%":
        return text.upper()  # an existing escape is kept
    return "".join(f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass"))


def encode_path(path: str) -> bytes:
    """``path`` as a request target: characters not allowed in a path are percent-encoded
    (as UTF-8); existing ``%XX`` escapes are kept, a stray ``%`` becomes ``%25``."""
    if _PATH_SAFE.fullmatch(path):
        return path.encode("ascii")
    return _ESCAPE_OR_UNSAFE.sub(_pct, path).encode("ascii")


def _encode_segment(value: str) -> str:
    if value in (".", ".."):
        return value.replace(".", "%2E")  # never a dot-segment upstream
    return _SEGMENT_UNSAFE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
        value,
    )


def _fill(m: re.Match[str], params: Mapping[str, str]) -> str:
    name = m.group(1)
    try:
        value = params[name]
    except KeyError:
        raise ValueError(f"rewrite parameter {{{name}}} is not captured by the route") from None
    if m.group(2):  # catch-all: keep the separators, encode each segment
        return "/".join(_encode_segment(seg) for seg in value.split("/"))
    return _encode_segment(value)  # a "/" in it is encoded: it stays one segment
