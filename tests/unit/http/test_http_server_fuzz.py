"""Property test of the request parser's boundaries: pipelined, mostly valid requests with one
mutation, written in randomly split pieces. Whatever arrives, the server answers each valid
request before the broken one in order, answers the broken one with a problem+json error and
closes; no request after it (a smuggling attempt) ever reaches the handler; the header and
URL limits hold at exactly ``limit`` (accepted) and ``limit + 1`` (refused)."""

from __future__ import annotations

import asyncio
import itertools
import string
from dataclasses import dataclass

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_server_support import Parsed, limits, parse_responses, read_all

from sampan.http.request import Request
from sampan.http.response import Response
from sampan.http.server import HttpServer

MAX_HEADER_BYTES = 2048
MAX_URL_BYTES = 256
ERRORS = {400, 408, 414, 417, 431, 501, 505}
RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "upgrade",
    "keep-alive",
    "x-case",
    "x-seq",
    "x-pad",
}

names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12).filter(
    lambda n: n.lower() not in RESERVED
)
values = st.text(
    string.ascii_letters + string.digits + " !#$%&'()*+,-./:;<=>?@[]^_`{|}~", max_size=30
).map(str.strip)
paths = st.text(string.ascii_letters + string.digits + "-._~/%=&?", max_size=40)


@dataclass
class Spec:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # none | length | chunked
    chunk_sizes: list[int]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=200))
    sizes = draw(st.lists(st.integers(1, 64), max_size=8))
    return Spec(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])),
        path="/" + draw(paths),
        headers=draw(st.lists(st.tuples(names, values), max_size=6)),
        body=body,
        framing=framing,
        chunk_sizes=sizes,
    )


def encode(
    spec: Spec,
    case: int,
    seq: int,
    *,
    last: bool,
    mutation: str | None = None,
    choice: int = 0,
) -> bytes:
    """The request as bytes; ``mutation`` makes it invalid in a known way."""
    target = spec.path
    version = "1.1"
    headers = [("Host", "fuzz"), ("X-Case", str(case)), ("X-Seq", str(seq)), *spec.headers]
    if last:
        headers.append(("Connection", "close"))
    body = spec.body
    framing = spec.framing
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    sep = "\r\n"
    bad_chunk = None
    if mutation == "cl_te":
        headers += [("Content-Length", "3"), ("Transfer-Encoding", "chunked")]
    elif mutation == "dup_cl":
        headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body)))]
    elif mutation == "ctl_in_value":
        bad = ["\x00", "\r", "\n", "\x7f", "\x1b"][choice % 5]
        headers.append(("X-Bad", "a" + bad + "b"))
    elif mutation == "obs_fold":
        headers.append(("X-Fold", "a" + sep + [" ", "\t"][choice % 2] + "b"))
    elif mutation == "space_colon":
        headers.append(("X-Space ", "v"))
    elif mutation == "bare_lf":
        sep = "\n"
    elif mutation == "te_unknown":
        headers = [h for h in headers if h[0] != "Transfer-Encoding"]
        headers.append(("Transfer-Encoding", ["gzip", "chunked, gzip", "identity"][choice % 3]))
    elif mutation == "no_host":
        headers = headers[1:]
    elif mutation == "version":
        version = ["2.0", "1.2", "0.9", "3.1"][choice % 4]
    elif mutation == "bad_chunk":
        headers = [h for h in headers if h[0] not in ("Content-Length", "Transfer-Encoding")]
        headers.append(("Transfer-Encoding", "chunked"))
        framing = "chunked"
        bad_chunk = ["g", "-1", "0x1", "1 ", " 1", "1\r", "FFFFFFFFFFFFFFFFFFF"][choice % 7]
    lines = [f"{spec.method} {target} HTTP/{version}"] + [f"{k}: {v}" for k, v in headers]
    head = (sep.join(lines) + sep + sep).encode("latin-1")
    if framing == "chunked":
        parts = []
        rest = body
        for size in itertools.cycle(spec.chunk_sizes or [len(body) or 1]):
            if not rest:
                break
            parts.append(b"%x\r\n%s\r\n" % (len(rest[:size]), rest[:size]))
            rest = rest[size:]
        if bad_chunk is not None:
            parts.append(bad_chunk.encode() + b"\r\nxx\r\n")
        parts.append(b"0\r\n\r\n")
        return head + b"".join(parts)
    return head + body


def sized(case: int, seq: int, *, url_bytes: int | None, head_bytes: int | None) -> bytes:
    """A GET whose target is exactly ``url_bytes`` or whose head is exactly ``head_bytes``."""
    target = "/" if url_bytes is None else "/" + "u" * (url_bytes - 1)

    def build(pad: str) -> bytes:
        lines = [
            f"GET {target} HTTP/1.1",
            "Host: fuzz",
            f"X-Case: {case}",
            f"X-Seq: {seq}",
            f"X-Pad: {pad}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    if head_bytes is None:
        return build("p")
    short = build("")
    return build("p" * (head_bytes - len(short)))


MUTATIONS = [
    "cl_te",
    "dup_cl",
    "ctl_in_value",
    "obs_fold",
    "space_colon",
    "bare_lf",
    "te_unknown",
    "no_host",
    "version",
    "bad_chunk",
    "head_limit",
    "url_limit",
    "flip",
    None,
]


@dataclass
class Case:
    requests: list[Spec]
    mutated: int
    mutation: str | None
    choice: int
    boundary: int  # 0: exactly at the limit (valid), 1: one over (invalid)
    cuts: list[int]
    flip_at: int
    flip_byte: int


cases = st.builds(
    Case,
    requests=st.lists(specs(), min_size=1, max_size=4),
    mutated=st.integers(0, 3),
    mutation=st.sampled_from(MUTATIONS),
    choice=st.integers(0, 100),
    boundary=st.integers(0, 1),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    flip_at=st.integers(0, 10_000),
    flip_byte=st.integers(0, 255),
)


def build(case: Case, case_id: int) -> tuple[bytes, int | None, dict[int, bytes]]:
    """The bytes to send, the index of the first invalid request (None: all valid, or
    unknown for a random flip), and the valid requests' indexes -> their bodies."""
    n = len(case.requests)
    mutated = case.mutated % n
    out = []
    invalid: int | None = None
    for i, spec in enumerate(case.requests):
        last = i == n - 1
        if i != mutated or case.mutation in (None, "flip"):
            out.append(encode(spec, case_id, i, last=last))
        elif case.mutation == "head_limit":
            out.append(
                sized(case_id, i, url_bytes=None, head_bytes=MAX_HEADER_BYTES + case.boundary)
            )
            if case.boundary:
                invalid = i
            if last:  # keep "close after the last request" for the valid variant
                out[-1] = out[-1][:-2] + b"Connection: close\r\n\r\n"
                if not case.boundary:  # re-pad to the exact size with the extra header
                    extra = len(b"Connection: close\r\n")
                    base = sized(case_id, i, url_bytes=None, head_bytes=MAX_HEADER_BYTES - extra)
                    out[-1] = base[:-2] + b"Connection: close\r\n\r\n"
        elif case.mutation == "url_limit":
            out.append(sized(case_id, i, url_bytes=MAX_URL_BYTES + case.boundary, head_bytes=None))
            if case.boundary:
                invalid = i
            if last:
                out[-1] = out[-1][:-2] + b"Connection: close\r\n\r\n"
        else:
            out.append(
                encode(spec, case_id, i, last=last, mutation=case.mutation, choice=case.choice)
            )
            invalid = i
        if invalid is not None:
            break
    data = b"".join(out)
    if case.mutation == "flip":
        at = case.flip_at % len(data)
        data = data[:at] + bytes([case.flip_byte]) + data[at + 1 :]
        return data, None, {}
    count = n if invalid is None else invalid
    sized_one = case.mutation in ("head_limit", "url_limit")
    return (
        data,
        invalid,
        {i: b"" if sized_one and i == mutated else case.requests[i].body for i in range(count)},
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@dataclass
class Seen:
    case: int
    seq: int
    body: bytes


def _int(value: bytes | None) -> int:
    """A header a random flip may have corrupted."""
    return int(value) if value is not None and value.isdigit() else -1


def test_parser_boundaries_hold_under_fuzzing() -> None:
    seen: list[Seen] = []

    async def handler(req: Request) -> Response:
        body = await req.body.read()
        case = _int(req.headers.get(b"x-case"))
        seq = _int(req.headers.get(b"x-seq"))
        seen.append(Seen(case, seq, body))
        return Response(200, body=b"%d:%d:" % (case, seq) + body)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        server = HttpServer(
            handler,
            limits(
                max_header_bytes=MAX_HEADER_BYTES,
                max_url_bytes=MAX_URL_BYTES,
                max_header_count=30,
                header_timeout=1.0,
                body_timeout=1.0,
                keepalive_timeout=1.0,
            ),
        )
        runner.run(server.start())
        ids = itertools.count()

        async def exchange(pieces: list[bytes]) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)  # separate reads on the server
            except ConnectionError:
                pass
            raw = await read_all(reader, 5)
            writer.close()
            return raw

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=cases)
        def check(case: Case) -> None:
            case_id = next(ids)
            data, invalid, valid = build(case, case_id)
            before = len(seen)
            raw = runner.run(asyncio.wait_for(exchange(split(data, case.cuts)), 10))
            # a random flip may corrupt X-Case itself: then count every call since the start
            mine = [s for s in seen[before:] if s.case == case_id or case.mutation == "flip"]
            # never a hang or a crash: every answer is a well-formed response
            responses: list[Parsed] = parse_responses(raw)
            assert responses, raw
            ok = [r for r in responses if r.status == 200]
            errors = [r for r in responses if r.status != 200]
            assert len(ok) == len(mine)
            assert len(errors) <= 1 and (not errors or responses[-1] is errors[0])
            for response in errors:
                assert response.status in ERRORS, response
                assert response.header(b"content-type") == b"application/problem+json"
                assert response.header(b"connection") == b"close"
            if case.mutation == "flip":
                assert len(mine) <= len(case.requests)
                return
            # exactly the valid requests ran, in order, with the bodies that were sent
            assert [s.seq for s in mine] == sorted(valid)
            for s in mine:
                assert s.body == valid[s.seq]
            for s, response in zip(mine, ok, strict=True):
                assert response.body == b"%d:%d:" % (case_id, s.seq) + s.body
            if invalid is None:
                assert not errors
            else:
                assert len(errors) == 1, responses
                if case.mutation == "head_limit":
                    assert errors[0].status == 431
                elif case.mutation == "url_limit":
                    assert errors[0].status == 414

        check()
        runner.run(server.drain(1.0))
