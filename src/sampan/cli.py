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

app = typer.Typer(
    help="sampan: API gateway, service mesh and event bus in one self-hosted node.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bus_app, name="bus")


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
    from sampan.config import ConfigError, load_config

    try:
        load_config(file)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
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
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Start a node from a config file; SIGTERM or SIGINT stops it cleanly."""
    import uvloop

    from sampan.config import ConfigError, load_config
    from sampan.node import Node

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(file)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    node = Node(config, admin_port=admin_port)
    uvloop.run(node.run(run_for))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
