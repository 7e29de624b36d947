"""Data-plane HTTP server throughput: sampan's HttpServer vs nginx ``return 200``, same run.

Both serve a 13-byte body to ``wrk -t1 -c50 -d5s --latency`` over keep-alive on 127.0.0.1.
nginx runs with ``worker_processes 1`` from a temporary prefix on a free port; HttpServer
runs on uvloop in a child process (one core, like the nginx worker). The script starts and
stops both.

Run: ``.venv/bin/python bench/http_server.py [--duration 5] [--connections 50] [--rounds 1]``.
Prints a table and writes ``bench/results/http_server.json``; with ``--rounds N`` the two
servers alternate N times and the best round of each counts (noise on a shared machine
only ever makes a server slower).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_ms,
    fmt_rate,
    machine_info,
    ratio,
    text_table,
    utc_timestamp,
    write_results,
)

BODY = b"Hello, World!"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def _serve(conn: Connection) -> None:
    """Child process: HttpServer on uvloop with a trivial handler, until SIGTERM."""
    import asyncio

    import uvloop

    from sampan.gateway.config import LimitsConfig
    from sampan.http.headers import Headers
    from sampan.http.request import Request
    from sampan.http.response import Response
    from sampan.http.server import HttpServer

    async def handler(request: Request) -> Response:
        return Response(200, Headers([(b"content-type", b"text/plain")]), BODY)

    async def main() -> None:
        server = HttpServer(handler, LimitsConfig())
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        conn.send(server.port)
        await stop.wait()
        await server.drain(1.0)

    uvloop.run(main())


def run_wrk(port: int, duration: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
        lat[int(pct)] = float(value) * scale
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": lat.get(50),
        "p99_ms": lat.get(99),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else None,
        "raw": out,
    }


class Nginx:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sampan-bench-nginx-"))
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.dir, port=self.port, body=BODY.decode()))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_listening(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sampan:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        if not parent.poll(20):
            raise RuntimeError("the sampan server did not start")
        self.port = int(parent.recv())
        wait_listening(self.port)

    def stop(self) -> None:
        if self.proc.pid is not None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    best: dict[str, dict[str, Any]] = {}
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for name, starter in (("nginx", Nginx), ("sampan", Sampan)):
            server = starter()
            try:
                run_wrk(server.port, 1, args.connections)  # warm-up
                result = run_wrk(server.port, args.duration, args.connections)
            finally:
                server.stop()
            result.pop("raw")
            rounds.append({"server": name, **result})
            if name not in best or result["rps"] > best[name]["rps"]:
                best[name] = result

    rps_ratio = ratio(best["sampan"]["rps"], best["nginx"]["rps"])
    rows = [
        [name, fmt_rate(r["rps"]), fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]), str(r["non_2xx"])]
        for name, r in best.items()
    ]
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration}s, 13-byte body, keep-alive, "
        f"best of {args.rounds} round(s)"
    )
    print(text_table(["server", "requests", "p50", "p99", "non-2xx"], rows))
    print(f"sampan / nginx throughput: {rps_ratio:.2f}" if rps_ratio else "ratio: —")
    path = write_results(
        "http_server",
        {
            "benchmark": "http_server",
            "when": utc_timestamp(),
            "params": {
                "tool": f"wrk -t1 -c{args.connections} -d{args.duration}s --latency",
                "body_bytes": len(BODY),
                "rounds": args.rounds,
                "nginx": "worker_processes 1, return 200",
                "sampan": "HttpServer on uvloop, one process, trivial handler",
            },
            "results": best,
            "rounds": rounds,
            "ratio_rps_sampan_over_nginx": rps_ratio,
            "machine": machine_info(["uvloop", "httptools"]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
