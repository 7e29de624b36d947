"""The mesh as a user runs it: `sampan up` with named services, `sampan services`, the
sidecar with real mTLS, and the certificate commands."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import ssl
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import run_sampan  # type: ignore[import-not-found]

from sampan.mesh.config import IdentityConfig
from sampan.mesh.identity.tls import client_context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_routes_through_named_services(
    tmp_path: Path, echo: http.server.ThreadingHTTPServer, start_node: Any
) -> None:
    port = free_port()
    upstream = f"http://127.0.0.1:{echo.server_address[1]}"
    config = tmp_path / "sampan.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            node: {{name: mesh-e2e, data_dir: data}}
            gateway: {{listen: {{port: {port}}}, workers: 1}}
            services:
              - name: payments
                endpoints: [{{url: "{upstream}"}}, {{url: "http://127.0.0.1:1"}}]
                balancer: {{type: round-robin}}
                retry: {{attempts: 3}}
                timeouts: {{total: 5s}}
            routes:
              - name: pay
                match: {{path_prefix: /pay}}
                target: {{service: {{service: payments}}}}
              - name: chaos
                match: {{path: /chaos}}
                target: {{respond: {{status: 200}}}}
                fault: {{abort: {{status: 503, percent: 100}}}}
            """
        )
    )
    node = start_node(config, "--port", str(port))
    node.wait_for("gateway listening")
    base = f"http://127.0.0.1:{port}"
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for _ in range(4):  # one endpoint refuses connections: every call still succeeds
        answer = httpx.get(base + "/pay/7", headers={"traceparent": trace})
        assert answer.status_code == 200, answer.text
    seen = {k.lower(): v for k, v in answer.json()["headers"].items()}
    assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert seen["traceparent"] != trace  # a new span for this hop
    assert 0 < int(seen["x-sampan-deadline-ms"]) <= 5000

    chaos = httpx.get(base + "/chaos")
    assert chaos.status_code == 503
    assert chaos.headers["content-type"] == "application/problem+json"

    listing = run_sampan("services", "--admin", node.admin_url)
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if line.startswith("payments")]
    assert len(rows) == 2
    assert any(upstream in row and " up " in row for row in rows), listing.stdout
    assert any("http://127.0.0.1:1" in row and "connect" in row for row in rows), listing.stdout

    echo.shutdown()
    echo.server_close()
    down = httpx.get(base + "/pay/8")
    assert down.status_code in (502, 503)
    problem = down.json()
    assert problem["service"] == "payments"
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0


def make_identity(ca_dir: Path, service: str, out: Path) -> IdentityConfig:
    issued = run_sampan(
        "mesh", "cert", "issue", "--service", service, "--ca-dir", str(ca_dir), "--out", str(out)
    )
    assert issued.returncode == 0, issued.stderr
    certs = {p.name: p for p in out.iterdir()}
    cert = next(p for n, p in certs.items() if n.endswith(".crt") or n.endswith("chain.pem"))
    key = next(p for n, p in certs.items() if "key" in n)
    return IdentityConfig(service=service, cert=str(cert), key=str(key), ca=str(ca_dir / "ca.crt"))


def test_sidecar_terminates_mtls_and_authorises_by_spiffe_id(
    tmp_path: Path, echo: http.server.ThreadingHTTPServer, start_sampan: Any
) -> None:
    ca = tmp_path / "ca"
    other_ca = tmp_path / "other-ca"
    for directory, domain in ((ca, "shop.vn"), (other_ca, "shop.vn")):
        made = run_sampan("mesh", "ca", "init", "--trust-domain", domain, "--dir", str(directory))
        assert made.returncode == 0, made.stderr
    sidecar_id = make_identity(ca, "payments", tmp_path / "payments")
    orders = make_identity(ca, "orders", tmp_path / "orders")
    reports = make_identity(ca, "reports", tmp_path / "reports")
    intruder = make_identity(other_ca, "orders", tmp_path / "intruder")

    inbound = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            mesh:
              trust_domain: shop.vn
              identity: {{service: payments, cert: "{sidecar_id.cert}", key: "{sidecar_id.key}",
                          ca: "{sidecar_id.ca}"}}
              authorization: ["svc/orders -> svc/payments"]
            """
        )
    )
    process = start_sampan(
        "sidecar",
        "--service",
        "payments",
        "--app",
        f"127.0.0.1:{echo.server_address[1]}",
        "--config",
        str(config),
        "--inbound",
        f"127.0.0.1:{inbound}",
        "--outbound",
        "",
        "--admin-port",
        "0",
    )
    process.wait_for("sidecar for payments")
    url = f"https://127.0.0.1:{inbound}/charge"

    def get(identity: IdentityConfig) -> httpx.Response:
        with httpx.Client(verify=client_context(identity)) as client:
            return client.get(url)

    allowed = get(orders)
    assert allowed.status_code == 200
    assert allowed.json()["path"] == "/charge"
    denied = get(reports)
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    with pytest.raises((httpx.ConnectError, httpx.ReadError, ssl.SSLError)):
        get(intruder)  # a certificate from another CA is refused in the handshake
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"http://127.0.0.1:{inbound}/charge")  # plain HTTP on the mTLS port
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=20) == 0


def test_gateway_terminates_mtls_and_authorises_callers(tmp_path: Path, start_node: Any) -> None:
    ca = tmp_path / "ca"
    assert (
        run_sampan("mesh", "ca", "init", "--trust-domain", "shop.vn", "--dir", str(ca)).returncode
        == 0
    )
    gateway_id = make_identity(ca, "edge", tmp_path / "edge")
    orders = make_identity(ca, "orders", tmp_path / "orders")
    reports = make_identity(ca, "reports", tmp_path / "reports")
    port = free_port()
    config = tmp_path / "sampan.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            node: {{name: edge, data_dir: data}}
            gateway: {{listen: {{port: {port}, mtls: true}}, workers: 1}}
            mesh:
              trust_domain: shop.vn
              identity: {{service: edge, cert: "{gateway_id.cert}", key: "{gateway_id.key}",
                          ca: "{gateway_id.ca}"}}
              authorization: ["svc/orders -> svc/edge"]
            routes:
              - name: hello
                match: {{path: /hello}}
                target: {{respond: {{status: 200, body: "xin chào"}}}}
            """
        )
    )
    node = start_node(config, "--port", str(port))
    node.wait_for("gateway listening")
    url = f"https://127.0.0.1:{port}/hello"
    with httpx.Client(verify=client_context(orders)) as client:
        allowed = client.get(url)
    assert allowed.status_code == 200
    assert allowed.text == "xin chào"
    with httpx.Client(verify=client_context(reports)) as client:
        denied = client.get(url)
    assert denied.status_code == 403
    metrics = httpx.get(node.admin_url + "/metrics").text
    assert 'sampan_mesh_authz_denied_total{service="edge"} 1' in metrics
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0
