"""Differential test of the gateway's two fronts: ``gateway.fast_path`` off (the Python
server) and on (the compiled front, which hands what it does not understand to Python).

The contract is that neither a client nor an upstream can tell the two modes apart, except
for the value of ``x-sampan-proxy-latency`` and the random ids inside ``traceparent``. So
every case sends the same raw bytes to both modes, behind one recording upstream, and
compares the raw answers (normalising only those two values), whether and how the
connection ended, and the exact request heads and bodies the upstream received (a body the
client sent chunked is compared decoded: its chunk boundaries upstream follow the client's TCP
segments). Where the right answer is obvious the case also asserts it, so that two equally
broken modes fail too.

Both gateways and the upstream run on one uvloop loop in a background thread for the whole
module; the tests are synchronous and submit coroutines to it, which keeps hypothesis simple
and the module fast. Until ``GatewayConfig`` has a ``fast_path`` field (or while it has no
effect) both modes are the Python server and every case passes trivially.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Awaitable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampan.config import SampanConfig
from sampan.gateway.config import GatewayConfig
from sampan.gateway.service import GatewayService
from sampan.observe.metrics import Metrics

T = TypeVar("T")

MODES: Final = ("python", "fast")
HOST: Final = "127.0.0.1"
HEADER_TIMEOUT: Final = 0.5
BODY_TIMEOUT: Final = 1.0
SMALL_LIMIT: Final = 16
CLIENT_TRACE: Final = b"4bf92f3577b34da6a3ce929d0e0e4736"
WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_FRAME: Final = b"\x81\x04ping"
BIG_BODY: Final = bytes(range(256)) * 4096  # 1 MiB, every byte value
UPSTREAM_IDLE: Final = 120.0  # longer than the module: the pools' idle connections stay up


# -- the recording upstream -------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One complete request as the upstream received it."""

    head: bytes  # request line and header lines, exactly as sent, ending in CRLFCRLF
    raw_body: bytes  # the body as framed on the wire
    body: bytes  # the body with chunked framing removed
    chunked: bool

    @property
    def target(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0].split(b" ")[1]

    def header(self, name: bytes) -> bytes | None:
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: bytes) -> list[bytes]:
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            key, colon, value = line.partition(b":")
            if colon and key.strip().lower() == name:
                out.append(value.strip())
        return out


class Upstream:
    """An HTTP/1.1 server on asyncio streams that records every request it receives and
    answers per the request's ``x-behave`` header (``ok`` when absent)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.busy = 0  # requests whose head arrived but whose body did not yet
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def settle(self) -> None:
        """Give requests still on their way up at most 0.5 s to arrive whole."""
        for _ in range(50):
            if not self.busy:
                return
            await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            for _ in range(10_000):  # bounded: every round reads one request or ends
                seen = await self._read_request(reader)
                if seen is None or not await self._answer(seen, reader, writer):
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Seen | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UPSTREAM_IDLE)
        except asyncio.IncompleteReadError:
            return None
        self.busy += 1
        try:
            fields = _fields(head)
            length = fields.get(b"content-length")
            chunked = b"chunked" in fields.get(b"transfer-encoding", b"").lower()
            raw = bytearray()
            body = bytearray()
            if chunked:
                for _ in range(100_000):  # bounded by the chunk count
                    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
                    raw += size_line
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        trailer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
                        raw += trailer
                        for _ in range(100):
                            if trailer == b"\r\n":
                                break
                            trailer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
                            raw += trailer
                        break
                    data = await asyncio.wait_for(reader.readexactly(size + 2), 5)
                    raw += data
                    body += data[:-2]
            elif length is not None:
                data = await asyncio.wait_for(reader.readexactly(int(length)), 5)
                raw += data
                body += data
        finally:
            self.busy -= 1
        seen = Seen(head, bytes(raw), bytes(body), chunked)
        self.seen.append(seen)
        return seen

    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Write the scripted answer; False when the connection is to be closed."""
        behave = (seen.header(b"x-behave") or b"ok").decode("latin-1")
        method = seen.head.split(b" ", 1)[0]
        keep = True
        if behave == "echo":
            out = _response(200, [(b"content-type", b"application/octet-stream")], seen.body)
        elif behave == "chunked":
            out = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
                b"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        elif behave == "chunked-slow":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            for piece in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
                await writer.drain()
                await asyncio.sleep(0.03)
                writer.write(piece)
            out = b""
        elif behave == "close-delimited":
            out = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"
            keep = False
        elif behave == "204":
            out = b"HTTP/1.1 204 No Content\r\nx-upstream: yes\r\n\r\n"
        elif behave == "304":
            out = b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\nx-upstream: yes\r\n\r\n'
        elif behave == "big":
            out = _response(200, [(b"content-type", b"application/octet-stream")], BIG_BODY)
        elif behave == "conn-close":
            out = _response(200, [(b"connection", b"close")], b"bye")
            keep = False
        elif behave == "via":
            out = _response(200, [(b"via", b"1.0 other")], b"via")
        elif behave == "hop":
            out = _response(
                200,
                [
                    (b"connection", b"keep-alive"),
                    (b"keep-alive", b"timeout=5, max=100"),
                    (b"proxy-authenticate", b'Basic realm="up"'),
                    (b"proxy-connection", b"keep-alive"),
                    (b"x-end-to-end", b"kept"),
                ],
                b"hop",
            )
        elif behave == "named":
            out = _response(
                200,
                [
                    (b"connection", b"x-secret, X-Other"),
                    (b"x-secret", b"1"),
                    (b"x-other", b"2"),
                    (b"x-public", b"3"),
                ],
                b"named",
            )
        elif behave == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), 5)
            return False
        elif behave == "cut":
            out = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100
            keep = False
        elif behave == "500":
            out = _response(500, [(b"content-type", b"text/plain")], b"upstream broke")
        elif behave == "reason":
            out = b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 2\r\n\r\nok"
        elif behave == "unknown-status":
            out = b"HTTP/1.1 299 Whatever\r\ncontent-length: 0\r\n\r\n"
        elif behave == "cookies":
            out = _response(
                200,
                [(b"set-cookie", b"a=1; Path=/"), (b"x-text", b"caf\xe9"), (b"set-cookie", b"b=2")],
                b"cookies",
            )
        elif behave == "garbage":
            out = b"NOT HTTP AT ALL\r\n\r\n"
            keep = False
        elif behave == "http10":
            out = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold style"
            keep = False
        elif behave == "early-hints":
            out = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n" + _response(
                200, [], b"hinted"
            )
        elif behave == "ws":
            key = seen.header(b"sec-websocket-key") or b""
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: upgrade\r\nsec-websocket-accept: " + accept + b"\r\n\r\n"
            )
            await writer.drain()
            data = await asyncio.wait_for(reader.readexactly(len(WS_FRAME)), 2)
            out = data
            keep = False
        else:  # ok: says what it got; HEAD gets the GET representation's length
            body = b"ok " + method + b" " + seen.target + b" %d" % len(seen.body)
            out = _response(200, [(b"content-type", b"text/plain"), (b"x-upstream", b"yes")], body)
            if method == b"HEAD":
                out = out[: out.index(b"\r\n\r\n") + 4]
        writer.write(out)
        await writer.drain()
        return keep


def _response(status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    reason = {200: b"OK", 500: b"Internal Server Error"}.get(status, b"")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _fields(head: bytes) -> dict[bytes, bytes]:
    """Lower-cased header names -> the first value (the upstream trusts its gateway)."""
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            out.setdefault(name.strip().lower(), value.strip())
    return out


# -- the client side: scripted raw exchanges and a framing-aware reader --------------------------


@dataclass(frozen=True)
class Send:
    """Write these bytes in one call."""

    data: bytes


@dataclass(frozen=True)
class Pause:
    """Sleep between two steps (bytes the gateway sends meanwhile are kept)."""

    seconds: float


@dataclass(frozen=True)
class WaitFor:
    """Read until ``marker`` has arrived (or the connection ends, or 2 s pass)."""

    marker: bytes


@dataclass(frozen=True)
class HalfClose:
    """Shut the client's write side (FIN); reading goes on."""


Step = Send | Pause | WaitFor | HalfClose


@dataclass
class Resp:
    """One response (interim ones included) as the client read it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def names(self) -> set[bytes]:
        return {key.lower() for key, _ in self.headers}


def parse_stream(data: bytes, methods: Sequence[str], *, eof: bool) -> tuple[list[Resp], bool]:
    """Split a response byte stream into responses, given the methods of the requests sent
    (HEAD answers carry no body). Returns the responses and whether all ``methods`` were
    answered completely (a 101 counts once the tunnel has ended)."""
    out: list[Resp] = []
    pos = 0
    finals = 0
    for _ in range(len(methods) + 100):  # bounded: each round consumes one response head
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        lines = data[pos:end].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            break
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
        pos = end + 4
        resp = Resp(status, headers, b"", True)
        out.append(resp)
        if 100 <= status < 200 and status != 101:
            continue
        method = methods[finals] if finals < len(methods) else "GET"
        finals += 1
        te = (resp.header(b"transfer-encoding") or b"").lower()
        length = resp.header(b"content-length")
        if status == 101:
            resp.body, resp.complete = data[pos:], eof
            return out, eof
        if method == "HEAD" or status in (204, 304):
            continue
        if b"chunked" in te:
            body, pos, resp.complete = _dechunk(data, pos)
            resp.body = body
            if not resp.complete:
                break
        elif length is not None and length.isdigit():
            n = int(length)
            resp.body = data[pos : pos + n]
            resp.complete = len(resp.body) == n
            pos += len(resp.body)
            if not resp.complete:
                break
        else:
            resp.body, resp.complete = data[pos:], eof
            break
    done = finals >= len(methods) and all(r.complete for r in out)
    return out, done


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int, bool]:
    body = bytearray()
    for _ in range(1_000_000):  # bounded by the data
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(body), pos, False
        try:
            size = int(data[pos:line_end].split(b";")[0].strip(), 16)
        except ValueError:
            return bytes(body), pos, False
        pos = line_end + 2
        if size == 0:
            trailers_end = pos if data[pos : pos + 2] == b"\r\n" else data.find(b"\r\n\r\n", pos)
            if trailers_end < 0:
                return bytes(body), pos, False
            return bytes(body), trailers_end + (2 if trailers_end == pos else 4), True
        if len(data) < pos + size + 2:
            body += data[pos:]
            return bytes(body), len(data), False
        body += data[pos : pos + size]
        pos += size + 2
    return bytes(body), pos, False


@dataclass
class Outcome:
    """What one mode did with one script."""

    mode: str
    raw: bytes  # every byte the client received
    closed: bool  # the gateway ended the connection (FIN or reset)
    done: bool  # every request was answered with a complete response
    seen: list[Seen] = field(default_factory=list)  # what reached the upstream
    methods: Sequence[str] = ()
    half_closed: bool = False  # the script shut the client's write side

    def responses(self) -> list[Resp]:
        return parse_stream(self.raw, self.methods, eof=self.closed)[0]

    def finals(self) -> list[Resp]:
        return [r for r in self.responses() if r.status >= 200 or r.status == 101]

    def one(self) -> Resp:
        finals = self.finals()
        assert len(finals) == 1, self.raw[:2000]
        return finals[0]


async def _read_some(reader: asyncio.StreamReader, buf: bytearray, wait: float) -> str:
    """Read once for at most ``wait`` seconds: ``data``, ``timeout`` or ``closed``."""
    try:
        data = await asyncio.wait_for(reader.read(65536), max(wait, 0.001))
    except TimeoutError:
        return "timeout"
    except ConnectionError:
        return "closed"
    if not data:
        return "closed"
    buf += data
    return "data"


async def exchange(
    port: int, steps: Sequence[Step], methods: Sequence[str], deadline: float
) -> tuple[bytes, bool, bool]:
    """Run ``steps`` on a fresh connection, then read until every request in ``methods`` is
    answered (and then a little more, to see whether the connection stays open), the
    connection ends, or ``deadline`` seconds pass. Returns (bytes, closed, done)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
    buf = bytearray()
    closed = False
    try:
        for step in steps:
            if isinstance(step, Send):
                writer.write(step.data)
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(writer.drain(), 5)
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, HalfClose):
                with contextlib.suppress(OSError):
                    writer.write_eof()
            else:
                wait_end = min(end, loop.time() + 2)
                while step.marker not in buf and not closed and loop.time() < wait_end:
                    closed = await _read_some(reader, buf, wait_end - loop.time()) == "closed"
        done = False
        while not closed:
            # Without expected methods, only the end of the connection ends the exchange.
            done = bool(methods) and parse_stream(bytes(buf), methods, eof=False)[1]
            if done or loop.time() >= end:
                break
            closed = await _read_some(reader, buf, end - loop.time()) == "closed"
        if closed:
            done = parse_stream(bytes(buf), methods, eof=True)[1]
        elif done:
            finals = [r for r in parse_stream(bytes(buf), methods, eof=False)[0] if r.status >= 200]
            closing = bool(finals) and (finals[-1].header(b"connection") or b"").lower() == b"close"
            # A promised close must come soon; otherwise look briefly for a close or stray bytes.
            probe_end = min(end, loop.time() + (2.0 if closing else 0.05))
            while not closed and loop.time() < probe_end:
                closed = await _read_some(reader, buf, probe_end - loop.time()) == "closed"
        return bytes(buf), closed, done
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)


# -- normalisation and comparison ---------------------------------------------------------------

_LATENCY: Final = re.compile(rb"(?im)^(x-sampan-proxy-latency:[ \t]*)[0-9]+")
# An id request-id generated (32 lowercase hex digits); the ids clients send here differ.
_REQUEST_ID: Final = re.compile(rb"(?im)^(x-request-id:[ \t]*)[0-9a-f]{32}\r$")
_TRACEPARENT: Final = re.compile(
    rb"(?im)^(traceparent:[ \t]*00-)([0-9a-f]{32})-([0-9a-f]{16})(-[0-9a-f]{2})"
)


def _trace(m: re.Match[bytes]) -> bytes:
    trace = m.group(2) if m.group(2) == CLIENT_TRACE else b"<trace>"
    return m.group(1) + trace + b"-<span>" + m.group(4)


def normalise(data: bytes) -> bytes:
    """The only differences the contract allows: the latency value and the random ids of
    traceparent (a trace id the client sent must survive, so it is kept)."""
    data = _REQUEST_ID.sub(rb"\1<id>\r", _LATENCY.sub(rb"\1<n>", data))
    return _TRACEPARENT.sub(_trace, data)


def _first_difference(a: bytes, b: bytes) -> str:
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    lo = max(0, at - 120)
    return (
        f"first difference at byte {at} (lengths {len(a)} and {len(b)}):\n"
        f"  python: {a[lo : at + 120]!r}\n  fast:   {b[lo : at + 120]!r}"
    )


def assert_same(outcomes: Sequence[Outcome]) -> None:
    """Client bytes, connection fate and upstream requests are the same in every mode."""
    base = outcomes[0]
    for other in outcomes[1:]:
        a, b = normalise(base.raw), normalise(other.raw)
        if base.half_closed and other.half_closed:
            # After the client's FIN, whether an answer says "connection: close" depends on
            # whether the server read the FIN before writing it (Python's own server varies
            # with timing); the connection closes after it either way, which is compared.
            a, b = (
                a.replace(b"connection: close\r\n", b""),
                b.replace(b"connection: close\r\n", b""),
            )
        assert a == b, "client bytes differ: " + _first_difference(a, b)
        assert (base.closed, base.done) == (other.closed, other.done), (
            f"connection fate differs: python closed={base.closed} done={base.done}, "
            f"fast closed={other.closed} done={other.done}"
        )
        assert len(base.seen) == len(other.seen), (
            f"the upstream got {len(base.seen)} request(s) from python, {len(other.seen)} from "
            f"fast:\n{[s.head for s in base.seen]}\n{[s.head for s in other.seen]}"
        )
        for x, y in zip(base.seen, other.seen, strict=True):
            hx, hy = normalise(x.head), normalise(y.head)
            assert hx == hy, "upstream request heads differ: " + _first_difference(hx, hy)
            assert x.body == y.body, "upstream request bodies differ"
            # Chunk boundaries of a body streamed upstream follow the client's TCP segments;
            # with Content-Length the wire bytes must match exactly.
            if not x.chunked:
                assert x.raw_body == y.raw_body


# -- the rig: one loop thread, one upstream, two gateways ----------------------------------------


def _dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


API_KEY: Final = "pos-01-secret-key"


def build_config(upstream_port: int, dead_port: int, fast_path: bool) -> SampanConfig:
    """One config for both modes; only ``gateway.fast_path`` differs (when it exists)."""
    up = f"http://{HOST}:{upstream_port}"

    def service(**extra: Any) -> dict[str, Any]:
        return {"service": {"endpoints": [up], **extra}}

    gateway: dict[str, Any] = {
        "listen": {"host": HOST, "port": 0},
        "limits": {"header_timeout": HEADER_TIMEOUT, "body_timeout": BODY_TIMEOUT},
    }
    if "fast_path" in GatewayConfig.model_fields:
        gateway["fast_path"] = fast_path
    routes: list[dict[str, Any]] = [
        {"name": "api", "match": {"path_prefix": "/api"}, "target": service()},
        {"name": "exact", "match": {"path": "/exact"}, "target": service()},
        {
            "name": "stripped",
            "match": {"path_prefix": "/stripped"},
            "strip_prefix": True,
            "target": service(),
        },
        {
            "name": "plugged",
            "match": {"path_prefix": "/plugged"},
            "plugins": [{"name": "request-id"}],
            "target": service(),
        },
        {
            "name": "keyed",
            "match": {"path_prefix": "/keyed"},
            "plugins": [
                {"name": "request-id"},
                {"name": "key-auth"},
                {"name": "rate-limit", "config": {"rate": 1000, "period": "1s"}},
            ],
            "target": service(),
        },
        {
            "name": "limited",
            "match": {"path_prefix": "/limited"},
            "plugins": [{"name": "rate-limit", "config": {"rate": 2, "period": "60s"}}],
            "target": service(),
        },
        {
            "name": "fixed",
            "match": {"path": "/fixed"},
            "target": {
                "respond": {"status": 200, "headers": {"x-fixed": "yes"}, "body": "fixed\n"}
            },
        },
        {
            "name": "refused",
            "match": {"path_prefix": "/refused"},
            "target": {
                "service": {"endpoints": [f"http://{HOST}:{dead_port}"], "connect_timeout": 1}
            },
        },
        {"name": "slow", "match": {"path_prefix": "/slow"}, "target": service(read_timeout=0.3)},
        {"name": "methods", "match": {"path": "/methods", "methods": ["GET"]}, "target": service()},
        {
            "name": "small",
            "match": {"path_prefix": "/small"},
            "max_body_bytes": SMALL_LIMIT,
            "target": service(),
        },
    ]
    consumers = [{"username": "pos-01", "key_auth": [{"key": API_KEY}]}]
    return SampanConfig.model_validate(
        {"gateway": gateway, "routes": routes, "consumers": consumers}
    )


class Rig:
    """Both gateways and the upstream, on a uvloop loop in a background thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.upstream = Upstream()
        self.services: dict[str, GatewayService] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self) -> None:
        self.thread.start()
        self.run(self._open())

    async def _open(self) -> None:
        await self.upstream.start()
        dead = _dead_port()
        for mode in MODES:
            config = build_config(self.upstream.port, dead, fast_path=mode == "fast")
            service = GatewayService(config, Metrics(), bus=None)
            await service.start(port=0)
            self.services[mode] = service

    def close(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    async def _close(self) -> None:
        stops: list[Awaitable[None]] = [s.stop() for s in self.services.values()]
        await asyncio.gather(*stops, return_exceptions=True)
        await self.upstream.stop()

    async def _one(
        self, mode: str, steps: Sequence[Step], methods: Sequence[str], deadline: float
    ) -> Outcome:
        await self.upstream.settle()
        start = len(self.upstream.seen)
        raw, closed, done = await exchange(self.services[mode].port, steps, methods, deadline)
        await self.upstream.settle()
        half_closed = any(isinstance(step, HalfClose) for step in steps)
        return Outcome(
            mode, raw, closed, done, self.upstream.seen[start:], methods, half_closed=half_closed
        )

    def compare(
        self,
        steps: Sequence[Step] | bytes,
        methods: Sequence[str] = ("GET",),
        *,
        deadline: float = 5.0,
    ) -> Outcome:
        """Run the script against each mode in turn, assert parity, return the Python
        server's outcome for direct assertions."""
        script = [Send(steps)] if isinstance(steps, bytes) else list(steps)
        outcomes = [
            self.run(self._one(mode, script, methods, deadline), deadline + 10) for mode in MODES
        ]
        assert_same(outcomes)
        return outcomes[0]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    rig.open()
    try:
        yield rig
    finally:
        rig.close()


def req(
    method: str = "GET",
    target: str = "/api/x",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "1.1",
    host: bool = True,
) -> bytes:
    """A raw request, exactly as written (no header is added but ``host: gw``)."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host:
        lines.append("host: gw")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def problem_status(outcome: Outcome, status: int) -> Resp:
    """The single answer is a ``status`` problem+json and the connection then ends."""
    resp = outcome.one()
    assert resp.status == status, outcome.raw[:1000]
    assert resp.header(b"content-type") == b"application/problem+json"
    return resp


# -- the flag ------------------------------------------------------------------------------------


def test_the_fast_path_flag_exists() -> None:
    """A reminder in the report: without the flag this suite compares Python with Python."""
    if "fast_path" not in GatewayConfig.model_fields:
        pytest.skip("GatewayConfig has no fast_path yet: both modes are the Python server")
    config = build_config(1, 2, fast_path=True)
    assert config.gateway.model_dump()["fast_path"] is True


# -- plain proxying ------------------------------------------------------------------------------


def test_plain_get(rig: Rig) -> None:
    """The bread and butter of the fast path: the exact upstream head is pinned too."""
    out = rig.compare(req("GET", "/api/plain", [("accept", "*/*"), ("X-Mixed-Case", "v")]))
    resp = out.one()
    assert resp.status == 200 and resp.body == b"ok GET /api/plain 0"
    assert resp.header(b"via") == b"1.1 sampan"
    assert resp.header(b"x-sampan-proxy-latency") is not None
    assert not out.closed
    [seen] = out.seen
    assert seen.head.startswith(b"GET /api/plain HTTP/1.1\r\n")
    assert seen.header(b"host") == f"{HOST}:{rig.upstream.port}".encode()
    assert seen.header(b"x-forwarded-for") == HOST.encode()
    assert seen.header(b"x-forwarded-host") == b"gw"
    assert seen.header(b"x-real-ip") == HOST.encode()
    assert seen.header(b"via") == b"1.1 sampan"
    assert seen.header(b"x-mixed-case") == b"v"
    assert seen.header(b"traceparent") is not None


def test_head(rig: Rig) -> None:
    """HEAD keeps the upstream's Content-Length and carries no body."""
    out = rig.compare(req("HEAD", "/api/head"), ["HEAD"])
    resp = out.one()
    assert resp.status == 200 and resp.body == b""
    assert resp.header(b"content-length") == b"%d" % len(b"ok HEAD /api/head 0")
    assert not out.closed


def test_post_small_body(rig: Rig) -> None:
    out = rig.compare(
        req(
            "POST", "/api/post", [("content-type", "text/plain"), ("content-length", "5")], b"hello"
        )
    )
    assert out.one().body == b"ok POST /api/post 5"
    assert out.seen[0].body == b"hello"


def test_put_100_kib(rig: Rig) -> None:
    body = bytes(range(256)) * 400
    out = rig.compare(
        req("PUT", "/api/put", [("content-length", str(len(body))), ("x-behave", "echo")], body)
    )
    assert out.one().body == body
    assert out.seen[0].body == body


def test_post_content_length_zero(rig: Rig) -> None:
    out = rig.compare(req("POST", "/api/empty", [("content-length", "0")]))
    assert out.one().body == b"ok POST /api/empty 0"
    assert out.seen[0].body == b""


def test_query_string_passes_byte_for_byte(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/q?a=1&b=%2F&c&d=%7e&e=%zz"))
    assert out.one().status == 200
    assert out.seen[0].target == b"/api/q?a=1&b=%2F&c&d=%7e&e=%zz"


def test_exact_route(rig: Rig) -> None:
    out = rig.compare(req("GET", "/exact"))
    assert out.seen[0].target == b"/exact"
    assert rig.compare(req("GET", "/exact/more")).one().status == 404


def test_strip_prefix(rig: Rig) -> None:
    out = rig.compare(req("GET", "/stripped/inner/x?k=v"))
    assert out.one().status == 200
    assert out.seen[0].target == b"/inner/x?k=v"
    assert rig.compare(req("GET", "/stripped")).seen[0].target == b"/"


def test_plugin_route(rig: Rig) -> None:
    """request-id keeps a well-formed client id (served by the front in fast mode)."""
    out = rig.compare(req("GET", "/plugged/x", [("x-request-id", "fixed-id-1")]))
    assert out.one().header(b"x-request-id") == b"fixed-id-1"
    assert out.seen[0].header(b"x-request-id") == b"fixed-id-1"


def test_respond_route(rig: Rig) -> None:
    out = rig.compare(req("GET", "/fixed"))
    resp = out.one()
    assert (resp.status, resp.body, resp.header(b"x-fixed")) == (200, b"fixed\n", b"yes")
    assert out.seen == []


def test_traceparent_keeps_the_client_trace(rig: Rig) -> None:
    incoming = b"00-" + CLIENT_TRACE + b"-00f067aa0ba902b7-01"
    out = rig.compare(req("GET", "/api/trace", [("traceparent", incoming.decode())]))
    sent = out.seen[0].header(b"traceparent")
    assert sent is not None and sent.startswith(b"00-" + CLIENT_TRACE + b"-")
    assert sent != incoming


# -- connection management -----------------------------------------------------------------------


def test_three_pipelined_gets(rig: Rig) -> None:
    data = b"".join(req("GET", f"/api/p{i}") for i in range(3))
    out = rig.compare(data, ["GET"] * 3)
    assert [r.body for r in out.finals()] == [b"ok GET /api/p%d 0" % i for i in range(3)]
    assert not out.closed


def test_connection_close(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/close", [("connection", "close")]))
    assert out.one().header(b"connection") == b"close"
    assert out.closed
    assert out.seen[0].header(b"connection") is None


@pytest.mark.parametrize(
    ("extra", "keep"), [((), False), ((("connection", "keep-alive"),), True)], ids=["10", "10-ka"]
)
def test_http_10(rig: Rig, extra: Sequence[tuple[str, str]], keep: bool) -> None:
    out = rig.compare(req("GET", "/api/old", extra, version="1.0"))
    assert out.one().status == 200
    assert out.closed is not keep
    assert out.seen[0].head.split(b"\r\n", 1)[0] == b"GET /api/old HTTP/1.1"


def test_keep_alive_two_requests_100ms_apart(rig: Rig) -> None:
    steps: list[Step] = [Send(req("GET", "/api/ka1")), Pause(0.1), Send(req("GET", "/api/ka2"))]
    out = rig.compare(steps, ["GET", "GET"])
    assert [r.body for r in out.finals()] == [b"ok GET /api/ka1 0", b"ok GET /api/ka2 0"]
    assert not out.closed


def test_request_split_mid_header(rig: Rig) -> None:
    data = req("GET", "/api/split", [("x-split-header", "whole")])
    cut = data.index(b"split-header") + 5
    out = rig.compare([Send(data[:cut]), Pause(0.05), Send(data[cut:])])
    assert out.one().status == 200
    assert out.seen[0].header(b"x-split-header") == b"whole"


def test_slow_client_gets_408(rig: Rig) -> None:
    out = rig.compare([Send(b"GET /api/slow-client HTTP/1.1\r\nhost: g")], deadline=3)
    problem_status(out, 408)
    assert out.closed and out.seen == []


# -- request headers -----------------------------------------------------------------------------


def test_header_named_in_connection_is_stripped(rig: Rig) -> None:
    out = rig.compare(
        req("GET", "/api/conn", [("connection", "x-foo, X-Bar"), ("x-foo", "1"), ("x-bar", "2")])
    )
    seen = out.seen[0]
    assert seen.header(b"x-foo") is None and seen.header(b"x-bar") is None
    assert seen.header(b"connection") is None


def test_hop_by_hop_request_headers_are_stripped(rig: Rig) -> None:
    hop = [
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic dXNlcjpwYXNz"),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x-t"),
    ]
    out = rig.compare(req("GET", "/api/hop", [*hop, ("x-kept", "yes")]))
    seen = out.seen[0]
    for name, _ in hop:
        assert seen.header(name.encode()) is None, name
    assert seen.header(b"x-kept") == b"yes"


def test_client_forwarding_headers_are_replaced(rig: Rig) -> None:
    """The peer is not a trusted proxy: nothing the client claims reaches the upstream."""
    forged = [
        ("x-forwarded-for", "1.2.3.4"),
        ("forwarded", "for=1.2.3.4;proto=https"),
        ("x-real-ip", "1.2.3.4"),
        ("via", "1.0 client-proxy"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ]
    out = rig.compare(req("GET", "/api/fwd", forged))
    seen = out.seen[0]
    assert seen.headers(b"x-forwarded-for") == [HOST.encode()]
    assert seen.headers(b"x-real-ip") == [HOST.encode()]
    assert seen.headers(b"forwarded") == [b"for=127.0.0.1;proto=http;host=gw"]
    assert seen.headers(b"x-forwarded-host") == [b"gw"]
    assert seen.headers(b"x-forwarded-proto") == [b"http"]
    assert seen.headers(b"via") == [b"1.0 client-proxy, 1.1 sampan"]


def test_chunked_request_body(rig: Rig) -> None:
    body = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n"
    out = rig.compare(
        req("POST", "/api/chunked", [("transfer-encoding", "chunked"), ("x-behave", "echo")], body)
    )
    assert out.one().body == b"hello world"
    assert out.seen[0].body == b"hello world"


def test_expect_100_continue(rig: Rig) -> None:
    head = req("POST", "/api/expect", [("expect", "100-continue"), ("content-length", "5")])
    out = rig.compare([Send(head), WaitFor(b"100 Continue\r\n\r\n"), Send(b"hello")])
    assert [r.status for r in out.responses()] == [100, 200]
    assert out.seen[0].body == b"hello"
    assert out.seen[0].header(b"expect") is None


def test_websocket_upgrade(rig: Rig) -> None:
    head = req(
        "GET",
        "/api/ws",
        [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("x-behave", "ws"),
        ],
    )
    out = rig.compare([Send(head), WaitFor(b"\r\n\r\n"), Send(WS_FRAME)])
    resp = out.one()
    assert resp.status == 101
    assert resp.header(b"sec-websocket-accept") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert resp.body == WS_FRAME
    assert out.closed
    assert out.seen[0].header(b"upgrade") == b"websocket"


# -- malformed requests and limits ---------------------------------------------------------------

MALFORMED: Final = {
    "duplicate-content-length": (
        req("POST", "/api/m", [("content-length", "5"), ("content-length", "5")], b"hello"),
        400,
    ),
    "content-length-and-chunked": (
        req(
            "POST",
            "/api/m",
            [("content-length", "5"), ("transfer-encoding", "chunked")],
            b"0\r\n\r\n",
        ),
        400,
    ),
    "nul-in-value": (b"GET /api/m HTTP/1.1\r\nhost: gw\r\nx-a: a\x00b\r\n\r\n", 400),
    "obs-fold": (b"GET /api/m HTTP/1.1\r\nhost: gw\r\nx-a: a\r\n  folded\r\n\r\n", 400),
    "no-colon": (b"GET /api/m HTTP/1.1\r\nhost: gw\r\nx-no-colon\r\n\r\n", 400),
    "bare-lf": (b"GET /api/m HTTP/1.1\nhost: gw\n\n", 400),
    "space-before-colon": (b"GET /api/m HTTP/1.1\r\nhost: gw\r\nx-a : 1\r\n\r\n", 400),
    "no-host": (req("GET", "/api/m", host=False), 400),
    "two-hosts": (req("GET", "/api/m", [("host", "other")]), 400),
    "101-headers": (req("GET", "/api/m", [(f"x-h{i}", "v") for i in range(100)]), 431),
    "9k-header": (req("GET", "/api/m", [("x-big", "a" * 9216)]), 431),
    "9k-url": (req("GET", "/api/" + "u" * 9216), 414),
    "http-2.0": (req("GET", "/api/m", version="2.0"), 505),
    "gzip-coding": (
        req("POST", "/api/m", [("transfer-encoding", "gzip, chunked")], b"0\r\n\r\n"),
        501,
    ),
    "expect-other": (req("GET", "/api/m", [("expect", "teapot")]), 417),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request(rig: Rig, name: str) -> None:
    """Errors the server makes itself: one problem+json, then the connection ends, and
    nothing reaches the upstream (except what a body error leaves behind)."""
    data, status = MALFORMED[name]
    out = rig.compare(data)
    resp = problem_status(out, status)
    assert resp.header(b"connection") == b"close"
    assert out.closed
    assert out.seen == []


BROKEN_BODIES: Final = {
    "bad-chunk-size": (
        [Send(req("POST", "/api/bb", [("transfer-encoding", "chunked")], b"zz\r\nhello\r\n"))],
        400,
    ),
    "stalled-body": ([Send(req("POST", "/api/bb", [("content-length", "10")], b"hello"))], 408),
}


@pytest.mark.parametrize("name", list(BROKEN_BODIES))
def test_broken_request_body(rig: Rig, name: str) -> None:
    """A body that fails while it is being streamed upstream (bad chunk, stall past
    body_timeout) must be the client's error, as the server maps it, and end the
    connection."""
    steps, status = BROKEN_BODIES[name]
    out = rig.compare(steps, deadline=BODY_TIMEOUT + 3)  # parity first: it must hold anyway
    resp = out.one()
    assert out.closed
    assert resp.header(b"content-type") == b"application/problem+json"
    # BUG in the Python gateway (not a parity difference): Gateway.handle's catch-all
    # `except Exception` (gateway/app.py) turns the server's BodyReadError (MalformedBody,
    # BodyTimeout) raised inside the proxy's upstream send into "500 route 'api' failed",
    # logged as an exception and counted as a route error, instead of letting the server
    # answer 400 / 408. Remove this xfail once the gateway re-raises BodyReadError.
    if resp.status == 500:
        pytest.xfail(f"known gateway bug: a broken request body answers 500, not {status}")
    assert resp.status == status


def test_100_headers_is_fine(rig: Rig) -> None:
    """The limit is inclusive: 100 fields (host and 99 more) pass."""
    out = rig.compare(req("GET", "/api/h100", [(f"x-h{i}", "v") for i in range(99)]))
    assert out.one().status == 200


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 431)], ids=["8192", "8193"])
def test_head_size_boundary(rig: Rig, extra: int, status: int) -> None:
    base = req("GET", "/api/size", [("x-pad", "")])
    pad = 8192 - len(base) + extra
    out = rig.compare(req("GET", "/api/size", [("x-pad", "p" * pad)]))
    assert out.one().status == status


def test_body_over_route_limit(rig: Rig) -> None:
    body = b"b" * (SMALL_LIMIT + 1)
    out = rig.compare(req("POST", "/small/x", [("content-length", str(len(body)))], body))
    problem_status(out, 413)
    assert out.seen == []


def test_chunked_body_over_route_limit(rig: Rig) -> None:
    body = b"20\r\n" + b"b" * 32 + b"\r\n0\r\n\r\n"
    out = rig.compare(req("POST", "/small/x", [("transfer-encoding", "chunked")], body))
    assert out.one().status == 413


# -- paths and routing ---------------------------------------------------------------------------

PATHS: Final = {
    "//api/x": (200, b"/api/x"),
    "/api/%2e%2e/x": (404, None),
    "/x%2F..%2Fapi": (400, None),
    "/api/./x": (200, b"/api/x"),
    "/api/a/../b": (200, b"/api/b"),
    "/api/%7Euser": (200, b"/api/~user"),
    "/api/%7euser/%3f": (200, b"/api/~user/%3F"),
    "/api/sp%20ace;p=1": (200, b"/api/sp%20ace;p=1"),
    "/api/..;x/y": (400, None),
    "/API/x": (404, None),
    "/apix": (404, None),
    "/api": (200, b"/api"),
    "/api/": (200, b"/api/"),
    "*": (400, None),
    "http://gw/api/abs?q=1": (200, b"/api/abs?q=1"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_path(rig: Rig, path: str) -> None:
    status, upstream = PATHS[path]
    out = rig.compare(req("GET", path))
    assert out.one().status == status
    if upstream is None:
        assert out.seen == []
    else:
        assert out.seen[0].target == upstream


def test_unknown_path_404(rig: Rig) -> None:
    out = rig.compare(req("GET", "/nowhere"))
    problem_status(out, 404)
    assert not out.closed


@pytest.mark.parametrize("method", ["POST", "DELETE", "HEAD"])
def test_wrong_method_405(rig: Rig, method: str) -> None:
    out = rig.compare(req(method, "/methods", [("content-length", "0")]), [method])
    resp = out.one()
    assert resp.status == 405
    assert resp.header(b"allow") == b"GET"
    assert out.seen == []


# -- upstream behaviours -------------------------------------------------------------------------


def test_upstream_chunked(rig: Rig) -> None:
    assert rig.compare(req("GET", "/api/c", [("x-behave", "chunked")])).one().body == (
        b"hello world"
    )


def test_upstream_chunked_in_pieces(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/c", [("x-behave", "chunked-slow")]))
    assert out.one().body == b"hello world"
    assert not out.closed


def test_upstream_close_delimited(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/cd", [("x-behave", "close-delimited")]))
    assert out.one().body == b"until the end"
    assert out.done


@pytest.mark.parametrize("status", [204, 304])
def test_upstream_no_body_status(rig: Rig, status: int) -> None:
    out = rig.compare(req("GET", "/api/nb", [("x-behave", str(status))]))
    resp = out.one()
    assert resp.status == status
    assert resp.header(b"x-upstream") == b"yes"
    assert not out.closed


def test_upstream_1_mib(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/big", [("x-behave", "big")]))
    assert out.one().body == BIG_BODY


def test_upstream_connection_close_is_not_relayed(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/cc", [("x-behave", "conn-close")]))
    resp = out.one()
    assert resp.body == b"bye" and resp.header(b"connection") is None
    assert not out.closed


def test_upstream_via_is_extended(rig: Rig) -> None:
    out = rig.compare(req("GET", "/api/via", [("x-behave", "via")]))
    assert out.one().header(b"via") == b"1.0 other, 1.1 sampan"


def test_upstream_hop_by_hop_headers_are_dropped(rig: Rig) -> None:
    resp = rig.compare(req("GET", "/api/hop", [("x-behave", "hop")])).one()
    names = resp.names()
    assert not names & {b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"connection"}
    assert resp.header(b"x-end-to-end") == b"kept"


def test_upstream_connection_named_headers_are_dropped(rig: Rig) -> None:
    resp = rig.compare(req("GET", "/api/named", [("x-behave", "named")])).one()
    assert resp.header(b"x-secret") is None and resp.header(b"x-other") is None
    assert resp.header(b"x-public") == b"3"


def test_upstream_refusing_502(rig: Rig) -> None:
    out = rig.compare(req("GET", "/refused/x"))
    resp = problem_status(out, 502)
    assert (
        json.loads(resp.body)["detail"] == "the upstream service of route 'refused' is unavailable"
    )


def test_upstream_too_slow_504(rig: Rig) -> None:
    out = rig.compare(req("GET", "/slow/x", [("x-behave", "hang")]))
    problem_status(out, 504)
    assert len(out.seen) == 1


def test_upstream_closing_mid_body_cuts_the_client(rig: Rig) -> None:
    """A truncated body must never look complete: the client connection is cut."""
    out = rig.compare(req("GET", "/api/cut", [("x-behave", "cut")]), deadline=3)
    resp = out.one()
    assert resp.status == 200
    assert not out.done and not resp.complete
    assert out.closed
    assert len(resp.body) < 1000


@pytest.mark.parametrize(
    ("behave", "status"),
    [
        ("500", 500),
        ("reason", 200),
        ("unknown-status", 299),
        ("cookies", 200),
        ("garbage", 502),
        ("http10", 200),
        ("early-hints", 200),
    ],
)
def test_upstream_odd_answers(rig: Rig, behave: str, status: int) -> None:
    out = rig.compare(req("GET", "/api/odd", [("x-behave", behave)]), deadline=3)
    assert out.finals()[-1].status == status
    if behave == "cookies":
        resp = out.one()
        assert resp.headers[:3] == [
            (b"set-cookie", b"a=1; Path=/"),
            (b"x-text", b"caf\xe9"),
            (b"set-cookie", b"b=2"),
        ]


# -- more request shapes: what a compiled parser is most likely to read differently ------------

SHAPES: Final[dict[str, tuple[bytes, int]]] = {
    "host-with-port": (
        req("GET", "/api/s", [("x-n", "1")]).replace(b"host: gw", b"host: gw:8080"),
        200,
    ),
    "upper-case-names": (
        b"GET /api/s HTTP/1.1\r\nHOST: gw\r\nX-Upper: V\r\nAccept: */*\r\n\r\n",
        200,
    ),
    # Python forwards the trailing whitespace of a value (llhttp keeps it; RFC 9110 5.5
    # says a recipient excludes it): pinned by parity, whichever side moves.
    "value-whitespace": (b"GET /api/s HTTP/1.1\r\nhost: gw\r\nx-ws:  \t padded \t \r\n\r\n", 200),
    "no-space-after-colon": (b"GET /api/s HTTP/1.1\r\nhost:gw\r\nx-a:b\r\n\r\n", 200),
    "empty-value": (req("GET", "/api/s", [("x-empty", "")]), 200),
    "duplicate-fields": (
        req("GET", "/api/s", [("x-dup", "1"), ("x-other", "o"), ("x-dup", "2")]),
        200,
    ),
    "obs-text-value": (b"GET /api/s HTTP/1.1\r\nhost: gw\r\nx-text: caf\xe9\r\n\r\n", 200),
    "fragment": (req("GET", "/api/s#frag"), 200),
    "get-with-body": (req("GET", "/api/s", [("content-length", "5")], b"hello"), 200),
    "delete-with-body": (req("DELETE", "/api/s", [("content-length", "5")], b"hello"), 200),
    "options": (req("OPTIONS", "/api/s"), 200),
    "patch": (req("PATCH", "/api/s", [("content-length", "2")], b"{}"), 200),
    "content-length-leading-zeros": (
        req("POST", "/api/s", [("content-length", "005")], b"hello"),
        200,
    ),
    "content-length-padded": (
        b"POST /api/s HTTP/1.1\r\nhost: gw\r\ncontent-length:  5 \r\n\r\nhello",
        200,
    ),
    "content-length-plus": (req("POST", "/api/s", [("content-length", "+5")], b"hello"), 400),
    "content-length-comma": (req("POST", "/api/s", [("content-length", "5, 5")], b"hello"), 400),
    "chunked-upper": (req("POST", "/api/s", [("Transfer-Encoding", "Chunked")], b"0\r\n\r\n"), 200),
    "chunked-empty": (req("POST", "/api/s", [("transfer-encoding", "chunked")], b"0\r\n\r\n"), 200),
    "te-in-http10": (
        req("POST", "/api/s", [("transfer-encoding", "chunked")], b"0\r\n\r\n", version="1.0"),
        400,
    ),
    "http10-post": (req("POST", "/api/s", [("content-length", "5")], b"hello", version="1.0"), 200),
    "double-space-request-line": (b"GET  /api/s HTTP/1.1\r\nhost: gw\r\n\r\n", 200),
    "lower-case-method": (b"get /api/s HTTP/1.1\r\nhost: gw\r\n\r\n", 400),
    "unknown-method": (req("PURGE", "/api/s"), 200),
    "trace-method": (req("TRACE", "/api/s"), 200),
    "connect-method": (b"CONNECT gw:443 HTTP/1.1\r\nhost: gw:443\r\n\r\n", 400),
    "lower-case-version": (b"GET /api/s http/1.1\r\nhost: gw\r\n\r\n", 400),
    "leading-crlf": (b"\r\n" + req("GET", "/api/s"), 200),
    "connection-keep-alive-close": (
        req("GET", "/api/s", [("connection", "keep-alive, close")]),
        200,
    ),
    "bad-traceparent": (req("GET", "/api/s", [("traceparent", "00-zz-yy-01")]), 200),
    "zero-traceparent": (
        req("GET", "/api/s", [("traceparent", "00-" + "0" * 32 + "-" + "1" * 16 + "-01")]),
        200,
    ),
    "tab-in-value": (b"GET /api/s HTTP/1.1\r\nhost: gw\r\nx-tab: a\tb\r\n\r\n", 200),
    "del-in-value": (b"GET /api/s HTTP/1.1\r\nhost: gw\r\nx-del: a\x7fb\r\n\r\n", 400),
    "cr-in-value": (b"GET /api/s HTTP/1.1\r\nhost: gw\r\nx-cr: a\rb\r\n\r\n", 400),
    "space-in-name": (b"GET /api/s HTTP/1.1\r\nhost: gw\r\nx bad: 1\r\n\r\n", 400),
    "high-byte-in-path": (b"GET /api/caf\xc3\xa9 HTTP/1.1\r\nhost: gw\r\n\r\n", 400),
    "invalid-utf8-path": (b"GET /api/\xff HTTP/1.1\r\nhost: gw\r\n\r\n", 400),
    "encoded-nul-path": (req("GET", "/api/a%00b"), 400),
    "backslash-path": (req("GET", "/api\\x"), 400),
    "x-forwarded-proto-only": (req("GET", "/api/s", [("x-forwarded-proto", "https")]), 200),
    "expect-100-small-limit": (
        req("POST", "/small/x", [("expect", "100-continue"), ("content-length", "100")]),
        413,
    ),
    "expect-uppercase": (
        req("POST", "/api/s", [("expect", "100-Continue"), ("content-length", "0")]),
        200,
    ),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_request_shape(rig: Rig, name: str) -> None:
    """Odd but possible spellings, each pinned to what the Python server answers today
    (lenient where llhttp is: two spaces in the request line, a leading CRLF, ``005``)."""
    data, status = SHAPES[name]
    method = data.split(b" ", 1)[0].decode("latin-1")
    out = rig.compare(data, [method], deadline=3)
    assert out.one().status == status
    if status >= 400:
        assert out.seen == []


def test_pipeline_mixing_fast_and_handed_over_requests(rig: Rig) -> None:
    """One connection whose requests alternate between what the front serves and what it
    hands to Python: order, framing and the upstream view must not change."""
    data = b"".join(
        (
            req("GET", "/api/m1"),
            req("GET", "/plugged/m2", [("x-request-id", "mix-2")]),
            req("POST", "/api/m3", [("content-length", "3")], b"abc"),
            req("GET", "/fixed"),
            req("POST", "/api/m5", [("transfer-encoding", "chunked")], b"2\r\nxy\r\n0\r\n\r\n"),
            req("GET", "/api/m6", [("x-forwarded-for", "9.9.9.9")]),
            req("HEAD", "/api/m7"),
            req("GET", "/api/m8"),
        )
    )
    methods = ["GET", "GET", "POST", "GET", "POST", "GET", "HEAD", "GET"]
    out = rig.compare(data, methods)
    finals = out.finals()
    assert [r.status for r in finals] == [200] * 8
    assert finals[1].header(b"x-request-id") == b"mix-2"
    assert finals[3].body == b"fixed\n"
    assert [s.target for s in out.seen] == [
        b"/api/m1",
        b"/plugged/m2",
        b"/api/m3",
        b"/api/m5",
        b"/api/m6",
        b"/api/m7",
        b"/api/m8",
    ]
    assert not out.closed


def test_keep_alive_mixing_fast_and_handed_over_requests(rig: Rig) -> None:
    steps: list[Step] = [
        Send(req("GET", "/api/k1")),
        Pause(0.05),
        Send(req("GET", "/plugged/k2", [("x-request-id", "ka-2")])),
        Pause(0.05),
        Send(req("GET", "/api/k3")),
        Pause(0.05),
        Send(req("GET", "/api/k4", [("via", "1.0 hop")])),
        Pause(0.05),
        Send(req("GET", "/api/k5")),
    ]
    out = rig.compare(steps, ["GET"] * 5)
    assert [r.status for r in out.finals()] == [200] * 5
    assert out.seen[3].header(b"via") == b"1.0 hop, 1.1 sampan"


def test_pipelined_error_stops_the_connection(rig: Rig) -> None:
    """A broken request after good ones: the good ones are answered, the rest is never
    parsed (no smuggling), the connection ends."""
    data = req("GET", "/api/e1") + b"GET /api/e2 HTTP/1.1\r\nhost: gw\r\nbad header\r\n\r\n"
    data += req("GET", "/api/e3")
    out = rig.compare(data, ["GET", "GET", "GET"])
    assert [r.status for r in out.finals()] == [200, 400]
    assert [s.target for s in out.seen] == [b"/api/e1"]
    assert out.closed


def test_nothing_after_connection_close_is_served(rig: Rig) -> None:
    data = req("GET", "/api/c1", [("connection", "close")]) + req("GET", "/api/c2")
    out = rig.compare(data, ["GET", "GET"])
    assert [r.status for r in out.finals()] == [200]
    assert [s.target for s in out.seen] == [b"/api/c1"]
    assert out.closed


@pytest.mark.parametrize(
    "data",
    [
        req("GET", "/api/hc"),
        req("GET", "/api/hc:colon"),
        req("GET", "/api/hc", [("x-forwarded-for", "1.2.3.4")]),
        req("GET", "/plugged/hc", [("x-request-id", "hc")]),
        req("POST", "/api/hc", [("transfer-encoding", "chunked")], b"1\r\nx\r\n0\r\n\r\n"),
        req("GET", "/api/hc1") + req("GET", "/plugged/hc2", [("x-request-id", "hc")]),
    ],
    ids=["plain", "colon-in-path", "forwarded", "plugin", "chunked", "plain-then-plugin"],
)
def test_half_close_after_complete_requests(rig: Rig, data: bytes) -> None:
    """A client that sends whole requests and then shuts its write side still gets every
    answer, then the close (the fuzz test relies on this too)."""
    out = rig.compare([Send(data), HalfClose()], ["GET"] * data.count(b" HTTP/1.1\r\n"))
    assert [r.status for r in out.finals()] == [200] * data.count(b" HTTP/1.1\r\n")
    assert out.closed and out.done


@pytest.mark.parametrize("where", ["request-line", "header-name", "before-forwarding", "body"])
def test_request_split_elsewhere(rig: Rig, where: str) -> None:
    """The second piece may turn a plain-looking request into one the front hands over."""
    data = req(
        "POST",
        "/api/split2",
        [("x-a", "1"), ("x-forwarded-for", "1.2.3.4"), ("transfer-encoding", "chunked")],
        b"3\r\nabc\r\n0\r\n\r\n",
    )
    marker = {
        "request-line": b"/split2",
        "header-name": b"-a: 1",
        "before-forwarding": b"x-forwarded-for",
        "body": b"bc\r\n0",
    }[where]
    cut = data.index(marker) + 1
    out = rig.compare([Send(data[:cut]), Pause(0.05), Send(data[cut:])], ["POST"])
    assert out.one().status == 200
    assert out.seen[0].body == b"abc"
    assert out.seen[0].headers(b"x-forwarded-for") == [HOST.encode()]


# -- property: mutated requests ------------------------------------------------------------------

FUZZ_BASES: Final = (
    req("GET", "/api/fuzz?x=1", [("x-a", "b"), ("accept", "*/*")]),
    req("POST", "/api/fuzz", [("content-length", "5"), ("x-behave", "echo")], b"hello"),
    req("POST", "/api/fuzz", [("transfer-encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
    req("GET", "/fixed") + req("GET", "/stripped/two"),
    req("GET", "/methods", [("connection", "x-c"), ("x-c", "1")], version="1.0"),
)
SPECIAL_BYTES: Final = b"\r\n\x00 :\t"

mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]),
    st.integers(min_value=0, max_value=10_000),
    st.one_of(
        st.sampled_from([bytes([b]) for b in SPECIAL_BYTES]),
        st.integers(min_value=0x80, max_value=0xFF).map(lambda b: bytes([b])),
        st.binary(min_size=1, max_size=1),
    ),
)


def mutate(data: bytes, mutations: Sequence[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, where, byte in mutations:
        if op == "insert":
            at = where % (len(out) + 1)
            out[at:at] = byte
        elif out:
            at = where % len(out)
            out[at : at + 1] = b"" if op == "delete" else byte
    return bytes(out)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.sampled_from(FUZZ_BASES),
    mutations=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_requests_get_the_same_answer(
    rig: Rig, base: bytes, mutations: list[tuple[str, int, bytes]]
) -> None:
    """Whatever a byte-level mutation makes of a valid request, both modes answer it the
    same way. The client half-closes after sending, so every example ends promptly: the
    server answers the complete requests, then closes."""
    data = mutate(base, mutations)
    out = rig.compare([Send(data), HalfClose()], (), deadline=3)
    for resp in out.finals():
        assert 100 <= resp.status <= 599


# -- plugins the front applies itself: request-id, key-auth, rate-limit (local) ------------------


def test_key_auth_accepts_and_hides_the_key(rig: Rig) -> None:
    """A good key: 200 with the RateLimit headers and a generated request id; the upstream
    never sees the key and gets the id."""
    out = rig.compare(req("GET", "/keyed/a", [("apikey", API_KEY), ("x-other", "1")]))
    answer = out.one()
    assert answer.status == 200
    assert answer.header(b"ratelimit-policy") == b'"default";q=1000;w=1'
    assert (answer.header(b"x-request-id") or b"") != b""
    assert out.seen[0].header(b"apikey") is None
    assert out.seen[0].header(b"x-request-id") == answer.header(b"x-request-id")


@pytest.mark.parametrize(
    "fields",
    [[], [("apikey", "wrong")], [("apikey", "")], [("x-api-key", "x" * 1025)]],
    ids=["missing", "wrong", "empty", "too-long"],
)
def test_key_auth_refuses(rig: Rig, fields: list[tuple[str, str]]) -> None:
    out = rig.compare(req("GET", "/keyed/b", [*fields, ("x-request-id", "rid-1")]))
    assert out.one().status == 401
    assert not out.seen


def test_key_auth_second_name_and_client_request_id(rig: Rig) -> None:
    out = rig.compare(req("GET", "/keyed/c", [("x-api-key", API_KEY), ("x-request-id", "r-9")]))
    assert out.one().status == 200
    assert out.one().header(b"x-request-id") == b"r-9"
    assert out.seen[0].header(b"x-api-key") is None


def test_rate_limit_refuses_the_third(rig: Rig) -> None:
    """Two per minute by IP: the third request, on the same keep-alive connection, is 429
    (the front hands it to Python, which decides on the same buckets)."""
    path = "/limited/" + uuid.uuid4().hex  # the buckets are per IP: one test uses them
    out = rig.compare(req("GET", path) + req("GET", path) + req("GET", path), ["GET", "GET", "GET"])
    statuses = [r.status for r in out.finals()]
    assert statuses == [200, 200, 429]
    assert out.finals()[2].header(b"retry-after") is not None
