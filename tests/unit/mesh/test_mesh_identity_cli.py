"""``sampan mesh ca init`` and ``sampan mesh cert issue``."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from sampan.cli_mesh import mesh_app

runner = CliRunner()


def test_ca_init_then_cert_issue(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    result = runner.invoke(
        mesh_app, ["ca", "init", "--trust-domain", "shop.vn", "--dir", str(ca_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "trust domain: shop.vn" in result.output
    assert str(ca_dir / "ca.crt") in result.output
    assert "BEGIN" not in result.output  # no key material printed
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600

    out = tmp_path / "certs"
    result = runner.invoke(
        mesh_app,
        [
            "cert",
            "issue",
            "--service",
            "orders",
            "--ca-dir",
            str(ca_dir),
            "--out",
            str(out),
            "--ttl",
            "2h",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "spiffe id:    spiffe://shop.vn/svc/orders" in result.output
    assert str(out / "orders.crt") in result.output and str(out / "orders.key") in result.output
    assert "expires:" in result.output and "BEGIN" not in result.output
    leaf = x509.load_pem_x509_certificates((out / "orders.crt").read_bytes())[0]
    left = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=2) - dt.timedelta(seconds=30) < left <= dt.timedelta(hours=2)
    assert f"{leaf.serial_number:x}" in result.output


def test_ca_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    args = ["ca", "init", "--trust-domain", "shop.vn", "--dir", str(tmp_path)]
    assert runner.invoke(mesh_app, args).exit_code == 0
    before = (tmp_path / "ca.key").read_bytes()
    again = runner.invoke(mesh_app, args)
    assert again.exit_code == 1
    assert "exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "ca.key").read_bytes() == before
    forced = runner.invoke(mesh_app, [*args, "--force"])
    assert forced.exit_code == 0
    assert (tmp_path / "ca.key").read_bytes() != before


def test_errors_are_precise(tmp_path: Path) -> None:
    bad_domain = runner.invoke(
        mesh_app, ["ca", "init", "--trust-domain", "Shop VN", "--dir", str(tmp_path / "x")]
    )
    assert bad_domain.exit_code == 2 and "trust domain" in bad_domain.stderr
    no_ca = runner.invoke(
        mesh_app,
        ["cert", "issue", "--service", "a", "--ca-dir", str(tmp_path), "--out", str(tmp_path)],
    )
    assert no_ca.exit_code == 1 and "sampan mesh ca init" in no_ca.stderr
    runner.invoke(mesh_app, ["ca", "init", "--trust-domain", "td", "--dir", str(tmp_path / "ca")])
    base = ["cert", "issue", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o")]
    bad_ttl = runner.invoke(mesh_app, [*base, "--service", "a", "--ttl", "soon"])
    assert bad_ttl.exit_code == 2 and "--ttl" in bad_ttl.stderr
    zero_ttl = runner.invoke(mesh_app, [*base, "--service", "a", "--ttl", "0s"])
    assert zero_ttl.exit_code == 2 and "ttl" in zero_ttl.stderr
    bad_service = runner.invoke(mesh_app, [*base, "--service", "a/b"])
    assert bad_service.exit_code == 2 and "service name" in bad_service.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_in_a_real_process(tmp_path: Path) -> None:
    """The sub-app as a separate process (the way `sampan mesh ...` runs once registered)."""
    code = "from sampan.cli_mesh import mesh_app; mesh_app()"
    init = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "ca",
            "init",
            "--trust-domain",
            "td",
            "--dir",
            str(tmp_path / "ca"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    issue = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "cert",
            "issue",
            "--service",
            "payments",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert issue.returncode == 0, issue.stderr
    assert "spiffe://td/svc/payments" in issue.stdout
    assert (tmp_path / "out" / "payments.key").exists()


def test_lifetime_cut_at_the_ca_expiry_is_reported(tmp_path: Path) -> None:
    ca_dir = str(tmp_path / "ca")
    init = ["ca", "init", "--trust-domain", "td", "--dir", ca_dir, "--validity-days", "1"]
    assert runner.invoke(mesh_app, init).exit_code == 0
    issue = ["cert", "issue", "--service", "a", "--ca-dir", ca_dir, "--out", str(tmp_path / "o")]
    result = runner.invoke(mesh_app, [*issue, "--ttl", "7d"])
    assert result.exit_code == 0
    assert "cut short at the CA's expiry" in result.stderr
