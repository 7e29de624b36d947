"""Mesh benchmark: balancing around a slow endpoint, and what the mesh, mTLS and the sidecar
cost per call — every number against a reference measured in the same run.

1. **Balancing** — three upstream endpoints, each its own Python process (uvloop, a minimal
   keep-alive HTTP/1.1 server that answers every request after a fixed delay: two *fast* ones
   at ``--fast-ms`` and one *slow* one at ``--slow-ms``, 10× by default). This process drives a
   closed loop of ``--concurrency`` callers through ``MeshService.call`` for ``--balance-seconds``
   (after ``--warmup`` seconds that are not recorded), once per configuration, each with a fresh
   service (fresh latency estimates) and a fresh connection pool:

   * ``round-robin`` over the three endpoints;
   * ``p2c-peak-ewma`` (the default) over the three endpoints;
   * baseline: ``p2c-peak-ewma`` over the two fast endpoints alone.

   Every other policy keeps its default (retries: 3 attempts on connect/reset/502/503/504,
   circuit breaker, outlier ejection, passive health). The slow endpoint never fails, so none
   of them acts; the run checks that (retries, failures, ejections, breaker openings all 0),
   so the slow endpoint's share is the balancer's doing alone. Target (from the issue):
   **P2C p99 ≤ 2 × baseline p99**.

2. **Overhead** — one fast upstream, nginx ``worker_processes 1`` answering ``return 200``.

   a. *Client*: ``--concurrency`` callers in this process for ``--client-seconds``, best of
      ``--rounds`` (as ``bench/http_client.py``): sampan's ``ConnectionPool`` over plain HTTP
      (the reference), the same pool over mTLS, ``MeshService.call`` over plain HTTP and
      ``MeshService.call`` over mTLS (``Mesh`` with a node identity, ``tls: {mtls: true}``).
      The mTLS upstream is a second nginx server block with ``ssl_verify_client on`` and a
      server certificate our CA issued for ``svc/upstream``; the client presents
      ``svc/bench-client`` and checks the server's SPIFFE ID.
   b. *Sidecar*: ``wrk -t1 -c32 -d8s --latency`` (throughput; latency at saturation) and
      ``h2load --h1 -c32`` paced at a fixed rate (latency at the same load for every path) to
      the app (the plain nginx) along three paths:

      * direct: load generator → app;
      * one sidecar: → ``sampan sidecar`` (service ``client``) outbound listener
        (``Host: app-plain``) → plain HTTP → app;
      * two sidecars (the realistic mesh path): → sidecar ``client`` outbound (``Host: app``)
        → mTLS → sidecar ``app`` inbound (authorises ``svc/client -> svc/app``) → app.

Pinning (2 cores; ``--client-cpu``/``--server-cpu``): this process (the in-process clients of
1 and 2a) and both sidecars on core 0; the upstream processes, nginx, wrk and h2load on core 1.

Run (from the repository root)::

    .venv/bin/python bench/mesh.py            # the full run (~3 min)
    .venv/bin/python bench/mesh.py --quick    # smoke run (~1 min)

Prints tables, the ratios, PASS/FAIL for the P2C target and README-ready markdown, and writes
``bench/results/mesh.json``. Exits 0 even when the target fails (it is a report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvloop
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_ms,
    fmt_rate,
    latency_summary,
    machine_info,
    markdown_table,
    ratio,
    text_table,
    utc_timestamp,
    verdict,
    write_results,
)
from gateway import (
    SAMPAN,
    Service,
    free_port,
    pinned,
    run_h2load_fixed,
    run_wrk,
    source_state,
    start_nginx,
    tool_versions,
    wait_listening,
)
from http_client import Client, measure, sampan_client
from sampan.http.client import ConnectionPool, Endpoint
from sampan.http.headers import Headers
from sampan.mesh.config import (
    BalancerConfig,
    IdentityConfig,
    MeshConfig,
    ServiceConfig,
    ServiceTlsConfig,
    StaticEndpoint,
)
from sampan.mesh.deadline import Deadline
from sampan.mesh.identity.ca import init_ca, load_ca
from sampan.mesh.identity.certs import issue_certificate
from sampan.mesh.identity.tls import check_peer_id, client_context
from sampan.mesh.mesh import Mesh
from sampan.mesh.service import CallOptions, MeshService
from sampan.observe.metrics import Metrics

TRUST_DOMAIN = "bench.local"
DEADLINE_HEADER = b"x-sampan-deadline-ms"
TARGET_P2C_OVER_BASELINE_P99 = 2.0
APP_BODY = '{"ok":true,"service":"app"}'
REQUEST_HEADERS = [(b"host", b"orders"), (b"accept", b"application/json")]

BALANCE_CASES = {
    "round-robin": ("round-robin", 3),
    "p2c-peak-ewma": ("p2c-peak-ewma", 3),
    "baseline": ("p2c-peak-ewma", 2),
}
BALANCE_LABELS = {
    "round-robin": "round-robin, 3 endpoints (1 slow)",
    "p2c-peak-ewma": "p2c-peak-ewma, 3 endpoints (1 slow)",
    "baseline": "baseline: the 2 fast endpoints alone (p2c-peak-ewma)",
}
CLIENT_LABELS = {
    "pool-plain": "ConnectionPool, plain HTTP (reference)",
    "pool-mtls": "ConnectionPool, mTLS",
    "mesh-plain": "MeshService.call, plain HTTP",
    "mesh-mtls": "MeshService.call, mTLS",
}
PATH_LABELS = {
    "direct": "direct: client → app",
    "one-sidecar": "1 sidecar: client → outbound → app (plain)",
    "two-sidecars": "2 sidecars: client → outbound → mTLS → inbound → app",
}


# -- the delayed upstream: its own process, so its timers do not share our event loop -------------


class _DelayedHttp(asyncio.Protocol):
    """Keep-alive HTTP/1.1 for bodiless requests: every request is answered ``delay`` seconds
    after its head arrived (concurrent requests do not queue behind each other)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, response: bytes) -> None:
        self.loop = loop
        self.delay = delay
        self.response = response
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            self.loop.call_later(self.delay, self._respond)

    def _respond(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve_delayed(port: int, delay_ms: float, name: str) -> None:
    """The upstream process's main: serve until SIGTERM."""
    body = f'{{"ok":true,"endpoint":"{name}"}}'.encode()
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _DelayedHttp(loop, delay_ms / 1000.0, response),
            "127.0.0.1",
            port,
            backlog=1024,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


def start_process(
    name: str, command: list[str], port: int, root: Path, *, stop_signal: int = signal.SIGTERM
) -> Service:
    workdir = root / name
    workdir.mkdir(exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    service = Service(name, port, workdir, proc, stop_signal=stop_signal)
    try:
        wait_listening(port, proc, log, 30.0)
    except Exception:
        service.stop()
        raise
    return service


def start_delayed(name: str, delay_ms: float, cpu: int | None, root: Path) -> Service:
    port = free_port()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-delayed",
        str(port),
        "--delay-ms",
        f"{delay_ms:g}",
        "--name",
        name,
    ]
    return start_process(name, pinned(cpu, command), port, root)


# -- identities -----------------------------------------------------------------------------------


def make_identities(root: Path, services: Sequence[str]) -> dict[str, IdentityConfig]:
    """A fresh CA for ``TRUST_DOMAIN`` and one certificate per service (what ``sampan mesh ca
    init`` / ``sampan mesh cert issue`` write)."""
    ca_dir = root / "ca"
    init_ca(ca_dir, TRUST_DOMAIN)
    ca = load_ca(ca_dir)
    identities: dict[str, IdentityConfig] = {}
    for service in services:
        issued = issue_certificate(ca, service, ttl=6 * 3600, out_dir=root / "certs")
        identities[service] = IdentityConfig(
            service=service,
            cert=str(issued.cert_path),
            key=str(issued.key_path),
            ca=str(ca.cert_path),
        )
    return identities


# -- calling through the mesh ---------------------------------------------------------------------


def mesh_caller(svc: MeshService) -> Callable[[], Awaitable[bytes]]:
    """One call as a route would make it: a fresh deadline, the deadline header, read the body."""
    headers = Headers(REQUEST_HEADERS)
    clock = time.monotonic

    async def one() -> bytes:
        options = CallOptions(
            Deadline.from_header(None, now=clock(), default_total=30.0), DEADLINE_HEADER, None
        )
        resp = await svc.call("GET", b"/orders", headers, None, options)
        if resp.status != 200:
            await resp.aclose()
            raise RuntimeError(f"status {resp.status}")
        content = resp.content
        return content if content is not None else await resp.body.read()

    return one


def policy_counters(svc: MeshService) -> dict[str, float]:
    """What could have confounded the balancer: retries, failures, ejections, open breakers."""
    endpoints = svc.endpoints.all()
    return {
        "retries": svc.retries.value,
        "retries_denied": svc.retries_denied.value,
        "failures": sum(e.failures for e in endpoints),
        "ejections": sum(e.ejections for e in endpoints),
        "breaker_opened": sum(getattr(e.breaker, "opened_count", 0) for e in endpoints),
    }


# -- 1. balancing ---------------------------------------------------------------------------------


async def closed_loop(
    one: Callable[[], Awaitable[bytes]], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """``concurrency`` callers back to back; requests started in the first ``warmup`` seconds
    are not recorded. Latency per answering endpoint (the body names it)."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter_ns
    record_from = clock() + int(warmup * 1e9)
    until = loop.time() + warmup + seconds
    by_body: dict[bytes, list[int]] = {}
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while loop.time() < until:  # bounded by the duration
            started = clock()
            try:
                body = await one()
            except Exception:
                errors += 1
                await asyncio.sleep(0.001)
                continue
            if started >= record_from:
                samples = by_body.get(body)
                if samples is None:
                    samples = by_body[body] = []
                samples.append(clock() - started)

    gc.collect()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    all_samples = [s for samples in by_body.values() for s in samples]
    total = len(all_samples)
    per_endpoint = {}
    for body, samples in sorted(by_body.items()):
        name = body.split(b'"endpoint":"')[-1].split(b'"')[0].decode() if body else "?"
        per_endpoint[name] = {"share": len(samples) / total if total else 0.0} | latency_summary(
            samples
        )
    return {
        "rps": total / seconds,
        "errors": errors,
        "per_endpoint": per_endpoint,
    } | latency_summary(all_samples)


async def balance_case(
    balancer: str,
    urls: Sequence[str],
    concurrency: int,
    seconds: float,
    warmup: float,
    decay: float | None,
) -> dict[str, Any]:
    options: dict[str, Any] = (
        {"type": balancer} if decay is None else {"type": balancer, "decay": decay}
    )
    config = ServiceConfig(
        name="orders",
        endpoints=[StaticEndpoint(url=u) for u in urls],
        balancer=BalancerConfig(**options),
    )
    pool = ConnectionPool(max_idle_per_endpoint=concurrency)
    svc = MeshService(config, pool, Metrics(), trust_domain=TRUST_DOMAIN)
    await svc.start()
    try:
        result = await closed_loop(mesh_caller(svc), concurrency, seconds, warmup)
        result["policies"] = policy_counters(svc)
        result["ewma_ms"] = {
            e.url: round(e.ewma * 1e3, 2) for e in svc.endpoints.all()
        }  # the estimates at the end
    finally:
        await svc.stop()
        await pool.close()
    return result


def run_balancing(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    upstreams: list[Service] = []
    try:
        for name, delay in (("fast-1", args.fast_ms), ("fast-2", args.fast_ms)):
            upstreams.append(start_delayed(name, delay, args.server_cpu, root))
        upstreams.append(start_delayed("slow", args.slow_ms, args.server_cpu, root))
        urls = [f"http://127.0.0.1:{u.port}" for u in upstreams]
        results: dict[str, Any] = {}
        for case, (balancer, count) in BALANCE_CASES.items():
            print(f"  balancing: {case} ...", flush=True)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                results[case] = runner.run(
                    balance_case(
                        balancer,
                        urls[:count],
                        args.concurrency,
                        args.balance_seconds,
                        args.warmup,
                        args.decay,
                    )
                )
            results[case]["balancer"] = balancer
            results[case]["endpoints"] = [u.name for u in upstreams[:count]]
    finally:
        for service in upstreams:
            service.stop()
    p2c, base, rr = results["p2c-peak-ewma"], results["baseline"], results["round-robin"]
    p2c_over_base = ratio(p2c["p99_ms"], base["p99_ms"])
    return {
        "cases": results,
        "ratios": {
            "p2c_p99_over_baseline_p99": p2c_over_base,
            "round_robin_p99_over_baseline_p99": ratio(rr["p99_ms"], base["p99_ms"]),
            "round_robin_p99_over_p2c_p99": ratio(rr["p99_ms"], p2c["p99_ms"]),
        },
        "target": {
            "p2c_p99_over_baseline_p99_max": TARGET_P2C_OVER_BASELINE_P99,
            "value": p2c_over_base,
            "pass": None
            if p2c_over_base is None
            else p2c_over_base <= TARGET_P2C_OVER_BASELINE_P99,
        },
    }


# -- 2a. client overhead --------------------------------------------------------------------------

NGINX_APP = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
"""


def start_app(identity: IdentityConfig, cpu: int | None, root: Path) -> Service:
    """nginx (one worker): plain HTTP on ``port``, mTLS (client certificate required) on
    ``extra["tls_port"]``."""
    port, tls_port = free_port(), free_port()
    block = NGINX_APP.format(
        port=port,
        tls_port=tls_port,
        body=APP_BODY,
        cert=identity.cert,
        key=identity.key,
        ca=identity.ca,
    )
    service = start_nginx("app", block, port, cpu, root)
    service.extra["tls_port"] = tls_port
    return service


async def pool_mtls_client(tls_port: int, concurrency: int, identity: IdentityConfig) -> Client:
    pool = ConnectionPool(
        max_idle_per_endpoint=concurrency,
        ssl_context=client_context(identity),
        peer_verifier=check_peer_id,
    )
    endpoint = Endpoint(
        "127.0.0.1", tls_port, tls=True, peer_id=f"spiffe://{TRUST_DOMAIN}/svc/upstream"
    )
    headers = Headers(REQUEST_HEADERS)

    async def one() -> bytes:
        resp = await pool.request(
            endpoint, "GET", b"/orders", headers, connect_timeout=5, read_timeout=5, write_timeout=5
        )
        content = resp.content
        return content if content is not None else await resp.body.read()

    return one, pool.close


async def mesh_plain_client(port: int, concurrency: int) -> Client:
    config = ServiceConfig(
        name="upstream", endpoints=[StaticEndpoint(url=f"http://127.0.0.1:{port}")]
    )
    pool = ConnectionPool(max_idle_per_endpoint=concurrency)
    svc = MeshService(config, pool, Metrics(), trust_domain=TRUST_DOMAIN)
    await svc.start()

    async def close() -> None:
        await svc.stop()
        await pool.close()

    return mesh_caller(svc), close


async def mesh_mtls_client(tls_port: int, concurrency: int, identity: IdentityConfig) -> Client:
    config = ServiceConfig(
        name="upstream",
        endpoints=[StaticEndpoint(url=f"https://127.0.0.1:{tls_port}")],
        tls=ServiceTlsConfig(mtls=True),
    )
    mesh = Mesh(MeshConfig(trust_domain=TRUST_DOMAIN, identity=identity), [config], Metrics())
    await mesh.start()
    return mesh_caller(mesh.service("upstream")), mesh.stop


def run_client_overhead(
    args: argparse.Namespace, app: Service, identity: IdentityConfig
) -> dict[str, Any]:
    tls_port = int(app.extra["tls_port"])
    factories: dict[str, Callable[[int, int], Awaitable[Client]]] = {
        "pool-plain": lambda _, c: sampan_client(app.port, c),
        "pool-mtls": lambda _, c: pool_mtls_client(tls_port, c, identity),
        "mesh-plain": lambda _, c: mesh_plain_client(app.port, c),
        "mesh-mtls": lambda _, c: mesh_mtls_client(tls_port, c, identity),
    }

    def run(factory: Callable[[int, int], Awaitable[Client]], seconds: float, c: int) -> Any:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(measure(factory, 0, seconds, c))

    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in factories}
    for index in range(args.rounds):
        for name, factory in factories.items():
            print(f"  client overhead: {name} (round {index + 1}) ...", flush=True)
            rounds[name].append(run(factory, args.client_seconds, args.concurrency))
    best = {name: max(r, key=lambda x: x["rps"]) for name, r in rounds.items()}
    for name, factory in factories.items():  # one caller: the cost of a call without queueing
        print(f"  client overhead: {name} (1 caller) ...", flush=True)
        best[name]["serial"] = run(factory, args.serial_seconds, 1)
    reference = best["pool-plain"]
    for name, result in best.items():
        result["all_rps"] = [round(r["rps"], 1) for r in rounds[name]]
        result["rps_over_reference"] = ratio(result["rps"], reference["rps"])
        result["added_p50_ms"] = result["p50_ms"] - reference["p50_ms"]
        result["added_p99_ms"] = result["p99_ms"] - reference["p99_ms"]
        serial, serial_ref = result["serial"], reference["serial"]
        result["serial"]["added_p50_ms"] = serial["p50_ms"] - serial_ref["p50_ms"]
        result["serial"]["added_p99_ms"] = serial["p99_ms"] - serial_ref["p99_ms"]
    return {
        "results": best,
        "ratios": {
            "mesh_plain_over_pool_plain_rps": ratio(best["mesh-plain"]["rps"], reference["rps"]),
            "mesh_mtls_over_mesh_plain_rps": ratio(
                best["mesh-mtls"]["rps"], best["mesh-plain"]["rps"]
            ),
            "pool_mtls_over_pool_plain_rps": ratio(best["pool-mtls"]["rps"], reference["rps"]),
            "mesh_mtls_over_pool_plain_rps": ratio(best["mesh-mtls"]["rps"], reference["rps"]),
        },
    }


# -- 2b. sidecars ---------------------------------------------------------------------------------


def start_sidecar(
    name: str,
    service: str,
    app_port: int,
    config: dict[str, Any],
    *,
    outbound: bool,
    cpu: int | None,
    root: Path,
) -> Service:
    workdir = root / name
    workdir.mkdir()
    conf = workdir / "sampan.yaml"
    conf.write_text(yaml.safe_dump(config, sort_keys=False))
    inbound_port, outbound_port = free_port(), free_port()
    command = [
        SAMPAN,
        "sidecar",
        "--service",
        service,
        "--app",
        f"127.0.0.1:{app_port}",
        "--config",
        str(conf),
        "--inbound",
        f"127.0.0.1:{inbound_port}",
        "--outbound",
        f"127.0.0.1:{outbound_port}" if outbound else "",
        "--admin-port",
        "0",
        "--log-level",
        "WARNING",
    ]
    port = outbound_port if outbound else inbound_port
    car = start_process(name, pinned(cpu, command), port, root)
    car.config = conf
    car.extra.update(inbound=inbound_port, outbound=outbound_port if outbound else None)
    car.extra["command"] = shlex.join(pinned(cpu, command))
    return car


@contextlib.contextmanager
def sidecars(
    args: argparse.Namespace, app: Service, identities: dict[str, IdentityConfig], root: Path
) -> Iterator[dict[str, Service]]:
    """Sidecar ``app`` (inbound mTLS in front of the app) and sidecar ``client`` (outbound:
    service ``app`` through sidecar ``app`` over mTLS; service ``app-plain`` straight to the
    app over plain HTTP)."""
    started: dict[str, Service] = {}

    def mesh_section(service: str, rules: list[str]) -> dict[str, Any]:
        ident = identities[service]
        return {
            "trust_domain": TRUST_DOMAIN,
            "identity": {"service": service, "cert": ident.cert, "key": ident.key, "ca": ident.ca},
            "authorization": rules,
        }

    try:
        server_side = start_sidecar(
            "sidecar-app",
            "app",
            app.port,
            {"mesh": mesh_section("app", ["svc/client -> svc/app"])},
            outbound=False,
            cpu=args.client_cpu,
            root=root,
        )
        started["app"] = server_side
        client_config = {
            "mesh": mesh_section("client", []),
            "services": [
                {
                    "name": "app",
                    "endpoints": [{"url": f"https://127.0.0.1:{server_side.extra['inbound']}"}],
                    "tls": {"mtls": True},
                },
                {"name": "app-plain", "endpoints": [{"url": f"http://127.0.0.1:{app.port}"}]},
            ],
        }
        started["client"] = start_sidecar(
            "sidecar-client",
            "client",
            app.port,
            client_config,
            outbound=True,
            cpu=args.client_cpu,
            root=root,
        )
        yield started
    finally:
        for service in reversed(list(started.values())):
            service.stop()


def check_path(port: int, host: str) -> str:
    """One request before any timing: the app's answer must come back unchanged."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/orders", headers={"host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: str = response.read().decode()
        if response.status != 200 or body != APP_BODY:
            raise RuntimeError(f"{host} via {port}: {response.status} {body[:300]!r}")
        return body


def run_sidecar_overhead(
    args: argparse.Namespace, app: Service, identities: dict[str, IdentityConfig], root: Path
) -> dict[str, Any]:
    with sidecars(args, app, identities, root) as cars:
        outbound = int(cars["client"].extra["outbound"])
        paths = {
            "direct": (app.port, "app"),
            "one-sidecar": (outbound, "app-plain"),
            "two-sidecars": (outbound, "app"),
        }
        for port, host in paths.values():
            check_path(port, host)
        throughput: dict[str, Any] = {}
        for name, (port, host) in paths.items():
            print(f"  sidecar: wrk {name} ...", flush=True)
            url = f"http://127.0.0.1:{port}/orders"
            run_wrk(
                url,
                seconds=1,
                connections=args.concurrency,
                cpu=args.server_cpu,
                headers=[f"Host: {host}"],
            )  # warm-up: connections, caches
            throughput[name] = run_wrk(
                url,
                seconds=args.wrk_seconds,
                connections=args.concurrency,
                cpu=args.server_cpu,
                headers=[f"Host: {host}"],
            )
        two = throughput["two-sidecars"]["rps"]
        rate = max(100.0, round(args.fixed_rate_share * two / 100) * 100)
        fixed: dict[str, Any] = {}
        for name, (port, host) in paths.items():
            print(f"  sidecar: h2load {name} at {rate:,.0f}/s ...", flush=True)
            fixed[name] = run_h2load_fixed(
                f"http://127.0.0.1:{port}/orders",
                rate=rate,
                clients=args.concurrency,
                seconds=args.fixed_seconds,
                warmup=1.0,
                cpu=args.server_cpu,
                headers=[f":authority: {host}"],  # "Host:" would be sent twice
                workdir=root,
                tag=name,
            )
        commands = {name: car.extra["command"] for name, car in cars.items()}
    direct_w, direct_f = throughput["direct"], fixed["direct"]
    for name in paths:
        w, f = throughput[name], fixed[name]
        w["rps_over_direct"] = ratio(w["rps"], direct_w["rps"])
        w["added_p50_ms"] = w["p50_ms"] - direct_w["p50_ms"]
        w["added_p99_ms"] = w["p99_ms"] - direct_w["p99_ms"]
        f["added_p50_ms"] = f["p50_ms"] - direct_f["p50_ms"]
        f["added_p99_ms"] = f["p99_ms"] - direct_f["p99_ms"]
    return {
        "wrk": throughput,
        "fixed_rate": fixed,
        "fixed_rate_per_second": rate,
        "sidecar_commands": commands,
    }


# -- report ---------------------------------------------------------------------------------------


def _ms_signed(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return ("+" if value >= 0 else "−") + fmt_ms(abs(value))


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def balance_table(balance: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "balancer",
        "requests/s",
        "p50",
        "p99",
        "max",
        "slow endpoint's share",
        "p99 / baseline",
    ]
    base = balance["cases"]["baseline"]["p99_ms"]
    rows = []
    for case, r in balance["cases"].items():
        slow = r["per_endpoint"].get("slow", {}).get("share")
        rows.append(
            [
                BALANCE_LABELS[case],
                fmt_rate(r["rps"]),
                fmt_ms(r["p50_ms"]),
                fmt_ms(r["p99_ms"]),
                fmt_ms(r["max_ms"]),
                "—" if slow is None else f"{100 * slow:.2f} %",
                _x(ratio(r["p99_ms"], base)),
            ]
        )
    return headers, rows


def client_table(client: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "client",
        "requests/s",
        "× reference",
        "p50",
        "p99",
        "added p50",
        "added p99",
        "1 caller: p50",
        "added p50",
        "added p99",
    ]
    rows = [
        [
            CLIENT_LABELS[name],
            fmt_rate(r["rps"]),
            _x(r["rps_over_reference"]),
            fmt_ms(r["p50_ms"]),
            fmt_ms(r["p99_ms"]),
            _ms_signed(r["added_p50_ms"]),
            _ms_signed(r["added_p99_ms"]),
            fmt_ms(r["serial"]["p50_ms"]),
            _ms_signed(r["serial"]["added_p50_ms"]),
            _ms_signed(r["serial"]["added_p99_ms"]),
        ]
        for name, r in client["results"].items()
    ]
    return headers, rows


def sidecar_table(sidecar: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rate = sidecar["fixed_rate_per_second"]
    headers = [
        "path",
        "wrk requests/s",
        "× direct",
        "wrk p50",
        "wrk p99",
        f"p50 @ {rate:,.0f}/s",
        f"p99 @ {rate:,.0f}/s",
        "added p50",
        "added p99",
    ]
    rows = []
    for name, w in sidecar["wrk"].items():
        f = sidecar["fixed_rate"][name]
        rows.append(
            [
                PATH_LABELS[name],
                fmt_rate(w["rps"]),
                _x(w["rps_over_direct"]),
                fmt_ms(w["p50_ms"]),
                fmt_ms(w["p99_ms"]),
                fmt_ms(f["p50_ms"]) + ("" if f["kept_up"] else " (!)"),
                fmt_ms(f["p99_ms"]),
                _ms_signed(f["added_p50_ms"]),
                _ms_signed(f["added_p99_ms"]),
            ]
        )
    return headers, rows


def report(args: argparse.Namespace, data: dict[str, Any]) -> None:
    balance = data.get("balancing")
    if balance:
        print(
            f"\n1. Balancing: endpoints answer after {args.fast_ms:g} ms (fast-1, fast-2) and "
            f"{args.slow_ms:g} ms (slow); {args.concurrency} closed-loop callers through "
            f"MeshService.call, {args.balance_seconds:g} s after {args.warmup:g} s warm-up"
        )
        print(text_table(*balance_table(balance)))
        for case, r in balance["cases"].items():
            seen = ", ".join(
                f"{name} {100 * e['share']:.1f} % p50 {fmt_ms(e['p50_ms'])}"
                for name, e in r["per_endpoint"].items()
            )
            policies = ", ".join(f"{k} {v:g}" for k, v in r["policies"].items())
            print(f"   {case}: {seen}; errors {r['errors']}; {policies}")
        target = balance["target"]
        print(
            f"   P2C p99 / baseline p99 = {_x(target['value'])} "
            f"(target ≤ {TARGET_P2C_OVER_BASELINE_P99:g}×): {verdict(target['pass'])}"
        )
        print(
            "   round-robin p99 / baseline p99 = "
            f"{_x(balance['ratios']['round_robin_p99_over_baseline_p99'])}"
        )
    client = data.get("client_overhead")
    if client:
        print(
            f"\n2a. Upstream client: nginx return 200 (1 worker), {args.concurrency} concurrent "
            f"callers, {args.client_seconds:g} s, best of {args.rounds}, uvloop"
        )
        print(text_table(*client_table(client)))
    sidecar = data.get("sidecar_overhead")
    if sidecar:
        print(
            f"\n2b. Sidecar: wrk -t1 -c{args.concurrency} -d{args.wrk_seconds:g}s --latency, and "
            f"h2load --h1 -c{args.concurrency} at {sidecar['fixed_rate_per_second']:,.0f}/s for "
            f"{args.fixed_seconds:g} s; app = nginx return 200"
        )
        print(text_table(*sidecar_table(sidecar)))
    print("\nREADME-ready markdown:\n")
    if balance:
        print(markdown_table(*balance_table(balance)))
        print()
    if client:
        print(markdown_table(*client_table(client)))
        print()
    if sidecar:
        print(markdown_table(*sidecar_table(sidecar)))
        print()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (~1 min)")
    parser.add_argument("--only", default="balancing,client,sidecar")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fast-ms", type=float, default=10.0)
    parser.add_argument("--slow-ms", type=float, default=100.0)
    parser.add_argument(
        "--decay", type=float, help="peak-EWMA decay, seconds (default: the config's, 10 s)"
    )
    parser.add_argument("--balance-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--client-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serial-seconds", type=float, default=1.5)
    parser.add_argument("--wrk-seconds", type=float, default=8.0)
    parser.add_argument("--fixed-seconds", type=float, default=5.0)
    parser.add_argument(
        "--fixed-rate-share",
        type=float,
        default=0.5,
        help="fixed rate = this share of the two-sidecar path's wrk requests/s",
    )
    two_cores = (os.cpu_count() or 1) >= 2
    parser.add_argument("--client-cpu", type=int, default=0 if two_cores else None)
    parser.add_argument("--server-cpu", type=int, default=1 if two_cores else None)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--serve-delayed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.balance_seconds = 3.0
        args.warmup = 0.5
        args.client_seconds = 1.5
        args.rounds = 1
        args.serial_seconds = 0.75
        args.wrk_seconds = 3.0
        args.fixed_seconds = 3.0
    if args.no_pin:
        args.client_cpu = args.server_cpu = None
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_delayed is not None:
        serve_delayed(args.serve_delayed, args.delay_ms, args.name)
        return 0
    command = shlex.join(["python", "bench/mesh.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    data: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sampan-bench-mesh-") as tmp:
        root = Path(tmp)
        if "balancing" in args.only:
            print("1. balancing ...", flush=True)
            data["balancing"] = run_balancing(args, root)
        if args.only & {"client", "sidecar"}:
            identities = make_identities(root, ["upstream", "bench-client", "app", "client"])
            app = start_app(identities["upstream"], args.server_cpu, root)
            try:
                if "client" in args.only:
                    print("2a. client overhead ...", flush=True)
                    data["client_overhead"] = run_client_overhead(
                        args, app, identities["bench-client"]
                    )
                if "sidecar" in args.only:
                    print("2b. sidecar overhead ...", flush=True)
                    data["sidecar_overhead"] = run_sidecar_overhead(args, app, identities, root)
            finally:
                app.stop()
    elapsed = time.monotonic() - started
    report(args, data)
    path = write_results(
        "mesh",
        {
            "benchmark": "mesh",
            "when": utc_timestamp(),
            "command": command,
            "elapsed_s": round(elapsed, 1),
            "parameters": {
                name: (sorted(value) if isinstance(value, set) else value)
                for name, value in vars(args).items()
                if name not in ("serve_delayed", "delay_ms", "name")
            }
            | {
                "loop": "uvloop",
                "trust_domain": TRUST_DOMAIN,
                "policies": "defaults (retries 3 attempts, breaker, outlier, passive health)",
            },
            **data,
            "source": source_state(),
            "tools": tool_versions(),
            "machine": machine_info(["uvloop", "httptools", "cryptography", "pydantic"]),
        },
    )
    print(f"wrote {path} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
