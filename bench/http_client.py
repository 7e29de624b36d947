"""Upstream client throughput: sampan's ConnectionPool vs httpx.AsyncClient vs a raw asyncio
Protocol (the ceiling for any Python client), against the same local nginx, same run.

nginx (``worker_processes 1``, started from a temporary prefix on a free port) answers every
request with a small JSON body over keep-alive. Each client runs on uvloop in this process
with ``--concurrency`` workers that each send requests back to back for ``--duration``
seconds; the clients alternate ``--rounds`` times and the best round of each counts (noise
on a shared machine only ever makes a client slower).

Run: ``.venv/bin/python bench/http_client.py [--duration 3] [--concurrency 32] [--rounds 2]``.
Prints a table and writes ``bench/results/http_client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_ms,
    fmt_rate,
    latency_summary,
    machine_info,
    ratio,
    text_table,
    utc_timestamp,
    write_results,
)
from sampan.gateway.config import ServiceTarget
from sampan.gateway.proxy import Proxy, upstream_target
from sampan.http.client import ConnectionPool, Endpoint
from sampan.http.headers import Headers
from sampan.http.request import Request

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BODY = '{"ok":true,"service":"bench","items":[1,2,3]}'

CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {prefix}/t_body;
    proxy_temp_path {prefix}/t_proxy;
    fastcgi_temp_path {prefix}/t_fastcgi;
    uwsgi_temp_path {prefix}/t_uwsgi;
    scgi_temp_path {prefix}/t_scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


class Nginx:
    """nginx in a throw-away prefix; ``stop()`` ends it and removes the prefix."""

    def __init__(self) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="sampan-bench-client-"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        conf = self.prefix / "nginx.conf"
        conf.write_text(CONF.format(prefix=self.prefix, port=self.port, body=BODY))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded wait for the listener
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


# -- clients: each returns an async "make one request, return the body" and a closer ---------

Client = tuple[Callable[[], Awaitable[bytes]], Callable[[], Awaitable[None]]]


async def sampan_client(port: int, concurrency: int) -> Client:
    pool = ConnectionPool(max_idle_per_endpoint=concurrency)
    endpoint = Endpoint("127.0.0.1", port)
    headers = Headers([(b"host", b"bench.local"), (b"accept", b"application/json")])

    async def one() -> bytes:
        resp = await pool.request(
            endpoint,
            "GET",
            b"/items",
            headers,
            connect_timeout=5,
            read_timeout=5,
            write_timeout=5,
        )
        content = resp.content
        return content if content is not None else await resp.body.read()

    return one, pool.close


async def proxy_step(port: int, concurrency: int) -> Client:
    """The gateway's whole proxy step: Request in (typical client headers), Response out."""
    pool = ConnectionPool(max_idle_per_endpoint=concurrency)
    proxy = Proxy(
        ServiceTarget(endpoints=[f"http://127.0.0.1:{port}"]),
        pool,
        route_name="bench",
        trusted_proxies=[],
    )
    items = [
        (b"host", b"api.example.vn"),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"application/json"),
        (b"accept-encoding", b"gzip"),
        (b"authorization", b"Bearer abc.def.ghi"),
        (b"x-request-id", b"0b1e2c3d"),
    ]

    async def one() -> bytes:
        request = Request(
            "GET", b"/items?page=2", "/items", b"page=2", Headers(items), client=("10.1.2.3", 5555)
        )
        response = await proxy(
            request, upstream_path=upstream_target(request, None, False, None, {})
        )
        body = response.body
        assert isinstance(body, bytes), "small answers take the fast path"
        return body

    return one, pool.close


def _sniffio_import_fixed(fixed: bool) -> None:
    """httpcore imports ``sniffio`` on every request and falls back to asyncio when that
    fails; in a venv without sniffio the failed import searches sys.path each time (~0.3 ms).
    ``sys.modules["sniffio"] = None`` makes the failure instant, measuring httpx as it runs
    where sniffio is installed."""
    if fixed:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    elif sys.modules.get("sniffio", 0) is None:
        del sys.modules["sniffio"]


async def httpx_client(port: int, concurrency: int) -> Client:
    _sniffio_import_fixed(False)
    return await _httpx(port, concurrency)


async def httpx_client_fixed(port: int, concurrency: int) -> Client:
    _sniffio_import_fixed(True)
    return await _httpx(port, concurrency)


async def _httpx(port: int, concurrency: int) -> Client:
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        headers={"accept": "application/json"},
    )

    async def one() -> bytes:
        resp = await client.get("/items")
        return resp.content

    return one, client.aclose


class _RawProtocol(asyncio.Protocol):
    """The least a client can do: one canned request, find the end of a response whose
    length is known in advance. No parsing, no headers, no pool: the ceiling."""

    def __init__(self, response_size: int) -> None:
        self.size = response_size
        self.got = 0
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.size and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def raw_client(port: int, concurrency: int) -> Client:
    loop = asyncio.get_running_loop()
    request = b"GET /items HTTP/1.1\r\nhost: bench.local\r\naccept: application/json\r\n\r\n"
    # Learn the exact response size once.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    size = len(head) + length
    writer.close()
    free: list[_RawProtocol] = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(lambda: _RawProtocol(size), "127.0.0.1", port)
        free.append(proto)

    async def one() -> bytes:
        proto = free.pop()
        proto.got = 0
        proto.waiter = loop.create_future()
        assert proto.transport is not None
        proto.transport.write(request)
        await proto.waiter
        free.append(proto)
        return b""

    async def close() -> None:
        for proto in free:
            if proto.transport is not None:
                proto.transport.close()

    return one, close


CLIENTS: dict[str, Callable[[int, int], Awaitable[Client]]] = {
    "raw asyncio Protocol (ceiling)": raw_client,
    "sampan ConnectionPool": sampan_client,
    "sampan Proxy step (headers+pool)": proxy_step,
    "httpx.AsyncClient (no sniffio, as installed)": httpx_client,
    "httpx.AsyncClient (sniffio import fixed)": httpx_client_fixed,
}


async def measure(
    factory: Callable[[int, int], Awaitable[Client]], port: int, duration: float, concurrency: int
) -> dict[str, Any]:
    one, close = await factory(port, concurrency)
    loop = asyncio.get_running_loop()
    try:
        # Warm up: open the connections, fill caches.
        async def warm() -> None:
            for _ in range(20):
                await one()

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        samples: list[int] = []
        count = 0
        errors = 0
        deadline = loop.time() + duration
        clock = time.perf_counter_ns

        async def worker() -> None:
            nonlocal count, errors
            while loop.time() < deadline:  # bounded by the duration
                started = clock()
                try:
                    await one()
                except Exception:
                    errors += 1
                    continue
                samples.append(clock() - started)
                count += 1

        gc.collect()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await close()
    return {"rps": count / elapsed, "requests": count, "errors": errors} | latency_summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    nginx = Nginx()
    best: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(args.rounds):
            for name, factory in CLIENTS.items():
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    result = runner.run(
                        measure(factory, nginx.port, args.duration, args.concurrency)
                    )
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
    finally:
        nginx.stop()

    ceiling = best["raw asyncio Protocol (ceiling)"]["rps"]
    sampan = best["sampan ConnectionPool"]["rps"]
    rows = [
        [
            name,
            fmt_rate(r["rps"]),
            fmt_ms(r["p50_ms"]),
            fmt_ms(r["p99_ms"]),
            str(r["errors"]),
            f"{ratio(r['rps'], ceiling):.2f}",
            f"{ratio(sampan, r['rps']):.2f}",
        ]
        for name, r in best.items()
    ]
    print(
        f"GET /items -> {len(BODY)}-byte JSON from nginx (1 worker), keep-alive, "
        f"{args.concurrency} concurrent, {args.duration:g}s x best of {args.rounds}, uvloop"
    )
    print(
        text_table(
            ["client", "requests/s", "p50", "p99", "errors", "x ceiling", "sampan / this"], rows
        )
    )
    path = write_results(
        "http_client",
        {
            "benchmark": "http_client",
            "when": utc_timestamp(),
            "parameters": {
                "duration_s": args.duration,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "body_bytes": len(BODY),
                "loop": "uvloop",
                "upstream": "nginx worker_processes 1, return 200 (JSON)",
            },
            "results": best,
            "ratios": {
                "sampan_over_httpx_as_installed": ratio(
                    sampan, best["httpx.AsyncClient (no sniffio, as installed)"]["rps"]
                ),
                "sampan_over_httpx_sniffio_fixed": ratio(
                    sampan, best["httpx.AsyncClient (sniffio import fixed)"]["rps"]
                ),
                "sampan_over_raw_ceiling": ratio(sampan, ceiling),
                "proxy_step_over_raw_ceiling": ratio(
                    best["sampan Proxy step (headers+pool)"]["rps"], ceiling
                ),
            },
            "machine": machine_info(["httpx", "httptools", "uvloop"]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
