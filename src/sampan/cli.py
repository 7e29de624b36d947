"""The ``sampan`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from sampan import __version__
from sampan.cli_bus import bus_app
from sampan.cli_config import load_or_exit
from sampan.cli_flows import docs_asyncapi, flow_app
from sampan.cli_mesh import mesh_app

app = typer.Typer(
    help="sampan: API gateway, service mesh and event bus in one self-hosted node.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bus_app, name="bus")
app.add_typer(mesh_app, name="mesh")
app.add_typer(flow_app, name="flow")
log = logging.getLogger("sampan.cli")


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"sampan {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True)
    ] = False,
) -> None:
    """sampan: API gateway, service mesh and event bus in one self-hosted node."""


@app.command()
def validate(file: Path) -> None:
    """Check a config file; print every error with file:line:column and key path."""
    load_or_exit(file)
    typer.echo(f"{file}: ok")


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON Schema of sampan.yaml (point your editor's YAML plugin at it)."""
    from sampan.config import config_json_schema

    sys.stdout.write(orjson.dumps(config_json_schema(), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")


@app.command()
def up(
    file: Path,
    run_for: Annotated[
        float | None,
        typer.Option("--run-for", help="Stop by itself after this many seconds (demos, tests)."),
    ] = None,
    admin_port: Annotated[
        int | None, typer.Option("--admin-port", help="Override node.admin.port (0 = any free).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Override gateway.listen.port (0 = any free)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Gateway processes sharing the port (SO_REUSEPORT). Default: "
            "gateway.workers, else the CPU count when routes exist.",
        ),
    ] = None,
    worker: Annotated[str | None, typer.Option("--worker", hidden=True)] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Start a node from a config file; SIGTERM or SIGINT stops it, SIGHUP reloads routes."""
    import os

    import uvloop

    from sampan.node import Node

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook otherwise
    config = load_or_exit(file)
    if worker is not None:
        index, _, total = worker.partition("/")
        node = Node(
            config,
            admin_port=admin_port,
            gateway_port=port,
            config_path=file,
            worker=int(index),
            workers=int(total),
        )
        uvloop.run(node.run(run_for))
        return
    count = workers or config.gateway.workers or (os.cpu_count() or 1)
    if count > 1 and config.routes and config.gateway.enabled:
        if port == 0 or (port is None and config.gateway.listen.port == 0):
            typer.echo("error: --workers > 1 needs a fixed gateway port", err=True)
            raise typer.Exit(2)
        from sampan.workers import Supervisor

        extra = [f"--log-level={log_level}"]
        if admin_port is not None:
            extra.append(f"--admin-port={admin_port}")
        if port is not None:
            extra.append(f"--port={port}")
        raise typer.Exit(Supervisor(file, count, extra, run_for).run())
    node = Node(config, admin_port=admin_port, gateway_port=port, config_path=file)
    uvloop.run(node.run(run_for))


@app.command()
def routes(file: Path) -> None:
    """Print the effective route table: match, target and plugin chain of every route."""
    from sampan.gateway.route_listing import describe_routes

    config = load_or_exit(file)
    typer.echo(describe_routes(config))


@app.command()
def sidecar(
    service: Annotated[str, typer.Option("--service", help="The service this sidecar fronts.")],
    app_address: Annotated[
        str, typer.Option("--app", help="host:port of the app, e.g. 127.0.0.1:8000.")
    ],
    config: Annotated[
        Path, typer.Option("--config", "-c", help="sampan.yaml with mesh: and services:.")
    ],
    inbound: Annotated[
        str, typer.Option("--inbound", help="mTLS listener for callers (host:port).")
    ] = "0.0.0.0:15443",
    outbound: Annotated[
        str, typer.Option("--outbound", help="Local listener for the app's calls ('' = none).")
    ] = "127.0.0.1:15001",
    admin_port: Annotated[int, typer.Option("--admin-port", help="Metrics port (0 = any).")] = (
        15090
    ),
    run_for: Annotated[float | None, typer.Option("--run-for", hidden=True)] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Put the mesh in front of an existing service: inbound mTLS + authorisation + metrics,
    and a local outbound listener with balancing, retries, deadlines and mTLS."""
    import asyncio
    import contextlib
    import signal

    import uvloop

    from sampan.admin.runner import AdminServer
    from sampan.admin.server import create_admin_app
    from sampan.mesh.sidecar import Sidecar
    from sampan.observe.metrics import Metrics

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    loaded = load_or_exit(config)

    def address(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            typer.echo(f"error: {text!r}: expected host:port", err=True)
            raise typer.Exit(2)
        return host.strip("[]"), int(port)

    async def main() -> None:
        metrics = Metrics()
        try:
            car = Sidecar(
                loaded,
                service=service,
                app_url=f"http://{app_address}",
                inbound=address(inbound),
                outbound=address(outbound) if outbound else None,
                metrics=metrics,
            )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        admin = AdminServer(create_admin_app(metrics), host="127.0.0.1", port=admin_port)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await car.start()
        await admin.start()
        log.info("sidecar admin on http://127.0.0.1:%d", admin.port)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(run_for):
                await stopping.wait()
        await admin.stop()
        await car.stop()

    uvloop.run(main())


@app.command()
def services(
    admin: Annotated[
        str, typer.Option("--admin", help="Admin URL of a running node.")
    ] = "http://127.0.0.1:9090",
    json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Print each service's endpoints: health, EWMA latency, breaker state, ejections."""
    import httpx

    try:
        answer = httpx.get(admin.rstrip("/") + "/api/services", timeout=5)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {admin}: {exc}", err=True)
        raise typer.Exit(1) from None
    if answer.status_code != 200:
        typer.echo(f"error: {admin} answered {answer.status_code}: {answer.text}", err=True)
        raise typer.Exit(1)
    data = answer.json()
    if json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from sampan.mesh.service_listing import describe_services

    typer.echo(describe_services(data))


docs_app = typer.Typer(help="Generate documents from a config.")
app.add_typer(docs_app, name="docs")
docs_app.command("asyncapi")(docs_asyncapi)


@docs_app.command("openapi")
def docs_openapi(
    file: Path,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write an OpenAPI 3.1 document of the gateway's routes."""
    from sampan.gateway.openapi import openapi_document

    config = load_or_exit(file)
    text = orjson.dumps(openapi_document(config), option=orjson.OPT_INDENT_2).decode() + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
