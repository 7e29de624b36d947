"""The pooled keep-alive HTTP/1.1 upstream client (asyncio Protocol + httptools).

One request at a time per connection (no pipelining). The request body is streamed with
write backpressure; the response body is streamed to the caller without buffering, except
that a response which arrived whole with its head is kept as bytes (``content``), the
common case of small API answers, so the proxy can answer with one write.

A connection goes back to the pool only when the response was read whole, both sides
keep-alive, the request was written whole and nothing failed. A pooled connection that the
upstream closed while idle is noticed when taken (``connection_lost`` already seen); if one
still fails before any response byte (the close raced the request), the request is sent
once more on a fresh connection when its body can be replayed (no body or a ``BytesBody``).
Timeouts, resets, refused connects and bad responses raise ``UpstreamError`` with a
``kind`` a retry policy can act on.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import SplitResult, urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from sampan.http.body import Body, BytesBody
from sampan.http.headers import Headers
from sampan.http.pool import IdleConnections
from sampan.http.upstream_body import (
    ErrorKind,
    UpstreamBody,
    UpstreamError,
    UpstreamTunnel,
    _Stream,
)

__all__ = [
    "ConnectionPool",
    "Endpoint",
    "UpstreamBody",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTunnel",
]

# Request headers the client computes itself (framing).
_FRAMING: Final = frozenset((b"content-length", b"transfer-encoding"))
_HEAD_SPECIAL: Final = _FRAMING | frozenset((b"connection",))
# Methods whose empty body is still announced (RFC 9110 §8.6: a user agent SHOULD send
# Content-Length: 0 for a request that normally carries content).
_BODY_METHODS: Final = frozenset(("POST", "PUT", "PATCH"))
# A BytesBody smaller than this is written in the same send() as the head.
_COALESCE: Final = 16 * 1024

# Bounds on a response head (an upstream is trusted more than a client, but not blindly).
_MAX_HEAD_BYTES: Final = 64 * 1024
_MAX_HEADERS: Final = 256

_IDLE, _ACTIVE, _TUNNEL, _CLOSED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an upstream listens. ``host`` is a name or an IP literal (IPv6 without
    brackets); with ``tls`` the certificate is checked against ``host``."""

    host: str
    port: int
    tls: bool = False
    peer_id: str | None = None
    """With ``tls``: the identity the server must prove (checked by the pool's
    ``peer_verifier``, e.g. a SPIFFE ID in the mesh, where hostnames are not checked)."""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://host:port`` or ``https://host[:port]`` (``[::1]`` for IPv6) -> Endpoint.

        A path other than ``/`` is refused here; see ``split_base_url`` to keep one."""
        endpoint, path = split_base_url(url)
        if path:
            raise ValueError(f"{url!r}: give only scheme://host:port (no path)")
        return endpoint

    @property
    def server_hostname(self) -> str | None:
        return self.host if self.tls else None

    @property
    def authority(self) -> str:
        """``host[:port]`` as a Host header has it (port omitted when it is the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_base_url(url: str) -> tuple[Endpoint, str]:
    """``scheme://host:port/base`` -> (Endpoint, ``/base`` without trailing ``/``, or "")."""
    parts = urlsplit(url.strip())
    endpoint = endpoint_of(url, parts)
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: no query or fragment in an upstream URL")
    return endpoint, parts.path.rstrip("/")


def endpoint_of(url: str, parts: SplitResult) -> Endpoint:
    """Where ``url`` (split as ``parts``) says to connect: http or https, a host, a valid
    port (the scheme's by default), no credentials."""
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: credentials do not belong in the URL (use headers)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    tls = scheme == "https"
    if port is None:
        port = 443 if tls else 80
    return Endpoint(host, port, tls)


class UpstreamResponse:
    """A response head and its streamed body. Read ``body`` to the end or ``aclose()``."""

    __slots__ = ("body", "headers", "http_version", "keep_alive", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: UpstreamBody,
        http_version: str,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.keep_alive = keep_alive

    @property
    def content(self) -> bytes | None:
        """The whole body when it is already in memory (arrived with the head), else None."""
        return self.body.data

    async def aclose(self) -> None:
        await self.body.aclose()


class _Connection(asyncio.Protocol):
    """One upstream connection: one exchange at a time, then back to the pool."""

    def __init__(self, pool: ConnectionPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.loop = pool._loop_or_running()
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.state = _ACTIVE
        self.idle_since = 0.0
        self.exchanges = 0
        self.lost_exc: BaseException | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        # The current exchange.
        self._head_waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._received = False
        self._is_head = False
        self._expect_upgrade = False
        self._informational = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._keep_alive = False
        self._message_done = False
        self._request_done = False
        self._must_close = False
        self._body_stream: _Stream | None = None
        self._body_parts: list[bytes] = []
        self._handed = False
        self._head_bytes = 0
        self._tunnel_stream: _Stream | None = None
        # Response-head deadline: one timer per connection, re-armed only when it fires
        # early (keep-alive requests in a row cost no timer each).
        self._deadline = 0.0
        self._read_timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.pool._opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        previous = self.state
        self.state = _CLOSED
        self.lost_exc = exc
        self.pool._closed(self, was_idle=previous == _IDLE)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(
                UpstreamError("reset", "the upstream closed the connection", phase="send")
            )
        if previous == _TUNNEL:
            if self._tunnel_stream is not None:
                self._tunnel_stream.feed_eof()
            return
        if previous != _ACTIVE:
            return
        if self._head_done and not self._message_done and self._framing() == (None, False):
            # A body without length or chunking ends when the connection does.
            self._on_message_done()
            return
        if not self._message_done:
            detail = f": {exc}" if exc is not None else ""
            self._fail(
                UpstreamError(
                    "reset",
                    f"the upstream closed the connection{detail}",
                    phase="body" if self._head_done else "head",
                    before_response=not self._received,
                )
            )

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _TUNNEL:
            assert self._tunnel_stream is not None
            self._tunnel_stream.feed(data)
            return
        if state != _ACTIVE:
            # Bytes on an idle connection: the upstream is confused; never reuse it.
            self.abort()
            return
        self._received = True
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._on_upgrade(data[int(upgrade.args[0]) :])
            return
        except HttpParserError as exc:
            self._protocol_error(f"invalid response from the upstream: {exc}")
            return
        if not self._head_done and self._head_bytes > _MAX_HEAD_BYTES:
            self._protocol_error("the upstream's response head is too large")
            return
        if self._message_done and self.state == _ACTIVE:
            if self._is_head:
                # httptools cannot be told that a HEAD response has no body: start afresh.
                self.parser = HttpResponseParser(self)
            if self._handed:
                # Else the exchange has not picked the response up yet: it releases then.
                self._maybe_release()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self._informational = True  # 100 Continue, 103 Early Hints: wait for the answer
            return
        if self._message_done or self._head_done:
            raise HttpParserError("a second response to one request")
        headers = self._headers
        if len(headers) > _MAX_HEADERS or (
            self._head_bytes > _MAX_HEAD_BYTES
            and sum(len(n) + len(v) + 4 for n, v in headers) > _MAX_HEAD_BYTES
        ):
            raise HttpParserError("response head too large")
        self._status = status
        keep_alive = parser.should_keep_alive()
        if self._is_head and not keep_alive:
            # llhttp thinks a HEAD answer without length runs to EOF; it does not.
            keep_alive = parser.get_http_version() == "1.1" and not any(
                name == b"connection" and b"close" in value.lower() for name, value in self._headers
            )
        self._keep_alive = keep_alive
        self._head_done = True
        if status == 101 and not self._expect_upgrade:
            raise HttpParserError("101 Switching Protocols to a request that did not ask")
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._is_head or status in (204, 304) or (100 <= status < 200):
            self._on_message_done()

    def on_body(self, body: bytes) -> None:
        stream = self._body_stream
        if stream is not None:
            stream.feed(body)
        else:
            self._body_parts.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._message_done:
            self._on_message_done()

    # -- exchange -----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        transport = self.transport
        return self.state == _IDLE and transport is not None and not transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and self.state != _CLOSED:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def _framing(self) -> tuple[int | None, bool]:
        """(Content-Length, chunked) of the current response (llhttp validated both), read
        only when a body is streamed or the connection ends mid-body."""
        length: int | None = None
        chunked = False
        for name, value in self._headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        return length, chunked

    def _begin(self, is_head: bool, expect_upgrade: bool) -> None:
        self.state = _ACTIVE
        self.exchanges += 1
        self._head_waiter = None
        self._error = None
        self._received = False
        self._is_head = is_head
        self._expect_upgrade = expect_upgrade
        self._informational = False
        self._status = 0
        self._headers = []
        self._head_done = False
        self._keep_alive = False
        self._message_done = False
        self._request_done = False
        self._must_close = False
        self._body_stream = None
        self._body_parts = []
        self._handed = False
        self._head_bytes = 0

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._body_stream is not None:
            self._body_stream.set_exception(error)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(error)

    def _protocol_error(self, message: str) -> None:
        self._fail(
            UpstreamError(
                "protocol",
                message,
                phase="body" if self._head_done else "head",
                before_response=False,
            )
        )
        self._must_close = True
        self.abort()

    def _on_message_done(self) -> None:
        self._message_done = True
        stream = self._body_stream
        if stream is not None:
            stream.feed_eof()

    def _maybe_release(self) -> None:
        """After the response ended: back to the pool, or closed."""
        if not (self._message_done and self._request_done) or self.state != _ACTIVE:
            return
        stream = self._body_stream
        if stream is not None:
            stream.detach()
        if self._keep_alive and not self._must_close and self._error is None:
            self.resume_reading()
            self.pool._release(self)
        else:
            self.state = _CLOSED
            self.close()

    def _on_upgrade(self, rest: bytes) -> None:
        if not self._expect_upgrade or self._status != 101:
            self._protocol_error("unexpected protocol upgrade from the upstream")
            return
        self.state = _TUNNEL
        stream = self._tunnel_stream = _Stream(self)
        if rest:
            stream.feed(rest)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm_deadline(self, timeout: float) -> None:
        loop = self.loop
        deadline = loop.time() + timeout
        self._deadline = deadline
        self._read_timeout = timeout
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._head_waiter
        if waiter is None or waiter.done():
            return  # nothing is waiting for a head: stay disarmed
        if self.loop.time() >= self._deadline:
            self._head_timeout(self._read_timeout)
        else:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _head_timeout(self, timeout: float) -> None:
        if self._head_done or self.state != _ACTIVE:
            return  # the head arrived in the same loop iteration
        self._fail(
            UpstreamError(
                "timeout",
                f"no response from the upstream within {timeout:g}s",
                phase="head",
                before_response=not self._received,
            )
        )
        self._must_close = True
        self.abort()

    def _write_timeout(self, timeout: float) -> None:
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(
                UpstreamError(
                    "timeout",
                    f"the upstream did not take the request within {timeout:g}s",
                    phase="send",
                    before_response=not self._received,
                )
            )
        self._must_close = True
        self.abort()

    async def _drain(self, max_wait: float | None) -> None:
        if not self._write_paused:
            return
        if self.state == _CLOSED:
            raise UpstreamError("reset", "the upstream closed the connection", phase="send")
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiter = waiter
        timer = self.loop.call_later(max_wait, self._write_timeout, max_wait) if max_wait else None
        try:
            await waiter
        finally:
            self._drain_waiter = None
            if timer is not None:
                timer.cancel()

    def write(self, data: bytes) -> None:
        """Tunnel writes."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Tunnel backpressure."""
        await self._drain(None)

    @property
    def closed(self) -> bool:
        return self.state == _CLOSED

    def _sent_error(self) -> UpstreamError:
        if self._error is not None:
            return self._error
        return UpstreamError(
            "reset",
            "the upstream closed the connection while the request was sent",
            phase="send",
            before_response=not self._received,
        )

    async def _send_stream(
        self, head: bytes, body: Body, chunked: bool, write_timeout: float
    ) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(head)
        sent = 0
        # Bounded by the body, which its own producer limits (the server's body limit).
        async for chunk in body.chunks():
            if not chunk:
                continue
            if self._message_done or self.state != _ACTIVE or transport.is_closing():
                # The upstream answered early (e.g. 413) or went away: stop sending.
                self._must_close = True
                if self._head_done:
                    return
                raise self._sent_error()
            sent += len(chunk)
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if self._write_paused:
                await self._drain(write_timeout)
        if chunked:
            if not transport.is_closing():
                transport.write(b"0\r\n\r\n")
        elif body.length is not None and sent != body.length:
            self._must_close = True
            raise UpstreamError(
                "protocol",
                f"request body was {sent} bytes, its Content-Length said {body.length}",
                phase="send",
            )

    async def exchange(
        self,
        head: bytes,
        body: Body | None,
        chunked: bool,
        *,
        is_head: bool,
        expect_upgrade: bool,
        read_timeout: float,
        write_timeout: float,
    ) -> UpstreamResponse:
        self._begin(is_head, expect_upgrade)
        transport = self.transport
        if transport is None or transport.is_closing() or self.state == _CLOSED:
            raise UpstreamError("reset", "the upstream connection is closed", phase="send")
        try:
            if body is None or body.length == 0:
                transport.write(head)
            elif type(body) is BytesBody:
                data = body.data
                if len(data) <= _COALESCE:
                    transport.write(head + data)
                else:
                    transport.writelines((head, data))
            else:
                await self._send_stream(head, body, chunked, write_timeout)
            if self._write_paused and not self._head_done:
                await self._drain(write_timeout)
        except BaseException:
            self._must_close = True
            self.abort()
            raise
        self._request_done = True
        if not self._head_done:
            if self._error is not None:
                raise self._error
            if self.state == _CLOSED:
                raise self._sent_error()
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._head_waiter = waiter
            self._arm_deadline(read_timeout)
            try:
                await waiter
            except asyncio.CancelledError:
                self._must_close = True
                self.abort()
                raise
            finally:
                self._head_waiter = None
        return self._response(read_timeout)

    def _response(self, read_timeout: float) -> UpstreamResponse:
        self._handed = True
        headers = Headers()
        headers.items = self._headers  # the parser's list, not copied
        version = self.parser.get_http_version()
        if self.state == _TUNNEL:
            body = UpstreamBody.complete(b"")
        elif self._message_done:
            parts = self._body_parts
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            body = UpstreamBody.complete(data)
            self._maybe_release()
        else:
            stream = self._body_stream = _Stream(self)
            for part in self._body_parts:
                stream.feed(part)
            self._body_parts = []
            if self._error is not None:
                stream.set_exception(self._error)
            body = UpstreamBody(stream, self._framing()[0], read_timeout)
        return UpstreamResponse(self._status, headers, body, version, self._keep_alive)

    def tunnel(self) -> UpstreamTunnel:
        assert self._tunnel_stream is not None
        return UpstreamTunnel(self, self._tunnel_stream)


def _build_head(
    method: str, target: bytes, headers: Headers, endpoint: Endpoint, body: Body | None
) -> tuple[bytes, bool, bool]:
    """The request head, whether the body goes chunked, and whether the caller asked to
    close the connection afterwards."""
    items = headers.items
    names = {pair[0] for pair in items}
    close = False
    if not names.isdisjoint(_HEAD_SPECIAL):
        items = [pair for pair in items if pair[0] not in _FRAMING]
        close = any(name == b"connection" and b"close" in value.lower() for name, value in items)
    lines = [b": ".join(pair) for pair in items]
    if b"host" not in names:
        lines.append(b"host: " + endpoint.authority.encode("idna"))
    chunked = False
    if body is None:
        if method in _BODY_METHODS:
            lines.append(b"content-length: 0")
    elif body.length is not None:
        lines.append(b"content-length: %d" % body.length)
    else:
        lines.append(b"transfer-encoding: chunked")
        chunked = True
    head = b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method.encode("ascii"), target, b"\r\n".join(lines))
    # A CR or LF inside a name, value or target would smuggle a header or a request.
    expected = len(lines) + 2
    if head.count(b"\n") != expected or head.count(b"\r") != expected or b" " in target:
        raise ValueError("request line or header contains CR, LF or a space where not allowed")
    return head, chunked, close


# Called once per new TLS connection with the SSL object and the endpoint's ``peer_id``;
# raises when the server is not who it must be.
PeerVerifier = Callable[[Any, str], object]


class ConnectionPool:
    """Keep-alive connections to upstream endpoints, shared by every route of a node."""

    def __init__(
        self,
        *,
        max_idle_per_endpoint: int = 64,
        idle_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        peer_verifier: PeerVerifier | None = None,
    ) -> None:
        self._idle: IdleConnections[Endpoint, _Connection] = IdleConnections(
            max_per_key=max_idle_per_endpoint, idle_timeout=idle_timeout
        )
        self._ssl_context = ssl_context
        self._default_context: ssl.SSLContext | None = None
        self._peer_verifier = peer_verifier
        self._open: set[_Connection] = set()
        self._created = 0
        self._reused = 0
        self._retried = 0
        self._closed_pool = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public API ---------------------------------------------------------------------------

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body | None = None,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
    ) -> UpstreamResponse:
        """Send one request and return once the response head arrived.

        ``headers`` are sent as given (names lowercase) except Content-Length and
        Transfer-Encoding, which follow ``body`` (its ``length``, else chunked); Host is added
        from ``endpoint`` when missing. Hop-by-hop headers are the caller's business."""
        head, chunked, close = _build_head(method, target, headers, endpoint, body)
        return await self._send(
            endpoint,
            head,
            body,
            chunked,
            close=close,
            is_head=method == "HEAD",
            expect_upgrade=False,
            may_resend=_may_resend(method, headers),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
        )

    async def upgrade(
        self,
        endpoint: Endpoint,
        method: str,
        target: bytes,
        headers: Headers,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
    ) -> tuple[UpstreamResponse, UpstreamTunnel | None]:
        """Send an upgrade request (``headers`` carry Upgrade and Connection: upgrade).

        On 101 returns the head and a tunnel over the upstream socket (bytes the upstream
        sent right after the 101 come first); the connection leaves the pool for good.
        Otherwise returns the ordinary response and None."""
        head, chunked, close = _build_head(method, target, headers, endpoint, None)
        conn_box: list[_Connection] = []
        response = await self._send(
            endpoint,
            head,
            None,
            chunked,
            close=close,
            is_head=method == "HEAD",
            expect_upgrade=True,
            may_resend=method in IDEMPOTENT_METHODS,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            used=conn_box,
        )
        conn = conn_box[-1]
        if response.status == 101 and conn.state == _TUNNEL:
            return response, conn.tunnel()
        return response, None

    async def close(self) -> None:
        """Close every connection, idle or busy; the pool refuses requests afterwards."""
        self._closed_pool = True
        for conn in self._idle.drain():
            conn.close()
        for conn in list(self._open):
            conn.close()
        if self._open:
            await asyncio.sleep(0)  # let connection_lost run

    def stats(self) -> dict[str, int]:
        idle = self._idle.count()
        return {
            "open": len(self._open),
            "idle": idle,
            "in_use": len(self._open) - idle,
            "created": self._created,
            "reused": self._reused,
            "retried": self._retried,
        }

    # -- internals ----------------------------------------------------------------------------

    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _send(
        self,
        endpoint: Endpoint,
        head: bytes,
        body: Body | None,
        chunked: bool,
        *,
        close: bool,
        is_head: bool,
        expect_upgrade: bool,
        may_resend: bool,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        used: list[_Connection] | None = None,
    ) -> UpstreamResponse:
        if self._closed_pool:
            raise RuntimeError("the connection pool is closed")
        loop = self._loop_or_running()
        conn = self._idle.take(endpoint, loop.time())
        reused = conn is not None
        if conn is None:
            conn = await self._connect(endpoint, connect_timeout)
        else:
            self._reused += 1
        # Two attempts at most: the second only on a fresh connection after a stale one.
        for attempt in (1, 2):
            if used is not None:
                used.append(conn)
            if close:
                conn._must_close = True
            try:
                response = await conn.exchange(
                    head,
                    body,
                    chunked,
                    is_head=is_head,
                    expect_upgrade=expect_upgrade,
                    read_timeout=read_timeout,
                    write_timeout=write_timeout,
                )
            except UpstreamError as exc:
                stale = (
                    attempt == 1
                    and reused
                    and exc.before_response
                    and exc.kind == "reset"
                    and may_resend
                    and _replayable(body)
                )
                if not stale:
                    raise
                self._retried += 1
                conn = await self._connect(endpoint, connect_timeout)
                reused = False
                continue
            if close:
                response.keep_alive = False
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self, endpoint: Endpoint, connect_timeout: float) -> _Connection:
        loop = self._loop_or_running()
        ssl_context: ssl.SSLContext | None = None
        if endpoint.tls:
            ssl_context = self._ssl_context
            if ssl_context is None or (endpoint.peer_id is None and not ssl_context.check_hostname):
                # A context without hostname checks (the mesh's, which checks SPIFFE IDs
                # instead) is only for endpoints that name the identity they must prove;
                # any other https endpoint gets the system's trust and hostname checks.
                ssl_context = self._public_context()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, endpoint),
                    endpoint.host,
                    endpoint.port,
                    ssl=ssl_context,
                    server_hostname=endpoint.server_hostname,
                )
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"connect did not finish within {connect_timeout:g}s", phase="connect"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            kind: ErrorKind = "connect"
            raise UpstreamError(kind, f"cannot connect: {exc}", phase="connect") from exc
        if endpoint.peer_id is not None and endpoint.tls:
            if self._peer_verifier is None:
                conn.close()
                raise UpstreamError(
                    "connect", "no verifier for the expected peer identity", phase="connect"
                )
            try:
                transport = conn.transport
                ssl_object = transport.get_extra_info("ssl_object") if transport else None
                self._peer_verifier(ssl_object, endpoint.peer_id)
            except Exception as exc:
                conn.close()
                raise UpstreamError(
                    "connect", f"wrong server identity: {exc}", phase="connect"
                ) from exc
        self._created += 1
        return conn

    def _public_context(self) -> ssl.SSLContext:
        if self._default_context is None:
            self._default_context = ssl.create_default_context()
        return self._default_context

    def _opened(self, conn: _Connection) -> None:
        self._open.add(conn)

    def _closed(self, conn: _Connection, *, was_idle: bool) -> None:
        self._open.discard(conn)
        if was_idle:
            self._idle.discard(conn.endpoint, conn)

    def _release(self, conn: _Connection) -> None:
        conn.state = _IDLE
        if self._closed_pool or not self._idle.put(
            conn.endpoint, conn, self._loop_or_running().time()
        ):
            conn.state = _CLOSED
            conn.close()


# The upstream may have acted on a request before the connection reset; only methods that
# are safe to repeat are resent (RFC 9110 9.2.2; nginx's proxy_next_upstream default).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _may_resend(method: str, headers: Headers) -> bool:
    """Idempotent methods may go out twice; so may any request with an Idempotency-Key,
    since the key is the sender's promise that the upstream deduplicates it."""
    return method in IDEMPOTENT_METHODS or b"idempotency-key" in headers


def _replayable(body: Body | None) -> bool:
    return body is None or type(body) is BytesBody or body.length == 0
