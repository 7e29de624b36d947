"""``sampan mesh ...``: the mesh's identity — create the trust domain's CA, issue certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

mesh_app = typer.Typer(help="Service mesh identity: the trust-domain CA and service certificates.")
ca_app = typer.Typer(help="The trust domain's certificate authority.")
cert_app = typer.Typer(help="Service certificates (short-lived, SPIFFE IDs).")
mesh_app.add_typer(ca_app, name="ca")
mesh_app.add_typer(cert_app, name="cert")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@ca_app.command("init")
def ca_init(
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="SPIFFE trust domain, e.g. sampan.local.")
    ],
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory for ca.crt and ca.key (created, 0700).")
    ],
    validity_days: Annotated[
        int, typer.Option("--validity-days", min=1, help="Lifetime of the CA certificate.")
    ] = 3650,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing CA (its certificates stop working)."),
    ] = False,
) -> None:
    """Create a trust domain's CA: ECDSA P-256, name-constrained to spiffe://TRUST_DOMAIN."""
    from sampan.mesh.identity.ca import init_ca

    try:
        files = init_ca(directory, trust_domain, validity_days=validity_days, force=force)
    except FileExistsError as exc:
        raise _fail(str(exc), 1) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write the CA: {exc}", 1) from None
    typer.echo(f"trust domain: {files.trust_domain}")
    typer.echo(f"certificate:  {files.cert}  (the trust bundle: mesh.identity.ca)")
    typer.echo(f"private key:  {files.key}  (mode 0600; keep it secret)")
    typer.echo(f"expires:      {files.not_after.isoformat(timespec='seconds')}")


@cert_app.command("issue")
def cert_issue(
    service: Annotated[str, typer.Option("--service", help="Service name (svc/NAME).")],
    ca_dir: Annotated[
        Path, typer.Option("--ca-dir", help="Directory made by 'sampan mesh ca init'.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Directory for NAME.crt (chain) and NAME.key.")
    ],
    ttl: Annotated[
        str, typer.Option("--ttl", help="Lifetime: '24h', '30m', '7d' or seconds.")
    ] = "24h",
) -> None:
    """Issue a short-lived certificate with the SPIFFE ID spiffe://TD/svc/NAME."""
    from sampan.mesh.identity.ca import load_ca
    from sampan.mesh.identity.certs import issue_certificate
    from sampan.units import parse_duration

    try:
        seconds = parse_duration(ttl)
    except ValueError:
        raise _fail(f"--ttl {ttl!r}: give seconds or a duration like '24h', '30m', '7d'") from None
    try:
        ca = load_ca(ca_dir)
    except FileNotFoundError as exc:
        raise _fail(
            f"no CA in {ca_dir} ({exc.filename} missing); run 'sampan mesh ca init'", 1
        ) from None
    except ValueError as exc:
        raise _fail(str(exc), 1) from None
    try:
        issued = issue_certificate(ca, service, ttl=seconds, out_dir=out)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write the certificate: {exc}", 1) from None
    if issued.not_after == ca.certificate.not_valid_after_utc:
        typer.echo("warning: the lifetime was cut short at the CA's expiry", err=True)
    typer.echo(f"spiffe id:    {issued.spiffe_id}")
    typer.echo(f"certificate:  {issued.cert_path}  (chain: leaf + CA; mesh.identity.cert)")
    typer.echo(f"private key:  {issued.key_path}  (mode 0600; mesh.identity.key)")
    typer.echo(f"trust bundle: {ca.cert_path}  (mesh.identity.ca)")
    typer.echo(f"serial:       {issued.serial:x}")
    typer.echo(f"expires:      {issued.not_after.isoformat(timespec='seconds')}")
