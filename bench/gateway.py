"""Gateway benchmark: sampan's proxy vs nginx ``proxy_pass`` vs Caddy ``reverse_proxy``, one run.

Every proxy runs one worker (nginx ``worker_processes 1``, Caddy ``GOMAXPROCS=1``, sampan
``--workers 1``) in front of the same upstream: an nginx (``worker_processes 1``) answering
``return 200 '{"ok":true,"service":"orders"}'`` over keep-alive. Systems:

* ``nginx``: ``proxy_pass`` to an ``upstream`` block with ``keepalive 64``, HTTP/1.1;
* ``caddy``: ``reverse_proxy`` (admin, auto-HTTPS and logs off; 64 idle upstream connections);
* ``sampan``: ``sampan up`` with one ``path_prefix: /`` route to the upstream (plain proxy);
* ``sampan+plugins``: the same route with request-id, key-auth (wrk sends the key),
  rate-limit (local GCRA, 10,000,000 per second, never triggers) — and metrics, which every
  route records;
* ``sampan topic``: ``POST /orders`` → ``topic: bench.orders`` on the embedded SQLite bus
  (``durability: full``): HTTP → durable publish → 202, with a ~300-byte JSON body.

Measurements:

1. **Throughput** — ``wrk -t1 -c64 -d10s --latency`` after a 2 s warm-up, every system in turn,
   3 rounds; the best round (highest requests/s) of each system counts (noise on a shared
   machine only makes a system slower); every round is in the JSON.
2. **Fixed rate** — rate A = half of nginx's best requests/s (the issue's rule), paced by
   ``h2load --h1 -c32 --rps=A/32`` with the clients started 1 ms apart (``-r1
   --rate-period=1ms``; otherwise their pacing timers fire together and the "fixed rate" is
   bursts of 32), 1 s warm-up + 10 s, against each proxy and against the upstream directly
   (the baseline); p50/p99 come from h2load's per-request log; *added p99* = system p99 −
   direct p99, same run. Rate B = half of sampan+plugins' best (for information: the latency
   sampan adds at a load it can carry), 2 rounds of 3 s, lowest p99 per system.
3. **Topic check** — after the runs, ``h2load -n 20000 -c64`` POSTs exactly 20,000 orders and
   the topic must grow by exactly the number of 2xx answers; after the node stops, the durable
   message count (``sampan bus topics --json``) must equal the gateway's own count of 202s.
4. **Profile** — when a target fails (or ``--profile always``), ``py-spy record`` (Python
   functions) and ``perf record`` (interpreter vs kernel vs C extensions, µs per request)
   sample the sampan+plugins process under the same wrk load; the top costs are printed.
5. ``--breakdown`` adds sampan with a fixed ``respond`` target (plain and with the plugins) to
   the throughput rounds: the gateway's cost without the upstream hop.

Pinning (2 cores): the proxy under test on core 0, wrk/h2load and the upstream nginx on core 1.

Run (from the repository root)::

    .venv/bin/python bench/gateway.py            # the full run (~5 min)
    .venv/bin/python bench/gateway.py --quick    # smoke run (~1 min)

Prints a table, the ratios against the targets and a README-ready markdown table, and writes
``bench/results/gateway.json``. Exits 0 even when a target fails (it is a report).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_ms,
    fmt_rate,
    machine_info,
    markdown_table,
    percentile,
    ratio,
    text_table,
    utc_timestamp,
    verdict,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
WRK = shutil.which("wrk") or "/usr/bin/wrk"
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CADDY = shutil.which("caddy") or "/usr/bin/caddy"
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
VENV_BIN = Path(sys.executable).parent
SAMPAN = str(VENV_BIN / "sampan") if (VENV_BIN / "sampan").exists() else "sampan"
PY_SPY = str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else "py-spy"
PERF = shutil.which("perf")

UPSTREAM_BODY = '{"ok":true,"service":"orders"}'
API_KEY = "bench-gateway-key-7f3a9c2e51d04b68"
TOPIC = "bench.orders"
RATE_LIMIT = 10_000_000  # per second: far above anything one worker can serve
EXACT_CHECK_REQUESTS = 20_000

# A ~300-byte order, the body of every topic request.
ORDER_BODY = orjson.dumps(
    {
        "order_id": "DH2026112600042",
        "customer": {"id": "KH00042", "name": "Nguyễn Thị Lan", "phone": "0912345678"},
        "items": [
            {"sku": "CF-G7-3IN1", "name": "Cà phê G7 3in1", "qty": 2, "price": 58000},
            {"sku": "BANH-CHOCOPIE", "name": "Bánh Chocopie", "qty": 1, "price": 47000},
        ],
        "total": 163000,
        "currency": "VND",
        "channel": "pos",
        "store": "HN-01",
    }
)

TARGET_VS_NGINX = 0.7
TARGET_VS_CADDY = 1.5
TARGET_ADDED_P99_MS = 1.0

SYSTEM_LABELS = {
    "direct": "upstream directly (nginx return 200)",
    "nginx": "nginx proxy_pass (keepalive 64)",
    "caddy": "Caddy reverse_proxy (GOMAXPROCS=1)",
    "sampan": "sampan, plain proxy",
    "sampan+plugins": "sampan + request-id, key-auth, rate-limit, metrics",
    "sampan-topic": "sampan topic target (POST → durable publish → 202)",
    "sampan-respond": "sampan, fixed `respond` target (no upstream; --breakdown)",
    "sampan-respond+plugins": "sampan + plugins, fixed `respond` target (no upstream; --breakdown)",
}
PROXIES = ("nginx", "caddy", "sampan", "sampan+plugins")
# Not proxies: what the gateway costs without the upstream hop (``--breakdown``).
BREAKDOWN = ("sampan-respond", "sampan-respond+plugins")
ALL_SYSTEMS = (*PROXIES, *BREAKDOWN, "sampan-topic")


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def pinned(cpu: int | None, command: Sequence[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *command] if cpu is not None else list(command)


@dataclass
class Service:
    """One server process (nginx, Caddy or a sampan node) in its own temporary directory."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    admin_port: int | None = None
    config: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(
    name: str,
    command: list[str],
    workdir: Path,
    port: int,
    *,
    env: dict[str, str] | None = None,
    startup_timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        wait_listening(port, proc, log, startup_timeout)
    except BaseException:
        if proc.poll() is None:  # never leave a half-started server behind
            proc.kill()
            proc.wait()
        raise
    return proc, log


NGINX_COMMON = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{body}
}}
"""

NGINX_UPSTREAM_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
"""

NGINX_PROXY_SERVER = """
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

CADDYFILE = """{{
    admin off
    auto_https off
    log {{
        output discard
    }}
}}

http://127.0.0.1:{port} {{
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:{upstream} {{
        transport http {{
            keepalive 60s
            keepalive_idle_conns_per_host 64
        }}
    }}
}}
"""


def start_nginx(name: str, server_block: str, port: int, cpu: int | None, root: Path) -> Service:
    workdir = root / name
    workdir.mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(dir=workdir, body=server_block))
    command = pinned(cpu, [NGINX, "-p", str(workdir), "-c", str(conf), "-e", "stderr"])
    proc, _ = _spawn(name, command, workdir, port)
    return Service(name, port, workdir, proc, stop_signal=signal.SIGQUIT, config=conf)


def start_upstream(cpu: int | None, root: Path) -> Service:
    port = free_port()
    block = NGINX_UPSTREAM_SERVER.format(port=port, body=UPSTREAM_BODY)
    return start_nginx("upstream", block, port, cpu, root)


def start_nginx_proxy(upstream: int, cpu: int | None, root: Path) -> Service:
    port = free_port()
    block = NGINX_PROXY_SERVER.format(port=port, upstream=upstream)
    return start_nginx("nginx", block, port, cpu, root)


def start_caddy(upstream: int, cpu: int | None, root: Path) -> Service:
    workdir = root / "caddy"
    workdir.mkdir()
    port = free_port()
    conf = workdir / "Caddyfile"
    conf.write_text(CADDYFILE.format(port=port, upstream=upstream))
    env = {
        **os.environ,
        "GOMAXPROCS": "1",
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir / "data"),
        "XDG_CONFIG_HOME": str(workdir / "config"),
    }
    command = pinned(cpu, [CADDY, "run", "--config", str(conf), "--adapter", "caddyfile"])
    proc, _ = _spawn("caddy", command, workdir, port, env=env)
    return Service("caddy", port, workdir, proc, config=conf)


PLUGIN_ENTRIES: list[dict[str, Any]] = [
    {"name": "request-id"},
    {"name": "key-auth"},
    {
        "name": "rate-limit",
        "config": {"rate": RATE_LIMIT, "period": "1s", "limit_by": "consumer", "policy": "local"},
    },
]


def sampan_config(
    kind: str, port: int, admin_port: int, upstream: int, data: Path
) -> dict[str, Any]:
    """The sampan.yaml of one system: ``sampan``, ``sampan+plugins``, ``sampan-topic``, or a
    ``sampan-respond`` variant (the same gateway answering by itself, no upstream hop)."""
    config: dict[str, Any] = {
        "node": {"name": f"bench-{kind}", "data_dir": str(data), "admin": {"port": admin_port}},
        "gateway": {"listen": {"host": "127.0.0.1", "port": port}, "workers": 1},
    }
    if kind == "sampan-topic":
        config["bus"] = {"durability": "full", "topics": [{"name": TOPIC}]}
        config["routes"] = [
            {
                "name": "orders-in",
                "match": {"path": "/orders", "methods": ["POST"]},
                "target": {"topic": {"name": TOPIC}},
            }
        ]
        return config
    if kind in ("sampan", "sampan+plugins"):
        target: dict[str, Any] = {"service": {"endpoints": [f"http://127.0.0.1:{upstream}"]}}
    elif kind in BREAKDOWN:
        target = {
            "respond": {
                "status": 200,
                "headers": {"content-type": "application/json"},
                "body": UPSTREAM_BODY,
            }
        }
    else:
        raise ValueError(kind)
    route: dict[str, Any] = {"name": "orders", "match": {"path_prefix": "/"}, "target": target}
    if kind.endswith("+plugins"):
        config["consumers"] = [
            {"username": "bench-client", "groups": ["bench"], "key_auth": [{"key": API_KEY}]}
        ]
        route["plugins"] = PLUGIN_ENTRIES
    config["routes"] = [route]
    return config


def start_sampan(kind: str, upstream: int, cpu: int | None, root: Path) -> Service:
    workdir = root / kind.replace("+", "-")
    workdir.mkdir()
    port, admin_port = free_port(), free_port()
    conf = workdir / "sampan.yaml"
    document = sampan_config(kind, port, admin_port, upstream, workdir / "data")
    conf.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    check = subprocess.run(
        [SAMPAN, "validate", str(conf)], check=False, capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        raise RuntimeError(f"sampan validate {conf} failed:\n{check.stdout}{check.stderr}")
    command = pinned(cpu, [SAMPAN, "up", str(conf), "--workers", "1", "--log-level", "WARNING"])
    proc, log = _spawn(kind, command, workdir, port)
    service = Service(kind, port, workdir, proc, admin_port=admin_port, config=conf)
    try:
        wait_listening(admin_port, proc, log, 30.0)
    except BaseException:
        service.stop()
        raise
    return service


# -- HTTP checks ----------------------------------------------------------------------------------


def http_call(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def sanity_check(service: Service) -> dict[str, Any]:
    """One request per system before any timing: the right answer, the plugins really on."""
    key = {"apikey": API_KEY}
    if service.name == "sampan-topic":
        status, headers, body = http_call(
            service.port,
            "/orders",
            method="POST",
            body=ORDER_BODY,
            headers={"content-type": "application/json"},
        )
        if status != 202:
            raise RuntimeError(f"{service.name}: POST /orders answered {status}: {body[:300]!r}")
        return {"status": status, "answer": orjson.loads(body)}
    status, headers, body = http_call(service.port, "/", headers=key)
    if status != 200 or body.decode() != UPSTREAM_BODY:
        raise RuntimeError(f"{service.name}: answered {status} {body[:300]!r}")
    result: dict[str, Any] = {"status": status, "body": body.decode()}
    if service.name.endswith("+plugins"):
        missing = [h for h in ("x-request-id", "ratelimit", "ratelimit-policy") if h not in headers]
        if missing:
            raise RuntimeError(f"{service.name}: response lacks {missing}: {headers}")
        no_key_status, _, _ = http_call(service.port, "/")
        if no_key_status != 401:
            raise RuntimeError(f"{service.name}: a request without a key got {no_key_status}")
        result["headers"] = {h: headers[h] for h in ("x-request-id", "ratelimit-policy")}
        result["without_key"] = no_key_status
    return result


def admin_metrics(service: Service) -> list[dict[str, Any]]:
    assert service.admin_port is not None
    _, _, body = http_call(service.admin_port, "/api/metrics")
    return list(orjson.loads(body))


def metric_count(service: Service, kind: str, name: str) -> dict[str, Any]:
    for entry in admin_metrics(service):
        if entry.get("kind") == kind and entry.get("name") == name:
            return entry
    return {"count": 0, "errors": 0}


# -- load generators ------------------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return math.nan
    value, unit = float(match.group(1)), match.group(2)
    return value * (60e3 if unit == "m" else _UNITS_MS[unit])


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    cpu: int | None,
    headers: Sequence[str] = (),
    script: Path | None = None,
) -> dict[str, Any]:
    command = [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    before = cpu_times()
    out = subprocess.run(
        pinned(cpu, command), capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    busy = cpu_busy(before, cpu_times())
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total_match = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    lat = {
        int(pct): _duration_ms(value)
        for pct, value in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps_match.group(1)) if rps_match else math.nan,
        "requests": int(total_match.group(1)) if total_match else 0,
        "p50_ms": lat.get(50),
        "p75_ms": lat.get(75),
        "p90_ms": lat.get(90),
        "p99_ms": lat.get(99),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket_errors.group(1).strip() if socket_errors else None,
        "cpu_busy_pct": busy,
        "command": shlex.join(pinned(cpu, command)),
    }


BURST_GAP_US = 50  # arrivals closer than this belong to one burst


def arrival_bursts(starts_us: Sequence[int]) -> dict[str, float]:
    """How bursty the load generator really was: sizes of runs of requests sent < 50 µs apart."""
    ordered = sorted(starts_us)
    sizes: list[int] = []
    current = 1
    for previous, now in itertools.pairwise(ordered):
        if now - previous < BURST_GAP_US:
            current += 1
        else:
            sizes.append(current)
            current = 1
    if ordered:
        sizes.append(current)
    sizes.sort()
    return {
        "mean": round(sum(sizes) / len(sizes), 1) if sizes else math.nan,
        "p99": percentile(sizes, 99),
        "max": float(sizes[-1]) if sizes else math.nan,
    }


def run_h2load_fixed(
    url: str,
    *,
    rate: float,
    clients: int,
    seconds: float,
    warmup: float,
    cpu: int | None,
    headers: Sequence[str],
    workdir: Path,
    tag: str,
    capacity: float | None = None,
) -> dict[str, Any]:
    """``h2load --h1`` paced at ``rate`` req/s in total; percentiles from its per-request log.

    ``--rps`` alone starts every client's pacing timer at the same instant, so the clients fire
    together: bursts of ~20–32 requests every few ms. The clients are therefore started 1 ms
    apart (``-r 1 --rate-period 1ms``), which spreads their phases (mean burst ~4 at 8,600/s).
    ``-r`` excludes ``-D``, so the run is sized by ``-n`` and the first ``warmup`` seconds of
    the per-request log are dropped. A system whose measured ``capacity`` is below the rate
    gets ``capacity × duration`` requests, so the run still lasts about ``warmup + seconds``;
    it is flagged as not keeping up.
    """
    log = workdir / f"h2load-{tag}.tsv"
    log.unlink(missing_ok=True)  # h2load appends
    per_second = min(rate, capacity) if capacity else rate
    total = max(clients, round(per_second * (warmup + seconds)))
    command = [
        H2LOAD,
        "--h1",
        "-t1",
        f"-c{clients}",
        "-m1",
        "-r1",
        "--rate-period=1ms",
        f"-n{total}",
        f"--rps={rate / clients:.3f}",
        f"--log-file={log}",
    ]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    before = cpu_times()
    out = subprocess.run(
        pinned(cpu, command),
        capture_output=True,
        text=True,
        check=True,
        timeout=3 * (seconds + warmup) + 30,
    ).stdout
    busy = cpu_busy(before, cpu_times())
    rows: list[tuple[int, str, float]] = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((int(parts[0]), parts[1], int(parts[2]) / 1000.0))
    first = min((r[0] for r in rows), default=0)
    measured = [r for r in rows if r[0] >= first + warmup * 1e6]
    window = (max(r[0] for r in measured) - min(r[0] for r in measured)) / 1e6 if measured else 0
    achieved = len(measured) / window if window > 0 else math.nan
    durations = sorted(r[2] for r in measured)
    ok = sum(1 for r in measured if r[1].startswith("2"))
    counts = re.search(r"requests: (\d+) total.*?(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    return {
        "target_rate": rate,
        "achieved_rate": achieved,
        "requests": len(measured),
        "ok_2xx": ok,
        "not_ok": len(measured) - ok,
        "failed": int(counts.group(3)) if counts else None,
        "errored": int(counts.group(4)) if counts else None,
        "p50_ms": percentile(durations, 50),
        "p90_ms": percentile(durations, 90),
        "p99_ms": percentile(durations, 99),
        "p99_9_ms": percentile(durations, 99.9),
        "max_ms": durations[-1] if durations else math.nan,
        "arrival_bursts": arrival_bursts([r[0] for r in measured]),
        "cpu_busy_pct": busy,
        "kept_up": bool(durations) and achieved >= 0.95 * rate,
        "command": shlex.join(pinned(cpu, command)),
    }


def run_h2load_count(
    url: str, *, requests: int, clients: int, cpu: int | None, body_file: Path
) -> dict[str, Any]:
    """Exactly ``requests`` POSTs (h2load waits for every answer) for the topic check."""
    command = [
        H2LOAD,
        "--h1",
        "-t1",
        f"-c{clients}",
        "-m1",
        f"-n{requests}",
        f"--data={body_file}",
        "-H",
        "content-type: application/json",
        url,
    ]
    out = subprocess.run(
        pinned(cpu, command), capture_output=True, text=True, check=True, timeout=120
    ).stdout
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    return {
        "requests": requests,
        "ok_2xx": int(status.group(1)) if status else 0,
        "non_2xx": sum(int(status.group(i)) for i in (2, 3, 4)) if status else None,
        "rps": float(finished.group(2)) if finished else math.nan,
        "command": shlex.join(pinned(cpu, command)),
    }


# -- CPU accounting -------------------------------------------------------------------------------


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat."""
    result: dict[str, tuple[int, int]] = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if re.match(r"cpu\d+ ", line):
                name, *values = line.split()
                numbers = [int(v) for v in values[:8]]
                idle = numbers[3] + numbers[4]
                result[name] = (sum(numbers) - idle, sum(numbers))
    except OSError:
        pass
    return result


def cpu_busy(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    busy: dict[str, float] = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (0, 0))
        if t1 > t0:
            busy[name] = round(100.0 * (b1 - b0) / (t1 - t0), 1)
    return busy


# -- profiling ------------------------------------------------------------------------------------


def _frame_key(frame: str) -> tuple[str, str]:
    """``"handle (sampan/http/server.py)"`` → (``handle``, ``sampan/http/server.py``)."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame, ""
    return match.group(1), match.group(2)


def parse_py_spy_raw(text: str, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks → self time by function and by file, inclusive time of sampan code."""
    self_fn: Counter[str] = Counter()
    self_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        leaf_fn, leaf_file = _frame_key(frames[-1])
        self_fn[f"{leaf_fn} ({leaf_file})"] += count
        self_file[leaf_file or "?"] += count
        seen: set[str] = set()
        for frame in frames:
            fn, path = _frame_key(frame)
            if "sampan" not in path or fn == "<module>" or path.endswith("cli.py"):
                continue
            key = f"{fn} ({path})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"what": name, "samples": n, "pct": round(100.0 * n / total, 1) if total else None}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "self_by_function": share(self_fn),
        "self_by_file": share(self_file),
        "inclusive_sampan": share(inclusive),
    }


def _perf_report(data: Path, sort: str, top: int) -> list[dict[str, Any]]:
    if PERF is None:
        return []
    done = subprocess.run(
        [PERF, "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "-g", "none"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows: list[dict[str, Any]] = []
    for line in done.stdout.splitlines():
        match = re.match(r"\s+([\d.]+)%\s+(.*\S)", line)
        if match and not line.lstrip().startswith("#"):
            rows.append({"pct": float(match.group(1)), "what": re.sub(r"\s+", " ", match.group(2))})
        if len(rows) >= top:
            break
    return rows


def profile_sampan(
    service: Service, url: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """py-spy (where the Python time goes) and, when available, perf (interpreter vs kernel vs
    C extensions) on the sampan+plugins process while wrk loads it as in the throughput runs."""
    out = workdir / f"py-spy-{service.name.replace('+', '-')}.txt"
    perf_data = workdir / "perf.data"
    seconds = args.profile_seconds
    rate = 200
    spy = subprocess.Popen(
        pinned(
            args.load_cpu,
            [
                PY_SPY,
                "record",
                "--pid",
                str(service.pid),
                "--duration",
                str(seconds),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nolineno",
                "--nonblocking",
                "-o",
                str(out),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    perf: subprocess.Popen[bytes] | None = None
    if PERF:
        perf = subprocess.Popen(
            pinned(
                args.load_cpu,
                [
                    PERF,
                    "record",
                    "-F",
                    "499",
                    "-p",
                    str(service.pid),
                    "-o",
                    str(perf_data),
                    "--",
                    "sleep",
                    str(seconds),
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(0.5)
    load = run_wrk(
        url,
        seconds=seconds + 1,
        connections=args.connections,
        cpu=args.load_cpu,
        headers=[f"apikey: {API_KEY}"],
    )
    try:
        _, err = spy.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if perf is not None:
        try:
            perf.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait()
    if spy.returncode != 0 or not out.exists():
        return {"error": (err or b"").decode(errors="replace")[-2000:]}
    parsed = parse_py_spy_raw(out.read_text())
    parsed["expected_samples"] = seconds * rate
    parsed["busy_pct_of_main_thread"] = round(100.0 * parsed["samples"] / (seconds * rate), 1)
    parsed["rps_while_profiled"] = load["rps"]
    parsed["cpu_busy_pct_while_profiled"] = load["cpu_busy_pct"]
    parsed["command"] = f"py-spy record --pid PID --duration {seconds} --rate {rate} " + (
        "--format raw --nolineno --nonblocking"
    )
    if perf is not None and perf_data.exists():
        # CPU of the proxy core per request, split by where it runs (the process is pinned
        # there and keeps it busy, so the core's busy share is the process's).
        core = f"cpu{args.proxy_cpu}" if args.proxy_cpu is not None else None
        busy = (load["cpu_busy_pct"].get(core, 100.0) if core else 100.0) / 100.0
        us_per_request = busy * 1e6 / load["rps"] if load["rps"] else math.nan
        split = _perf_report(perf_data, "dso", 8)
        for row in split:
            row["us_per_request"] = round(row["pct"] / 100.0 * us_per_request, 1)
        parsed["perf"] = {
            "command": f"perf record -F 499 -p PID -- sleep {seconds}",
            "us_per_request": round(us_per_request, 1),
            "by_dso": split,
            "top_symbols": _perf_report(perf_data, "dso,sym", 12),
        }
    return parsed


# -- the run --------------------------------------------------------------------------------------


def tool_versions() -> dict[str, str | None]:
    def first_line(command: list[str], pattern: str | None = None) -> str | None:
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = (done.stdout + done.stderr).strip()
        if pattern:
            match = re.search(pattern, text)
            return match.group(0) if match else None
        return text.splitlines()[0] if text else None

    return {
        "nginx": first_line([NGINX, "-v"], r"nginx/\S+"),
        "caddy": first_line([CADDY, "version"]),
        "wrk": first_line([WRK, "-v"], r"wrk \S+"),
        "h2load": first_line([H2LOAD, "--version"]),
        "py-spy": first_line([PY_SPY, "--version"]),
        "python": sys.version.split()[0],
    }


def source_state() -> dict[str, Any]:
    """The commit and the files of ``src/`` that differ from it: the numbers measure the tree
    as it was, which on a shared working copy may include other people's uncommitted work."""

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO), *command],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "src")
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_changes_not_committed": status.splitlines() if status else [],
    }


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(rounds, key=lambda r: r["rps"])
    return {
        "best": best,
        "median_rps": statistics.median(r["rps"] for r in rounds),
        "all_rps": [round(r["rps"], 1) for r in rounds],
    }


@dataclass
class Phases:
    throughput: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    sustainable: dict[str, dict[str, Any]] = field(default_factory=dict)
    topic: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None


@contextlib.contextmanager
def services(args: argparse.Namespace, root: Path) -> Iterator[dict[str, Service]]:
    started: dict[str, Service] = {}
    try:
        started["upstream"] = start_upstream(args.load_cpu, root)
        upstream = started["upstream"].port
        wanted = [s for s in ALL_SYSTEMS if s in args.only]
        for name in wanted:
            if name == "nginx":
                started[name] = start_nginx_proxy(upstream, args.proxy_cpu, root)
            elif name == "caddy":
                started[name] = start_caddy(upstream, args.proxy_cpu, root)
            else:
                started[name] = start_sampan(name, upstream, args.proxy_cpu, root)
        yield started
    finally:
        for service in reversed(list(started.values())):
            service.stop()


def load_headers(name: str) -> list[str]:
    # Every proxy gets the same request bytes (the key header too); only sampan+plugins checks it.
    return [f"apikey: {API_KEY}"] if name != "sampan-topic" else []


def run(args: argparse.Namespace, root: Path) -> tuple[Phases, dict[str, Any]]:
    phases = Phases()
    extra: dict[str, Any] = {"sanity": {}}
    lua = root / "post_order.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{ORDER_BODY.decode()}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    body_file = root / "order.json"
    body_file.write_bytes(ORDER_BODY)

    with services(args, root) as running:
        upstream = running["upstream"]
        extra["sampan_configs"] = {
            name: yaml.safe_load(s.config.read_text())
            for name, s in running.items()
            if name.startswith("sampan") and s.config is not None
        }
        for name, service in running.items():
            if name != "upstream":
                extra["sanity"][name] = sanity_check(service)
        topic_wrk_202 = 0
        topic_wrk_runs = 0

        # 1. throughput, round-robin over the systems
        rounds: dict[str, list[dict[str, Any]]] = {}
        for number in range(1, args.rounds + 1):
            for name, service in running.items():
                if name == "upstream":
                    continue
                script = lua if name == "sampan-topic" else None
                url = f"http://127.0.0.1:{service.port}" + (
                    "/orders" if name == "sampan-topic" else "/"
                )
                common_args: dict[str, Any] = {
                    "connections": args.connections,
                    "cpu": args.load_cpu,
                    "headers": load_headers(name),
                    "script": script,
                }
                warm = run_wrk(url, seconds=args.warmup, **common_args)
                result = run_wrk(url, seconds=args.duration, **common_args)
                if name == "sampan-topic":
                    for r in (warm, result):
                        topic_wrk_202 += r["requests"] - r["non_2xx"]
                        topic_wrk_runs += 1
                result["round"] = number
                rounds.setdefault(name, []).append(result)
                print(
                    f"  round {number} {name:15s} {fmt_rate(result['rps']):>10s}  "
                    f"p50 {fmt_ms(result['p50_ms']):>9s}  p99 {fmt_ms(result['p99_ms']):>9s}  "
                    f"non-2xx {result['non_2xx']}  cpu {result['cpu_busy_pct']}",
                    flush=True,
                )
        phases.throughput = {name: summarise_rounds(r) for name, r in rounds.items()}

        # 2. fixed rates, the upstream directly first (the baseline of "added p99"):
        #    A = half of nginx's best (the issue's rule); B = half of sampan+plugins' best (for
        #    information: the latency sampan adds at a load it can carry).
        def best_rps(name: str) -> float | None:
            entry = phases.throughput.get(name)
            return entry["best"]["rps"] if entry else None

        fixed_targets = [("direct", upstream)] + [
            (name, s) for name, s in running.items() if name in PROXIES
        ]
        reference = best_rps("nginx") or max(
            (t["best"]["rps"] for t in phases.throughput.values()), default=2000.0
        )
        rate = args.fixed_rate or math.floor(reference / 2)
        extra["fixed_rate"] = rate
        extra["fixed_rate_reference"] = (
            "--fixed-rate"
            if args.fixed_rate
            else "half of nginx's best"
            if best_rps("nginx")
            else "half of the fastest system's best (nginx not run)"
        )
        plugins_best = best_rps("sampan+plugins")
        rate_b = math.floor(plugins_best / 2) if plugins_best and args.sustainable_duration else 0
        extra["sustainable_rate"] = rate_b or None
        plan: list[tuple[str, int, float, int, dict[str, dict[str, Any]]]] = [
            ("A", rate, args.fixed_duration, args.fixed_rounds, phases.fixed)
        ]
        if rate_b and rate_b < rate * 0.9:
            plan.append(
                (
                    "B",
                    rate_b,
                    args.sustainable_duration,
                    args.sustainable_rounds,
                    phases.sustainable,
                )
            )
        else:
            extra["sustainable_rate"] = None
        # With several rounds, each system keeps its round with the lowest p99 (interference
        # from other processes only ever adds latency); every round's p99 is kept.
        for label, pace, seconds, repeat, into in plan:
            for number in range(1, repeat + 1):
                for name, service in fixed_targets:
                    f = run_h2load_fixed(
                        f"http://127.0.0.1:{service.port}/",
                        capacity=best_rps(name),
                        rate=pace,
                        clients=args.fixed_clients,
                        seconds=seconds,
                        warmup=args.fixed_warmup,
                        cpu=args.load_cpu,
                        headers=load_headers(name),
                        workdir=root,
                        tag=f"{label}{number}-{name.replace('+', '-')}",
                    )
                    previous = into.get(name)
                    history = [*(previous or {}).get("all_p99_ms", []), f["p99_ms"]]
                    if previous is None or f["p99_ms"] < previous["p99_ms"]:
                        into[name] = f
                    into[name]["all_p99_ms"] = history
                    into[name]["rounds"] = number
                    print(
                        f"  fixed {label}{number} {pace:,}/s {name:15s} achieved "
                        f"{f['achieved_rate']:,.0f}/s  p50 {fmt_ms(f['p50_ms']):>9s}  "
                        f"p99 {fmt_ms(f['p99_ms']):>9s}  non-2xx {f['not_ok']}  "
                        f"bursts {f['arrival_bursts']}",
                        flush=True,
                    )

        # 3. topic: an exact count check, then the durable count once the node has stopped
        topic = running.get("sampan-topic")
        if topic is not None:
            before = metric_count(topic, "topic", TOPIC)["count"]
            exact = run_h2load_count(
                f"http://127.0.0.1:{topic.port}/orders",
                requests=args.exact_requests,
                clients=args.connections,
                cpu=args.load_cpu,
                body_file=body_file,
            )
            after = metric_count(topic, "topic", TOPIC)["count"]
            exact["topic_published_delta"] = after - before
            exact["exact_match"] = after - before == exact["ok_2xx"] == args.exact_requests
            phases.topic["exact_check"] = exact
            route = metric_count(topic, "route", "orders-in")
            phases.topic["gateway_route_count"] = route.get("count")
            phases.topic["gateway_route_errors"] = route.get("errors")
            phases.topic["published_metric"] = after
            phases.topic["wrk_202_total"] = topic_wrk_202
            phases.topic["wrk_runs"] = topic_wrk_runs
            print(
                f"  topic check: {exact['ok_2xx']:,} 2xx of {args.exact_requests:,} POSTs, "
                f"topic grew by {after - before:,} → "
                f"{'OK' if exact['exact_match'] else 'MISMATCH'}",
                flush=True,
            )

        # 4. profile sampan+plugins when a sampan target fails (decided by the caller's rule)
        if args.profile != "never" and "sampan+plugins" in running:
            targets = evaluate(phases)
            failing = any(t["pass"] is False for t in targets.values())
            if args.profile == "always" or failing:
                print("  profiling sampan+plugins with py-spy ...", flush=True)
                phases.profile = profile_sampan(
                    running["sampan+plugins"],
                    f"http://127.0.0.1:{running['sampan+plugins'].port}/",
                    args,
                    root,
                )

        if topic is not None:
            topic.stop()
            listing = subprocess.run(
                [SAMPAN, "bus", "topics", "--config", str(topic.config), "--json"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            durable = None
            for line in listing.stdout.splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    entry = orjson.loads(line)
                    if entry.get("topic") == TOPIC:
                        durable = entry.get("messages")
            phases.topic["durable_messages"] = durable
            sent = (phases.topic.get("wrk_202_total") or 0) + (
                phases.topic.get("exact_check", {}).get("ok_2xx") or 0
            )
            sent += 1  # the sanity-check POST
            phases.topic["client_seen_202_total"] = sent
            phases.topic["durable_equals_gateway_202s"] = (
                durable is not None and durable == phases.topic.get("gateway_route_count")
            )
            phases.topic["durable_minus_client_202s"] = None if durable is None else durable - sent
            phases.topic["inflight_bound"] = args.connections * phases.topic.get("wrk_runs", 0)
    return phases, extra


def evaluate(phases: Phases) -> dict[str, dict[str, Any]]:
    def rps(name: str) -> float | None:
        entry = phases.throughput.get(name)
        return entry["best"]["rps"] if entry else None

    vs_nginx = ratio(rps("sampan+plugins"), rps("nginx"))
    vs_caddy = ratio(rps("sampan+plugins"), rps("caddy"))
    added_p99 = _added(phases.fixed, "sampan+plugins")
    kept_up = phases.fixed.get("sampan+plugins", {}).get("kept_up")
    return {
        "plugins_over_nginx": {
            "value": vs_nginx,
            "target": f">= {TARGET_VS_NGINX}",
            "pass": None if vs_nginx is None else vs_nginx >= TARGET_VS_NGINX,
        },
        "plugins_over_caddy": {
            "value": vs_caddy,
            "target": f">= {TARGET_VS_CADDY}",
            "pass": None if vs_caddy is None else vs_caddy >= TARGET_VS_CADDY,
        },
        "added_p99_ms_at_fixed_rate": {
            "value": added_p99,
            "target": f"<= {TARGET_ADDED_P99_MS} ms",
            "pass": None if added_p99 is None else added_p99 <= TARGET_ADDED_P99_MS,
            "system_kept_up_with_the_rate": kept_up,
        },
        "added_p99_ms_at_rate_b_information": {
            "value": _added(phases.sustainable, "sampan+plugins"),
            "target": "none (rate B = half of sampan+plugins' best; for information)",
            "pass": None,
        },
    }


# -- report ---------------------------------------------------------------------------------------


def _added(fixed: dict[str, dict[str, Any]], name: str) -> float | None:
    if name == "direct" or name not in fixed or "direct" not in fixed:
        return None
    return float(fixed[name]["p99_ms"] - fixed["direct"]["p99_ms"])


def _fixed_cell(entry: dict[str, Any] | None, key: str) -> str:
    if entry is None:
        return "—"
    cell = fmt_ms(entry[key])
    return cell if entry["kept_up"] else f"{cell} *"


def table_rows(phases: Phases, markdown: bool) -> tuple[list[str], list[list[str]]]:
    """One row per system. A ``*`` marks a fixed-rate cell whose system fell behind the rate
    (achieved < 95 %): h2load times a request from when it is sent, so the queue that builds
    up is not in that number."""
    headers = ["system", "requests/s", "p50", "p99", "rate A p50", "rate A p99", "added p99 A"]
    if phases.sustainable:
        headers += ["rate B p99", "added p99 B"]
    headers.append("errors")
    rows: list[list[str]] = []
    for name in ("direct", *ALL_SYSTEMS):
        t = phases.throughput.get(name, {}).get("best")
        f = phases.fixed.get(name)
        b = phases.sustainable.get(name)
        if t is None and f is None:
            continue
        errors = 0
        if t is not None:
            errors += t["non_2xx"] + (1 if t["socket_errors"] else 0)
        for entry in (f, b):
            if entry is not None:
                errors += entry["not_ok"]
        added_a, added_b = _added(phases.fixed, name), _added(phases.sustainable, name)
        row = [
            SYSTEM_LABELS[name] if markdown else name,
            fmt_rate(t["rps"]) if t else "—",
            fmt_ms(t["p50_ms"]) if t else "—",
            fmt_ms(t["p99_ms"]) if t else "—",
            _fixed_cell(f, "p50_ms"),
            _fixed_cell(f, "p99_ms"),
            f"{added_a:+.2f} ms" if added_a is not None else "—",
        ]
        if phases.sustainable:
            row += [
                _fixed_cell(b, "p99_ms"),
                f"{added_b:+.2f} ms" if added_b is not None else "—",
            ]
        row.append(str(errors))
        rows.append(row)
    return headers, rows


def report(
    phases: Phases,
    targets: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    extra: dict[str, Any],
) -> str:
    lines: list[str] = []
    pin = (
        f"proxy under test on core {args.proxy_cpu}; wrk, h2load and the upstream on core "
        f"{args.load_cpu}"
        if args.proxy_cpu is not None
        else "no CPU pinning"
    )
    lines.append(
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s --latency (after {args.warmup:g} s "
        f"warm-up), best of {args.rounds} round(s) by requests/s; {pin}"
    )
    rate_b = extra.get("sustainable_rate")
    lines.append(
        f"rate A = {extra.get('fixed_rate') or 0:,}/s ({extra.get('fixed_rate_reference')})"
        + (f", rate B = {rate_b:,}/s (half of sampan+plugins' best)" if rate_b else "")
        + f": h2load --h1 -c{args.fixed_clients} -r1 --rate-period=1ms "
        f"--rps=rate/{args.fixed_clients}; added p99 = system p99 - direct p99; "
        "* = the system fell behind the rate"
    )
    headers, rows = table_rows(phases, markdown=False)
    lines.append(text_table(headers, rows))
    lines.append("")
    for key, label in (
        ("plugins_over_nginx", "sampan+plugins / nginx throughput"),
        ("plugins_over_caddy", "sampan+plugins / caddy throughput"),
    ):
        t = targets[key]
        value = "—" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"{label} = {value} ({t['target']}): {verdict(t['pass'])}")
    t = targets["added_p99_ms_at_fixed_rate"]
    value = "—" if t["value"] is None else f"{t['value']:.2f} ms"
    lines.append(
        f"added p99 at the fixed rate (sampan+plugins) = {value} ({t['target']}): "
        f"{verdict(t['pass'])}"
        + ("" if t.get("system_kept_up_with_the_rate", True) else " (it could not keep up)")
    )
    b = targets["added_p99_ms_at_rate_b_information"]["value"]
    if b is not None:
        lines.append(f"for information: added p99 of sampan+plugins at rate B = {b:.2f} ms")
    info = []
    for name in ("sampan", "sampan+plugins"):
        for ref in ("nginx", "caddy"):
            r = ratio(
                phases.throughput.get(name, {}).get("best", {}).get("rps"),
                phases.throughput.get(ref, {}).get("best", {}).get("rps"),
            )
            if r is not None:
                info.append(f"{name}/{ref} {r:.2f}")
    if info:
        lines.append("for information: " + ", ".join(info))
    topic = phases.topic
    if topic:
        best = phases.throughput.get("sampan-topic", {}).get("best")
        if best:
            lines.append(
                f"topic target: {fmt_rate(best['rps'])} durable publishes answered 202, "
                f"p50 {fmt_ms(best['p50_ms'])}, p99 {fmt_ms(best['p99_ms'])}"
            )
        exact = topic.get("exact_check", {})
        lines.append(
            f"topic check: {exact.get('ok_2xx')} 2xx of {exact.get('requests')} POSTs, topic grew "
            f"by {exact.get('topic_published_delta')} "
            f"({'OK' if exact.get('exact_match') else 'MISMATCH'}); "
            f"durable messages {topic.get('durable_messages')} = gateway 202s "
            f"{topic.get('gateway_route_count')}: "
            f"{'OK' if topic.get('durable_equals_gateway_202s') else 'MISMATCH'}; "
            f"client-seen 202s {topic.get('client_seen_202_total')} "
            f"(difference {topic.get('durable_minus_client_202s')}: requests in flight when wrk "
            f"stopped, at most {topic.get('inflight_bound')})"
        )
    if phases.profile and "self_by_function" in phases.profile:
        p = phases.profile
        lines.append("")
        lines.append(
            f"py-spy, sampan+plugins under wrk ({p['samples']} samples, main thread busy "
            f"{p['busy_pct_of_main_thread']} % of {p['expected_samples']}); top self time:"
        )
        for entry in p["self_by_function"][:12]:
            lines.append(f"  {entry['pct']:5.1f} %  {entry['what']}")
        lines.append("top inclusive time in sampan code:")
        for entry in p["inclusive_sampan"][:12]:
            lines.append(f"  {entry['pct']:5.1f} %  {entry['what']}")
        if p.get("perf"):
            perf = p["perf"]
            lines.append(
                f"perf: {perf['us_per_request']} µs of the proxy core per request "
                f"at {p['rps_while_profiled']:,.0f}/s, by where it runs:"
            )
            for row in perf["by_dso"]:
                lines.append(
                    f"  {row['pct']:5.1f} %  {row['us_per_request']:5.1f} µs  {row['what']}"
                )
    elif phases.profile:
        lines.append(f"profile failed: {phases.profile.get('error')}")
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> str:
    return shlex.join([".venv/bin/python", "bench/gateway.py", *argv])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fixed-duration", type=float, default=10.0)
    parser.add_argument("--fixed-warmup", type=float, default=1.0)
    parser.add_argument("--fixed-clients", type=int, default=32)
    parser.add_argument("--fixed-rounds", type=int, default=1, help="rate-A rounds (best p99)")
    parser.add_argument(
        "--sustainable-duration",
        type=float,
        default=3.0,
        help="seconds of the rate-B runs (half of sampan+plugins' best; 0 = skip)",
    )
    parser.add_argument(
        "--sustainable-rounds", type=int, default=2, help="rate-B rounds (best p99)"
    )
    parser.add_argument(
        "--fixed-rate", type=int, default=0, help="req/s (default: half of nginx's best)"
    )
    parser.add_argument("--exact-requests", type=int, default=EXACT_CHECK_REQUESTS)
    parser.add_argument("--proxy-cpu", type=int, default=0, help="core of the proxy under test")
    parser.add_argument("--load-cpu", type=int, default=1, help="core of wrk/h2load + upstream")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--only",
        default=",".join((*PROXIES, "sampan-topic")),
        help=f"systems to run (comma-separated, of: {', '.join(ALL_SYSTEMS)})",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also run sampan with a fixed `respond` target (plain and with the plugins): "
        "the gateway's cost without the upstream hop",
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="py-spy the sampan+plugins process (auto: when a target fails)",
    )
    parser.add_argument("--profile-seconds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
        args.fixed_duration, args.fixed_warmup, args.sustainable_duration = 3.0, 0.5, 2.0
        args.sustainable_rounds = 1
        args.exact_requests, args.profile_seconds = 5000, 3
    if args.no_pin or (os.cpu_count() or 1) < 2:
        args.proxy_cpu = args.load_cpu = None
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.breakdown:
        args.only += [s for s in BREAKDOWN if s not in args.only]
    unknown = set(args.only) - set(ALL_SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for tool in (WRK, H2LOAD, NGINX, CADDY):
        if not Path(tool).exists():
            print(f"missing {tool}", file=sys.stderr)
            return 2
    load_before = os.getloadavg()
    print(f"load average before the run: {', '.join(f'{x:.2f}' for x in load_before)}")
    if load_before[0] > 0.5:
        print("warning: the machine is not quiet (1-minute load > 0.5); expect noisy numbers")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="sampan-bench-gateway-"))
    try:
        phases, extra = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    targets = evaluate(phases)
    print()
    print(report(phases, targets, args, extra))
    headers, rows = table_rows(phases, markdown=True)
    markdown = markdown_table(headers, rows)
    print()
    print(markdown)
    print(
        f"\n{elapsed:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        "(1 min; the load generator and the systems under test count too)"
    )
    if args.no_write:
        return 0
    path = write_results(
        "gateway",
        {
            "benchmark": "gateway",
            "when": utc_timestamp(),
            "command": command_line(argv),
            "seconds": round(elapsed, 1),
            "parameters": {
                "wrk": f"wrk -t1 -c{args.connections} -d{args.duration:g}s --latency",
                "warmup_seconds": args.warmup,
                "rounds": args.rounds,
                "round_choice": "best (highest requests/s) of the rounds; all rounds listed",
                "fixed_rate": extra.get("fixed_rate"),
                "fixed_rate_rule": f"rate A: {extra.get('fixed_rate_reference')}",
                "sustainable_rate": extra.get("sustainable_rate"),
                "sustainable_rate_rule": "rate B: half of sampan+plugins' best requests/s",
                "sustainable_seconds": args.sustainable_duration,
                "fixed_rounds": args.fixed_rounds,
                "sustainable_rounds": args.sustainable_rounds,
                "fixed_round_choice": "per system, the round with the lowest p99",
                "fixed_tool": (
                    f"h2load --h1 -t1 -c{args.fixed_clients} -m1 -r1 --rate-period=1ms "
                    f"-n<rate × {args.fixed_warmup + args.fixed_duration:g} s> "
                    f"--rps=<rate/{args.fixed_clients}>; the first {args.fixed_warmup:g} s of "
                    "the per-request log dropped"
                ),
                "pinning": (
                    {
                        "proxy_under_test": f"core {args.proxy_cpu}",
                        "load_generator_and_upstream": f"core {args.load_cpu}",
                    }
                    if args.proxy_cpu is not None
                    else None
                ),
                "upstream": f"nginx worker_processes 1, return 200 '{UPSTREAM_BODY}' "
                "(application/json), keep-alive",
                "request_headers": "apikey: <key> on every proxy request",
                "topic_body_bytes": len(ORDER_BODY),
                "rate_limit_per_second": RATE_LIMIT,
                "exact_check_requests": args.exact_requests,
            },
            "systems": {name: SYSTEM_LABELS[name] for name in ("direct", *ALL_SYSTEMS)},
            "configs": {
                "nginx_upstream": NGINX_UPSTREAM_SERVER.strip(),
                "nginx_proxy": NGINX_PROXY_SERVER.strip(),
                "caddyfile": CADDYFILE,
                "sampan": extra.get("sampan_configs"),
            },
            "source": source_state(),
            "versions": {
                **tool_versions(),
                "sampan": machine_info(["sampan"])["packages"]["sampan"],
            },
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "targets": targets,
            "throughput": phases.throughput,
            "fixed_rate": phases.fixed,
            "sustainable_rate": phases.sustainable,
            "topic": phases.topic,
            "sanity": extra.get("sanity"),
            "profile": phases.profile,
            "markdown_table": markdown,
            "machine": machine_info(["sampan", "uvloop", "httptools", "orjson"]),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
