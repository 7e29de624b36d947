"""The data-plane HTTP/1.1 server: an ``asyncio.Protocol`` driving httptools (llhttp).

Why a hand-written protocol rather than an ASGI server: the gateway proxies bytes, so the
server hands handlers the wire's byte headers untouched, streams bodies both ways with
flow control, and spends as little Python per request as it can (one task, one head write).

One request is handled at a time per connection; pipelined requests queue (reading pauses
while they wait) and are answered in order. Everything a client can make the server hold
is bounded: the head (``max_header_bytes``/``max_header_count``/``max_url_bytes``), the
unread body (``HIGH_WATER``), the pipeline (``MAX_PIPELINE``), the time to send a head, a
body piece or to read the response, and the connections per client address. See
docs/http-server.md for the statuses each breach gets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from sampan.http.body import BodyTooLarge
from sampan.http.headers import Headers
from sampan.http.raw_connection import SocketRawConnection
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.http.streaming_body import (
    HIGH_WATER,
    BodyReadError,
    BodyTimeout,
    ClientDisconnected,
    MalformedBody,
    StreamingBody,
)
from sampan.mesh.identity.tls import peer_spiffe_id

if TYPE_CHECKING:
    from sampan.gateway.config import LimitsConfig

__all__ = ["MAX_PIPELINE", "Handler", "HttpServer", "head_without_framing", "status_lines"]

log = logging.getLogger("sampan.http.server")

Handler = Callable[[Request], Awaitable[Response]]

MAX_PIPELINE: Final = 64
"""Pipelined requests parsed ahead of the one being handled; past it the connection closes
once the queued ones are answered (clients retry what was not answered)."""

LINGER_SECONDS: Final = 2.0
"""After an error answer, read and drop what the client still sends for at most this long,
so that closing does not reset the connection before the client has read the answer."""
LINGER_BYTES: Final = 1 << 20

_STATUS_LINES: Final = MappingProxyType(
    {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus}
)
_METHODS: Final = MappingProxyType(
    {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
)
# Framing and connection-management headers: the server writes its own, never the handler's.
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
_SPECIAL_REQUEST_HEADERS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"expect"}
)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_SMALL_BODY: Final = 64 * 1024

# Reading states (what the connection is waiting for from the client) and their timers.
_IDLE = 0  # between requests: keep-alive timeout, silent close
_HEAD = 1  # a request head has started: header timeout, 408
_BODY = 2  # a request body is arriving: body timeout between pieces, 408
_NONE = 3  # nothing expected from the client (handler running, or reading paused)
_LINGER = 4  # closing after an error: drop input until EOF or the linger time

# Connection modes.
_HTTP = 0
_DISCARD = 1  # framing is lost (error, Connection: close): parse nothing more
_UPGRADING = 2  # an upgrade request was parsed: buffer what follows for the new protocol
_RAW = 3  # switched protocols: bytes go to the RawConnection

# Reasons reading is paused (a bit each).
_P_BODY = 1
_P_PIPELINE = 2
_P_UPGRADE = 4
_P_DISCARD = 8


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


class _QueuedError:
    """A protocol error to answer once the responses queued before it are written."""

    __slots__ = ("detail", "status", "title")

    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status = status
        self.title = title
        self.detail = detail


class _BadResponse(Exception):
    """The handler's response cannot be written as given (answered with 500)."""


def _split_target(url: bytes) -> tuple[bytes, bytes]:
    """Path and query of a request target (origin-, absolute- or asterisk-form)."""
    if url[:1] != b"/":
        if url == b"*":
            return url, b""
        scheme_end = url.find(b"://")
        if scheme_end > 0:  # absolute-form: the path starts after the authority
            slash = url.find(b"/", scheme_end + 3)
            query_at = url.find(b"?", scheme_end + 3)
            if slash < 0 or (0 <= query_at < slash):
                url = b"/" + (url[query_at:] if query_at >= 0 else b"")
            else:
                url = url[slash:]
    hash_at = url.find(b"#")
    if hash_at >= 0:
        url = url[:hash_at]
    query_at = url.find(b"?")
    if query_at < 0:
        return url, b""
    return url[:query_at], url[query_at + 1 :]


def _compose_head(status: int, headers: Headers, framing: bytes) -> bytes:
    """Status line + the handler's end-to-end headers + the server's framing lines.

    Raises ``_BadResponse`` if a header would inject a line (CR/LF in a name or value):
    counting line ends over the joined head is one C pass instead of a check per header."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % status
    parts = [line]
    lines = 1
    keep_upgrade = status in (101, 426)
    for name, value in headers.items:
        lower = name.lower()  # cheap insurance: a stray "Content-Length" must not slip through
        if lower in _HOP_BY_HOP and not (keep_upgrade and lower == b"upgrade"):
            continue
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
        lines += 1
    head = b"".join(parts)
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise _BadResponse("a response header contains CR or LF")
    return head + framing


def head_without_framing(status: int, headers: Headers) -> bytes:
    """The status line and end-to-end headers exactly as this server writes them, for a
    front that writes the same answer (it adds the framing lines itself)."""
    return _compose_head(status, headers, b"")


def status_lines() -> list[bytes | None]:
    """The status line this server writes for each code below 1000 (None: no phrase)."""
    return [_STATUS_LINES.get(code) for code in range(1000)]


def _handler_length(headers: Headers) -> bytes | None:
    """The Content-Length the handler set (digits only), or None."""
    value = headers.get(b"content-length")
    if value is None:
        return None
    value = value.strip(b" \t")
    if not value.isdigit():
        raise _BadResponse(f"invalid content-length {value!r}")
    return value


class _Connection(asyncio.Protocol):
    """One client connection: parser callbacks, request queue, timers, response writing."""

    __slots__ = (
        "_body_pauses",
        "_client",
        "_close_after",
        "_closed",
        "_cur",
        "_cur_body",
        "_cur_upgrade",
        "_deadline",
        "_drain_waiter",
        "_eof_seen",
        "_expect",
        "_hbytes",
        "_head_cap",
        "_head_fed",
        "_headers",
        "_host_count",
        "_in_head",
        "_keep",
        "_length",
        "_limits",
        "_linger_left",
        "_loop",
        "_max_body",
        "_max_hbytes",
        "_max_hcount",
        "_max_url",
        "_mode",
        "_no_more",
        "_parser",
        "_pause_mask",
        "_pbody",
        "_peer_id",
        "_phase",
        "_queue",
        "_raw",
        "_reject",
        "_response_started",
        "_scheme",
        "_seq",
        "_sockname",
        "_srv",
        "_streaming",
        "_task",
        "_tbytes",
        "_te",
        "_timer",
        "_timer_when",
        "_tls",
        "_transport",
        "_upbuf",
        "_upbuf_size",
        "_upgrade_req",
        "_url",
        "_waste",
        "_write_paused",
        "admitted",
        "adopted",
        "ip",
    )

    def __init__(self, srv: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        limits = srv.limits
        self._srv = srv
        self._loop = loop
        self._limits = limits
        self._max_url = int(limits.max_url_bytes)
        self._max_hbytes = int(limits.max_header_bytes)
        self._max_hcount = limits.max_header_count
        self._max_body = int(limits.max_body_bytes)
        self._head_cap = self._max_hbytes + self._max_url + 1024
        self._scheme = srv.scheme
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._client: tuple[str, int] = ("", 0)
        self._sockname: tuple[str, int] = ("", 0)
        # TLS: the client certificate's SPIFFE ID, read once per connection (the handshake
        # is done when connection_made runs) and put on each request as state["peer_id"].
        self._tls = srv.ssl is not None
        self._peer_id: str | None = None
        self.ip = ""
        self.admitted = False
        # handed over by the compiled front: the bytes it had read, whether it is over the
        # per-client limit (refused), and the address the front counted it under
        self.adopted: tuple[bytes, bool, str] | None = None
        self._mode = _HTTP
        self._phase = _IDLE
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._pause_mask = 0
        self._body_pauses = 0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._eof_seen = False
        # the message being parsed
        self._seq = 0
        self._in_head = False
        self._head_fed = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hbytes = 0
        self._tbytes = 0
        self._length: int | None = None
        self._te: bytes | None = None
        self._host_count = 0
        self._expect: bytes | None = None
        self._pbody: StreamingBody | None = None
        self._waste = 0
        self._reject: _Reject | None = None
        self._no_more = False
        self._upgrade_req = False
        # requests waiting for their turn, and the one being handled
        self._queue: deque[Request | _QueuedError] = deque()
        self._cur: Request | None = None
        self._cur_body: StreamingBody | None = None
        self._cur_upgrade = False
        self._task: asyncio.Task[None] | None = None
        self._response_started = False
        self._streaming = False
        self._keep = True
        self._close_after = False
        # after an upgrade request
        self._upbuf: list[bytes] = []
        self._upbuf_size = 0
        self._raw: SocketRawConnection | None = None
        self._linger_left = 0

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
            self.ip = self._client[0]
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self._sockname = (str(local[0]), int(local[1]))
        if self._tls:
            self._peer_id = peer_spiffe_id(transport.get_extra_info("ssl_object"))
        if not self._srv._admit(self):
            self._refuse()
            return
        # a new connection must start its first request within the header timeout
        self._set_deadline(_IDLE, min(self._limits.header_timeout, self._limits.keepalive_timeout))
        if self.adopted is not None and self.adopted[0]:
            self.data_received(self.adopted[0])  # what the front read before handing over

    def _refuse(self) -> None:
        """Over the per-client connection limit: answer 503 at once and linger-close."""
        response = problem(
            503,
            "Service Unavailable",
            "too many concurrent connections from this client address",
            headers=Headers([(b"retry-after", b"1")]),
        )
        assert isinstance(response.body, bytes)
        self._mode = _DISCARD
        self._write_error_response(response)
        self._linger()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._srv._forget(self)
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        self._deadline = None
        gone = ClientDisconnected("the client closed the connection")
        for body in (self._pbody, self._cur_body):
            if body is not None:
                body.set_exception(gone)
        for item in self._queue:
            if isinstance(item, Request) and isinstance(item.body, StreamingBody):
                item.body.set_exception(gone)
        self._queue.clear()
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)  # drain_writes sees _closed and raises
        if self._raw is not None:
            self._raw.feed_eof()
        if self._streaming and self._task is not None:
            # a streaming response (SSE...) may wait forever for its next chunk: stop it
            self._task.cancel()

    def eof_received(self) -> bool | None:
        self._eof_seen = True
        mode = self._mode
        if mode == _RAW:
            assert self._raw is not None
            self._raw.feed_eof()
            return True
        if mode == _UPGRADING:
            return True
        if self._phase == _LINGER:
            return False
        if self._streaming and self._task is not None:
            # a client that hangs up on a stream (SSE...) is gone, not half-closed
            self._task.cancel()
            return False
        body = self._pbody
        if body is not None:
            self._pbody = None
            body.set_exception(MalformedBody("the client closed before the end of the body"))
        self._in_head = False
        self._mode = _DISCARD
        self._deadline = None
        # keep the write side to answer what was asked (then close)
        return self._cur is not None or bool(self._queue)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain_writes(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        if not self._write_paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._loop.create_future()
            self._drain_waiter = waiter
        await asyncio.shield(waiter)
        if self._closed:
            raise ConnectionResetError("the client closed the connection")

    async def _drain_timed(self) -> None:
        """``drain_writes`` bounded by the body timeout: a client that stops reading a
        response is as stalled as one that stops sending a body."""
        try:
            async with asyncio.timeout(self._limits.body_timeout):
                await self.drain_writes()
        except TimeoutError:
            self._abort()
            raise ConnectionResetError("the client stopped reading the response") from None

    # -- read flow control ----------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._pause_mask and self._transport is not None and not self._closed:
            self._transport.pause_reading()
        self._pause_mask |= reason

    def _resume(self, reason: int) -> None:
        if self._pause_mask & reason:
            self._pause_mask &= ~reason
            if not self._pause_mask and self._transport is not None and not self._closed:
                self._transport.resume_reading()

    def body_pause(self) -> None:
        self._body_pauses += 1
        if self._body_pauses == 1:
            self._pause(_P_BODY)
            if self._phase == _BODY:
                self._deadline = None  # the wait is ours, not the client's

    def body_resume(self) -> None:
        self._body_pauses -= 1
        if self._body_pauses == 0:
            self._resume(_P_BODY)
            if self._pbody is not None and self._mode == _HTTP:
                self._set_deadline(_BODY, self._limits.body_timeout)

    def body_started(self, body: StreamingBody) -> None:
        """The handler reads a body it was asked to confirm: send ``100 Continue``."""
        if body is not self._cur_body or self._response_started or self._closed:
            return
        assert self._transport is not None
        self._transport.write(_CONTINUE)
        if self._pbody is body and self._pause_mask == 0:
            self._set_deadline(_BODY, self._limits.body_timeout)

    def raw_pause(self) -> None:
        self._pause(_P_UPGRADE)

    def raw_resume(self) -> None:
        self._resume(_P_UPGRADE)

    def write_raw(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close_raw(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- timers -----------------------------------------------------------------------------------

    def _set_deadline(self, phase: int, delay: float) -> None:
        """One lazily re-armed timer per connection: moving a deadline later costs nothing."""
        self._phase = phase
        when = self._loop.time() + delay
        self._deadline = when
        timer = self._timer
        if timer is None or self._timer_when > when:
            if timer is not None:
                timer.cancel()
            self._timer_when = when
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return
        if self._loop.time() < deadline - 0.002:
            self._timer_when = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        phase = self._phase
        if phase == _IDLE:
            self._close_idle()
        elif phase == _HEAD:
            self._fail(408, "Request Timeout", "the request head took too long to arrive")
        elif phase == _BODY:
            self._fail(408, "Request Timeout", "the request body stalled")
        elif phase == _LINGER:
            self._abort()

    def _close_idle(self) -> None:
        if self._transport is not None and self._cur is None and not self._queue:
            self._transport.close()

    # -- parsing --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode != _HTTP:
            self._data_other(data)
            return
        body = self._pbody
        received = 0
        if body is not None:
            received = body.received
            if self._pause_mask == 0:
                self._set_deadline(_BODY, self._limits.body_timeout)
        seq = self._seq
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._start_upgrade(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
            return
        if self._in_head and in_head and seq == self._seq:
            # httptools buffers a header line until its end: bound it before it completes
            self._head_fed += len(data)
            if self._head_fed > self._head_cap:
                self._fail(431, "Request Header Fields Too Large", "the request head is too large")
        elif body is not None and body is self._pbody:
            # bytes that carried no body data: chunk framing, extensions, trailers
            if body.received == received:
                self._waste += len(data)
                if self._waste > self._head_cap:
                    self._fail(400, "Bad Request", "too much chunk framing without data")
            else:
                self._waste = 0

    def _data_other(self, data: bytes) -> None:
        mode = self._mode
        if mode == _RAW:
            assert self._raw is not None
            self._raw.feed(data)
        elif mode == _UPGRADING:
            self._upbuf.append(data)
            self._upbuf_size += len(data)
            if self._upbuf_size > HIGH_WATER:
                self._pause(_P_UPGRADE)
        elif self._phase == _LINGER:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._abort()

    def on_message_begin(self) -> None:
        if self._cur is not None and len(self._queue) >= MAX_PIPELINE:
            self._reject = _Reject(0, "", "pipeline overflow")
            raise self._reject
        self._seq += 1
        self._in_head = True
        self._head_fed = 0
        self._url = b""
        self._headers = []
        self._hbytes = 0
        self._tbytes = 0
        self._length = None
        self._te = None
        self._host_count = 0
        self._expect = None
        self._set_deadline(_HEAD, self._limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url
        if len(url) > self._max_url:
            self._reject = _Reject(414, "URI Too Long", f"the URL exceeds {self._max_url} bytes")
            raise self._reject
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a chunked trailer: bounded like the head, then dropped
            self._tbytes += len(name) + len(value) + 4
            if self._tbytes > self._max_hbytes:
                self._reject = _Reject(
                    431, "Request Header Fields Too Large", "the trailer section is too large"
                )
                raise self._reject
            return
        name = name.lower()
        size = self._hbytes + len(name) + len(value) + 4
        headers = self._headers
        if size > self._max_hbytes or len(headers) >= self._max_hcount:
            self._reject = _Reject(
                431,
                "Request Header Fields Too Large",
                f"at most {self._max_hcount} header fields and {self._max_hbytes} bytes",
            )
            raise self._reject
        self._hbytes = size
        if name in _SPECIAL_REQUEST_HEADERS:
            self._special_header(name, value)
        headers.append((name, value))

    def _special_header(self, name: bytes, value: bytes) -> None:
        """Framing headers are checked here because smuggling lives in their ambiguities."""
        if name == b"content-length":
            if self._length is not None:
                raise self._bad("duplicate Content-Length")
            digits = value.strip(b" \t")
            if not digits.isdigit() or len(digits) > 18:
                raise self._bad("invalid Content-Length")
            self._length = int(digits)
        elif name == b"transfer-encoding":
            if self._te is not None:
                raise self._bad("duplicate Transfer-Encoding")
            coding = value.strip(b" \t").lower()
            if coding != b"chunked":
                self._reject = _Reject(
                    501, "Not Implemented", "the only transfer coding accepted is chunked"
                )
                raise self._reject
            self._te = coding
        elif name == b"host":
            self._host_count += 1
            if self._host_count > 1:
                raise self._bad("more than one Host header")
        else:  # expect
            self._expect = value

    def _bad(self, detail: str) -> _Reject:
        self._reject = _Reject(400, "Bad Request", detail)
        return self._reject

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._reject = _Reject(
                505, "HTTP Version Not Supported", "this server speaks HTTP/1.0 and HTTP/1.1"
            )
            raise self._reject
        url = self._url
        method_bytes = parser.get_method()
        if len(method_bytes) + len(url) + self._hbytes + 14 > self._max_hbytes:
            self._reject = _Reject(
                431,
                "Request Header Fields Too Large",
                f"the request head exceeds {self._max_hbytes} bytes",
            )
            raise self._reject
        if self._host_count == 0 and version == "1.1":
            raise self._bad("HTTP/1.1 requests need a Host header")
        te = self._te
        length = self._length
        if te is not None and (length is not None or version == "1.0"):
            raise self._bad("Transfer-Encoding with Content-Length or in HTTP/1.0")
        upgrade = parser.should_upgrade()
        if upgrade and (te is not None or length):
            raise self._bad("an upgrade request must not carry a body")
        keep_alive = parser.should_keep_alive()
        if te is not None:
            body = StreamingBody(None, self._max_body, self)
        elif length:
            body = StreamingBody(length, self._max_body, self)
        else:
            body = StreamingBody(0, self._max_body, self, done=True)
        expect = self._expect
        if expect is not None:
            if expect.strip(b" \t").lower() != b"100-continue":
                self._reject = _Reject(
                    417, "Expectation Failed", "the only expectation supported is 100-continue"
                )
                raise self._reject
            if version == "1.1" and not body.done:
                body.expect_continue = True
        method = _METHODS.get(method_bytes)
        if method is None:
            method = method_bytes.decode("ascii")
        path, query = _split_target(url)
        request = Request(
            method,
            url,
            path.decode("latin-1") or "/",
            query,
            Headers(self._headers),
            http_version=version,
            body=body,
            client=self._client,
            server=self._sockname,
            scheme=self._scheme,
            keep_alive=keep_alive,
            received_at=time.perf_counter(),
        )
        if self._tls:
            request.state["peer_id"] = self._peer_id
        if not keep_alive:
            self._no_more = True
        self._upgrade_req = upgrade
        if body.done:
            self._phase = _NONE
            self._deadline = None
        else:
            self._pbody = body
            self._waste = 0
            if body.expect_continue:
                self._phase = _NONE  # the client waits for our 100 Continue
                self._deadline = None
            else:
                self._set_deadline(_BODY, self._limits.body_timeout)
        if self._cur is None and not self._queue:
            self._dispatch(request, upgrade)
        else:
            self._queue.append(request)
            self._pause(_P_PIPELINE)

    def on_body(self, data: bytes) -> None:
        body = self._pbody
        if body is not None:
            body.feed(data)

    def on_message_complete(self) -> None:
        body = self._pbody
        if body is not None:
            self._pbody = None
            body.feed_eof()
        self._phase = _NONE
        self._deadline = None

    def _parse_error(self, exc: Exception) -> None:
        reject = self._reject
        self._reject = None
        if reject is not None and reject.status == 0:  # pipeline overflow
            self._stop_reading()
            return
        if self._no_more and reject is None and self._pbody is None and not self._in_head:
            # bytes after a "Connection: close" request: ignored, never parsed
            self._stop_reading()
            return
        if reject is not None:
            self._fail(reject.status, reject.title, reject.detail)
        elif isinstance(exc, httptools.HttpParserInvalidURLError):
            self._fail(400, "Bad Request", "invalid request target")
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._fail(400, "Bad Request", "invalid request method")
        else:
            if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__ is not None:
                log.error("HTTP parser callback failed", exc_info=exc.__context__)
            self._fail(400, "Bad Request", str(exc) or "malformed request")

    def _stop_reading(self) -> None:
        """Parse nothing more; close once the requests already queued are answered."""
        self._mode = _DISCARD
        self._in_head = False
        self._pause(_P_DISCARD)
        if self._cur is None and not self._queue and self._transport is not None:
            self._transport.close()

    def _fail(self, status: int, title: str, detail: str) -> None:
        """The request being read is broken: answer ``status`` in its turn, then close."""
        self._stop_reading_quietly()
        body = self._pbody
        if body is not None:
            self._pbody = None
            body.set_exception(BodyTimeout(detail) if status == 408 else MalformedBody(detail))
            if body is self._cur_body:
                self._close_after = True
                return  # the handler sees the error, or answers without the body
            last = self._queue[-1] if self._queue else None
            if isinstance(last, Request) and last.body is body:
                self._queue.pop()
        if self._cur is None and not self._queue:
            self._write_error_response(problem(status, title, detail))
            self._linger()
        else:
            self._queue.append(_QueuedError(status, title, detail))

    def _stop_reading_quietly(self) -> None:
        self._mode = _DISCARD
        self._in_head = False
        self._deadline = None
        self._phase = _NONE
        self._pause(_P_DISCARD)

    def _start_upgrade(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request: what follows is not HTTP."""
        self._mode = _UPGRADING
        self._phase = _NONE
        self._deadline = None
        if rest:
            self._upbuf.append(rest)
            self._upbuf_size += len(rest)
            if self._upbuf_size > HIGH_WATER:
                self._pause(_P_UPGRADE)

    # -- request handling -----------------------------------------------------------------------

    def _dispatch(self, request: Request, upgrade: bool) -> None:
        body = request.body
        assert isinstance(body, StreamingBody)
        self._cur = request
        self._cur_body = body
        self._cur_upgrade = upgrade
        self._response_started = False
        self._keep = False  # until a response is written that keeps the connection
        srv = self._srv
        srv._in_flight += 1
        self._task = self._loop.create_task(self._run(request, srv._handler))

    async def _run(self, request: Request, handler: Handler) -> None:
        try:
            try:
                response: Response | None = await handler(request)
                if not isinstance(response, Response):
                    raise TypeError(f"the handler returned {type(response).__name__}")
            except BodyReadError as exc:
                self._close_after = True
                response = None if exc.status == 0 else problem(exc.status, exc.title, str(exc))
            except BodyTooLarge as exc:
                response = problem(
                    413, "Content Too Large", f"the body must not exceed {exc.limit} bytes"
                )
            except Exception:
                log.exception("handler failed on %s %r", request.method, request.raw_target)
                response = problem(500, "Internal Server Error", "the request handler failed")
            if response is not None and not self._closed:
                body = response.body
                if isinstance(body, bytes) and response.upgrade is None:
                    self._write_fixed(request, response, body)
                else:
                    await self._write_other(request, response)
        except asyncio.CancelledError:
            self._abort()
            raise
        except ConnectionError:
            self._abort()
        except Exception:
            log.exception(
                "writing the response to %s %r failed", request.method, request.raw_target
            )
            self._abort()
        finally:
            self._finish_request()

    def _keep_alive(self, request: Request) -> bool:
        body = self._cur_body
        return (
            request.keep_alive
            and not self._close_after
            and not self._cur_upgrade
            and (self._mode == _HTTP or bool(self._queue))
            and body is not None
            and body.done
            and not self._srv._draining
        )

    def _framing(self, keep: bool, version: str, length: bytes | None, chunked: bool) -> bytes:
        parts = []
        if length is not None:
            parts.append(b"content-length: " + length + b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not keep:
            parts.append(b"connection: close\r\n")
        elif version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _write_fixed(self, request: Request, response: Response, body: bytes) -> None:
        """A bytes body: one write for head and body (two for large bodies)."""
        status = response.status
        keep = self._keep_alive(request)
        try:
            if status < 200 or status > 999:
                raise _BadResponse(f"status {status} is not a final status")
            if status == 204:
                length: bytes | None = None
                body = b""
            elif status == 304 or request.method == "HEAD":
                length = _handler_length(response.headers)
                if length is None and body:
                    length = b"%d" % len(body)
                body = b""
            else:
                length = b"%d" % len(body)
            head = _compose_head(
                status, response.headers, self._framing(keep, request.http_version, length, False)
            )
        except _BadResponse as exc:
            log.error("bad response to %s %r: %s", request.method, request.raw_target, exc)
            self._write_error_response(problem(500, "Internal Server Error", "invalid response"))
            return
        self._keep = keep
        self._response_started = True
        transport = self._transport
        assert transport is not None
        if not body:
            transport.write(head)
        elif len(body) <= _SMALL_BODY:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    def _write_error_response(self, response: Response) -> None:
        """A server-made problem+json answer; the connection closes after it."""
        body = response.body
        assert isinstance(body, bytes)
        head = _compose_head(
            response.status,
            response.headers,
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        )
        self._keep = False
        self._response_started = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(head + body)

    async def _write_other(self, request: Request, response: Response) -> None:
        """Streaming bodies and protocol switches."""
        status = response.status
        if response.upgrade is not None or status == 101:
            if status != 101 or response.upgrade is None or not self._cur_upgrade:
                log.error(
                    "bad response to %s %r: 101 needs an upgrade request and handler",
                    request.method,
                    request.raw_target,
                )
                self._write_error_response(problem(500, "Internal Server Error", "bad upgrade"))
                return
            await self._switch(request, response)
            return
        body = response.body
        assert not isinstance(body, bytes)
        keep = self._keep_alive(request)
        try:
            if status < 200 or status > 999:
                raise _BadResponse(f"status {status} is not a final status")
            declared = _handler_length(response.headers)
            no_body = status in (204, 304) or request.method == "HEAD"
            chunked = False
            if no_body:
                if status == 204:
                    declared = None
            elif declared is None:
                if request.http_version == "1.1":
                    chunked = True
                else:
                    keep = False  # HTTP/1.0: the end of the body is the end of the connection
            head = _compose_head(
                status,
                response.headers,
                self._framing(keep, request.http_version, declared, chunked),
            )
        except _BadResponse as exc:
            await _close_iterator(body)
            log.error("bad response to %s %r: %s", request.method, request.raw_target, exc)
            self._write_error_response(problem(500, "Internal Server Error", "invalid response"))
            return
        self._keep = keep
        self._response_started = True
        transport = self._transport
        assert transport is not None
        transport.write(head)
        if no_body:
            await _close_iterator(body)
            return
        if self._write_paused:
            await self._drain_timed()
        await self._stream(
            request, body, chunked, None if declared is None else int(declared), transport
        )

    async def _stream(
        self,
        request: Request,
        body: AsyncIterator[bytes],
        chunked: bool,
        declared: int | None,
        transport: asyncio.Transport,
    ) -> None:
        """Each chunk is written as it comes (SSE), waiting whenever the client reads slowly."""
        sent = 0
        self._streaming = True
        try:
            async for chunk in body:
                if not chunk:
                    continue  # an empty chunk would end a chunked body
                if self._closed:
                    break
                size = len(chunk)
                if chunked:
                    transport.write(b"".join((b"%x\r\n" % size, chunk, b"\r\n")))
                elif declared is not None and sent + size > declared:
                    transport.write(chunk[: declared - sent])
                    sent = declared + 1
                    break
                else:
                    transport.write(chunk)
                sent += size
                if self._write_paused:
                    await self._drain_timed()
            else:
                if chunked and not self._closed:
                    transport.write(b"0\r\n\r\n")
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception(
                "response body of %s %r failed mid-stream", request.method, request.raw_target
            )
            self._keep = False  # the client sees a truncated body: no chunk terminator
            return
        finally:
            self._streaming = False
            await _close_iterator(body)
        if declared is not None and sent != declared:
            log.error(
                "response to %s %r: content-length %d but %s bytes produced",
                request.method,
                request.raw_target,
                declared,
                "more" if sent > declared else sent,
            )
            self._keep = False

    async def _switch(self, request: Request, response: Response) -> None:
        """Write the 101, then hand the socket to the upgrade handler until it returns."""
        upgrade = response.upgrade
        assert upgrade is not None
        try:
            head = _compose_head(101, response.headers, b"connection: upgrade\r\n\r\n")
        except _BadResponse as exc:
            log.error("bad 101 response to %s %r: %s", request.method, request.raw_target, exc)
            self._write_error_response(problem(500, "Internal Server Error", "invalid response"))
            return
        transport = self._transport
        assert transport is not None
        self._keep = False
        self._response_started = True
        transport.write(head)
        raw = SocketRawConnection(self, self._upbuf)
        self._upbuf = []
        self._upbuf_size = 0
        self._raw = raw
        self._mode = _RAW
        self._resume(_P_UPGRADE)
        if self._eof_seen or self._closed:
            raw.feed_eof()
        try:
            await upgrade(raw)
        except Exception:
            log.exception("upgrade handler of %s %r failed", request.method, request.raw_target)
        finally:
            transport.close()

    def _finish_request(self) -> None:
        """The response is written: next queued request, keep-alive wait, or close."""
        self._srv._in_flight -= 1
        body = self._cur_body
        self._cur = None
        self._cur_body = None
        self._task = None
        transport = self._transport
        if self._closed or transport is None or self._mode == _RAW:
            return
        if body is not None and body.done:
            body.discard()  # unread body: free it (and any read pause it holds)
        if transport.is_closing():
            return
        if not self._keep:
            if body is not None and body.done and self._mode == _HTTP:
                transport.close()
            else:
                self._linger()
            return
        queue = self._queue
        if queue:
            item = queue.popleft()
            if not queue:
                self._resume(_P_PIPELINE)
            if isinstance(item, _QueuedError):
                self._write_error_response(problem(item.status, item.title, item.detail))
                self._linger()
            else:
                self._dispatch(item, self._upgrade_req and not queue)
            return
        if self._mode == _DISCARD or self._srv._draining:
            transport.close()
        elif not self._in_head and self._pbody is None:
            self._set_deadline(_IDLE, self._limits.keepalive_timeout)

    def _linger(self) -> None:
        """Close after an answer the client may not expect: stop writing, read and drop
        what it is still sending (bounded), then close — so the answer is not lost to a
        reset caused by unread input."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._mode = _DISCARD
        self._in_head = False
        if not transport.can_write_eof() or self._eof_seen:
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self._linger_left = LINGER_BYTES
        self._set_deadline(_LINGER, LINGER_SECONDS)
        self._pause_mask = 0
        transport.resume_reading()

    def _abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()

    # -- called by the server ------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful drain: idle connections close now, busy ones after their response."""
        self._close_after = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._cur is None and not self._queue and not self._in_head and self._phase != _LINGER:
            transport.close()

    def force_close(self) -> None:
        self._abort()
        task = self._task
        if task is not None:
            task.cancel()


async def _close_iterator(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("closing a response body iterator failed")


class HttpServer:
    """Listens, admits connections (``max_connections_per_client``), and drains gracefully.

    Over the per-client limit a connection is answered ``503`` problem+json at once (with
    ``retry-after: 1``) and closed: the client learns why instead of seeing a reset."""

    def __init__(
        self,
        handler: Handler,
        limits: LimitsConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        scheme: str = "http",
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self.limits = limits
        self.host = host
        self._port = port
        self.reuse_port = reuse_port
        self.sock = sock
        self.scheme = "https" if ssl is not None and scheme == "http" else scheme
        self.ssl = ssl
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._per_ip: dict[str, int] = {}
        self._in_flight = 0
        self._draining = False
        self._all_closed: asyncio.Event | None = None
        self._listener: socket.socket | None = None
        self._release: Callable[[str], None] | None = None
        self._adopting: set[asyncio.Task[None]] = set()

    def listen(self) -> socket.socket:
        """Bind and listen without serving: for a front (the compiled fast path) that
        accepts on this socket and hands connections back through :meth:`adopt`."""
        infos = socket.getaddrinfo(self.host, self._port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = self.sock or socket.socket(family, socket.SOCK_STREAM)
        if self.sock is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
        self._listener = sock
        self._port = int(sock.getsockname()[1])
        return sock

    def close_listener(self) -> None:
        """Close the socket :meth:`listen` made (the front holds its own copy until it
        stops accepting; once both are closed new clients are refused at once)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def adopt(
        self, fd: int, ip: str, data: bytes, *, refused: bool, release: Callable[[str], None]
    ) -> None:
        """Serve a connection the front accepted (``data``: what it read and did not answer).
        ``refused``: over the per-client limit, answered 503; otherwise ``release(ip)`` is
        called when it closes, the front counting it until then."""
        self._release = release
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=fd)
        conn = _Connection(self, loop)
        conn.adopted = (data, refused, ip)
        task = loop.create_task(self._adopt(loop, sock, conn, ip))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, conn: _Connection, ip: str
    ) -> None:
        try:
            await loop.connect_accepted_socket(lambda: conn, sock)
        except OSError as exc:  # the client went away in between
            log.debug("adopting a connection failed: %s", exc)
            sock.close()
            if conn.adopted is not None and not conn.adopted[1] and not conn.admitted:
                assert self._release is not None
                self._release(ip)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            return _Connection(self, loop)

        kwargs: dict[str, Any] = {"ssl": self.ssl, "backlog": 2048}
        if self.sock is not None:
            server = await loop.create_server(factory, sock=self.sock, **kwargs)
        else:
            server = await loop.create_server(
                factory, self.host, self._port, reuse_port=self.reuse_port or None, **kwargs
            )
        self._server = server
        sockets = server.sockets
        if sockets:
            self._port = int(sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        return self._port

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def set_handler(self, handler: Handler) -> None:
        """New requests use ``handler``; each in-flight one keeps the handler it started with."""
        self._handler = handler

    def _admit(self, conn: _Connection) -> bool:
        self._conns.add(conn)
        if conn.adopted is not None:  # the front counted it against the per-client limit
            refused = conn.adopted[1]
            conn.admitted = not refused
            return not refused
        if self._draining:
            return False
        count = self._per_ip.get(conn.ip, 0)
        if count >= self.limits.max_connections_per_client:
            return False
        self._per_ip[conn.ip] = count + 1
        conn.admitted = True
        return True

    def _forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if conn.adopted is not None:
            if conn.admitted and self._release is not None:
                conn.admitted = False
                self._release(conn.adopted[2])  # not the peername: it may be gone by now
        elif conn.admitted:
            conn.admitted = False
            count = self._per_ip.get(conn.ip, 0) - 1
            if count > 0:
                self._per_ip[conn.ip] = count
            else:
                self._per_ip.pop(conn.ip, None)
        if not self._conns and self._all_closed is not None:
            self._all_closed.set()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (the API asks for it)
        """Stop accepting, close idle connections, let in-flight requests finish (their
        connections close after the response), force-close whatever is left at ``timeout``."""
        self._draining = True
        if self._adopting:  # connections the front handed over just before: serve and drain
            await asyncio.wait(list(self._adopting), timeout=min(timeout, 1.0))
        server = self._server
        if server is not None:
            server.close()
        self._all_closed = asyncio.Event()
        for conn in list(self._conns):
            conn.shutdown()
        if self._conns:
            try:
                async with asyncio.timeout(timeout):
                    await self._all_closed.wait()
            except TimeoutError:
                pass
        leftovers = list(self._conns)
        for conn in leftovers:
            conn.force_close()
        if leftovers:
            try:
                async with asyncio.timeout(1.0):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning("%d connection(s) did not close after drain", len(self._conns))
        if server is not None:
            try:
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
            except TimeoutError:
                pass
        self.close_listener()
