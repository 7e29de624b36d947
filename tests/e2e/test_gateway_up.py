"""The gateway through ``sampan up``: real processes, real sockets, real signals."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import run_sampan  # type: ignore[import-not-found]

API_KEY = "pos-hanoi-01-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlowAwareUpstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        body = json.dumps(
            {
                "path": self.path,
                "xff": self.headers.get("x-forwarded-for"),
                "via": self.headers.get("via"),
                "connection": self.headers.get("connection"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowAwareUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


def gateway_config(tmp_path: Path, upstream_port: int, port: int, extra_routes: str = "") -> Path:
    config = tmp_path / "sampan.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            node:
              name: gw
              data_dir: data
            gateway:
              listen: {{port: {port}}}
              workers: 1
              plugins:
                - name: request-id
            consumers:
              - username: pos-terminal
                key_auth:
                  - key: "{API_KEY}"
            routes:
              - name: health
                match: {{path: /health, methods: [GET]}}
                target: {{respond: {{status: 200, json: {{status: ok}}}}}}
              - name: orders-in
                match: {{path: /orders, methods: [POST]}}
                target:
                  topic:
                    name: orders.created
                    key_from: {{json_field: customer_id}}
                plugins:
                  - name: key-auth
              - name: catalogue
                match: {{path_prefix: /api/catalogue}}
                strip_prefix: true
                target: {{service: {{endpoints: ["http://127.0.0.1:{upstream_port}"]}}}}
            """
        )
        + textwrap.indent(textwrap.dedent(extra_routes), "  ")
    )
    return config


def test_routes_targets_and_errors(tmp_path: Path, upstream: int, start_node: Any) -> None:
    port = free_port()
    config = gateway_config(tmp_path, upstream, port)
    node = start_node(config, "--port", str(port))
    node.wait_for(r"gateway listening")
    base = f"http://127.0.0.1:{port}"

    health = httpx.get(base + "/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert health.headers["x-request-id"]
    assert "x-sampan-proxy-latency" in health.headers

    proxied = httpx.get(base + "/api/catalogue/items/7", headers={"x-forwarded-for": "6.6.6.6"})
    assert proxied.status_code == 200
    seen = proxied.json()
    assert seen["path"] == "/items/7"
    assert seen["xff"] == "127.0.0.1"  # a client's own X-Forwarded-For is not believed
    assert "sampan" in seen["via"]

    missing = httpx.get(base + "/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = httpx.delete(base + "/health")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"

    denied = httpx.post(base + "/orders", json={"customer_id": "KH1"})
    assert denied.status_code == 401
    assert denied.json()["status"] == 401

    order = {"order_id": "DH1", "customer_id": "KH1", "total_vnd": 125000}
    headers = {"apikey": API_KEY, "idempotency-key": "order-DH1"}
    first = httpx.post(base + "/orders", json=order, headers=headers)
    assert first.status_code == 202, first.text
    retry = httpx.post(base + "/orders", json=order, headers=headers)
    assert retry.status_code == 202
    assert retry.json() == first.json()

    consumed = run_sampan(
        "bus",
        "consume",
        "orders.created",
        "-g",
        "check",
        "--json",
        "--wait",
        "0.5",
        "--config",
        str(config),
    )
    rows = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert len(rows) == 1
    assert rows[0]["value"] == order
    assert rows[0]["key"] == "KH1"
    assert rows[0]["headers"]["ce-id"] == first.json()["id"]

    admin = node.admin_url
    metrics = httpx.get(admin + "/metrics").text
    assert 'sampan_requests_total{kind="route",name="orders-in"} 3' in metrics

    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0


def test_path_tricks_cannot_reach_a_guarded_route(
    tmp_path: Path, upstream: int, start_node: Any
) -> None:
    port = free_port()
    guarded = """
    - name: admin
      match: {path_prefix: /admin}
      target: {respond: {status: 200, body: secret}}
      plugins: [{name: key-auth}]
    - name: open
      match: {path_prefix: /}
      target: {respond: {status: 200, body: open}}
    """
    config = gateway_config(tmp_path, upstream, port, guarded)
    node = start_node(config, "--port", str(port))
    node.wait_for(r"gateway listening")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for target in ("//admin", "/x/%2e%2e/admin", "/x/../admin", "/%61dmin", "/admin/./"):
            sock.sendall(f"GET {target} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            status = head.split(b" ", 2)[1]
            assert status == b"401", (target, head)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            rest = head.split(b"\r\n\r\n", 1)[1]
            while len(rest) < length:
                rest += sock.recv(65536)
    encoded = httpx.get(f"http://127.0.0.1:{port}/x%2F..%2Fadmin")
    assert encoded.status_code == 400
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0


def test_hot_reload_swaps_routes_and_refuses_broken_config(
    tmp_path: Path, upstream: int, start_node: Any
) -> None:
    port = free_port()
    config = gateway_config(tmp_path, upstream, port)
    node = start_node(config, "--port", str(port))
    node.wait_for(r"gateway listening")
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/new").status_code == 404

    original = config.read_text()
    config.write_text(
        original
        + textwrap.indent(
            "- name: new\n  match: {path: /new}\n  target: {respond: {status: 200, body: fresh}}\n",
            "  ",
        )
    )
    # Requests keep flowing while the reload happens; none may fail.
    failures: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                status = client.get(base + "/health").status_code
                if status != 200:
                    failures.append(status)

    worker = threading.Thread(target=hammer)
    worker.start()
    node.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.get(base + "/new").status_code != 200:
        assert time.monotonic() < deadline, node.output()
        time.sleep(0.05)
    stop.set()
    worker.join()
    assert failures == []
    assert httpx.get(base + "/new").text == "fresh"

    config.write_text(original.replace("workers: 1", "workers: 0"))
    refused = httpx.post(node.admin_url + "/api/reload")
    assert refused.status_code == 422
    assert any("gateway.workers" in error for error in refused.json()["errors"])
    assert httpx.get(base + "/new").status_code == 200  # old routes still served
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0


def test_sigterm_drains_in_flight_requests(tmp_path: Path, upstream: int, start_node: Any) -> None:
    port = free_port()
    config = gateway_config(tmp_path, upstream, port)
    node = start_node(config, "--port", str(port))
    node.wait_for(r"gateway listening")
    result: dict[str, Any] = {}

    def slow_call() -> None:
        result["response"] = httpx.get(f"http://127.0.0.1:{port}/api/catalogue/slow", timeout=10)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)
    node.process.send_signal(signal.SIGTERM)
    caller.join()
    assert result["response"].status_code == 200
    assert node.process.wait(timeout=20) == 0


def test_workers_share_the_port_and_crashed_workers_come_back(
    tmp_path: Path, upstream: int, start_node: Any
) -> None:
    port = free_port()
    config = gateway_config(tmp_path, upstream, port)
    node = start_node(config, "--port", str(port), "--workers", "2")
    node.wait_for(r"worker 1/2 up")
    deadline = time.monotonic() + 20
    while len(re.findall(r"gateway listening", node.output())) < 2:
        assert time.monotonic() < deadline, node.output()
        time.sleep(0.05)
    pids = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", node.output())}
    with httpx.Client() as client:
        statuses = {client.get(f"http://127.0.0.1:{port}/health").status_code for _ in range(50)}
    assert statuses == {200}
    assert len(pids) >= 2
    victim = max(pids)
    os.kill(victim, signal.SIGKILL)
    node.wait_for(r"exited with -9; restarting")
    deadline = time.monotonic() + 15
    while len(re.findall(r"Started server process", node.output())) < 3:
        assert time.monotonic() < deadline, node.output()
        time.sleep(0.1)
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=30) == 0


def test_routes_and_openapi_commands(tmp_path: Path, upstream: int) -> None:
    config = gateway_config(tmp_path, upstream, 8080)
    listing = run_sampan("routes", str(config))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["ROUTE", "HOSTS", "METHODS", "PATH"]
    orders = next(line for line in lines if line.startswith("orders-in"))
    assert "topic orders.created" in orders
    assert "request-id > key-auth" in orders
    spec_path = tmp_path / "openapi.json"
    written = run_sampan("docs", "openapi", str(config), "-o", str(spec_path))
    assert written.returncode == 0, written.stderr
    spec = json.loads(spec_path.read_text())
    assert spec["openapi"] == "3.1.0"
    assert "202" in spec["paths"]["/orders"]["post"]["responses"]
    assert spec["paths"]["/orders"]["post"]["security"] == [{"apiKey": []}]
    assert spec["x-sampan-unlisted-routes"] == [
        {"route": "catalogue", "match": "prefix /api/catalogue"}
    ]


def test_sigterm_during_a_restart_backoff_stops_everything(
    tmp_path: Path, upstream: int, start_node: Any
) -> None:
    port = free_port()
    config = gateway_config(tmp_path, upstream, port)
    node = start_node(config, "--port", str(port), "--workers", "2")
    node.wait_for(r"worker 1/2 up")
    deadline = time.monotonic() + 20
    while len(re.findall(r"Started server process \[(\d+)\]", node.output())) < 2:
        assert time.monotonic() < deadline, node.output()
        time.sleep(0.05)
    victim = max(int(p) for p in re.findall(r"Started server process \[(\d+)\]", node.output()))
    os.kill(victim, signal.SIGKILL)
    node.wait_for(r"exited with -9; restarting in")
    node.process.send_signal(signal.SIGTERM)  # lands while the supervisor waits to restart
    assert node.process.wait(timeout=20) == 0
    assert len(re.findall(r"Started server process", node.output())) == 2  # none restarted
