"""``sampan flow test`` and ``sampan docs asyncapi`` (registered in `sampan.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

flow_app = typer.Typer(help="Flows: run their declarative tests.")


@flow_app.callback()
def _flow_group() -> None:
    """Keeps `flow` a command group (typer folds a one-command group into its command)."""


@flow_app.command("test")
def flow_test(
    files: Annotated[list[Path], typer.Argument(help="Flow test files (YAML).", exists=True)],
) -> None:
    """Run declarative flow tests in memory; exit 1 if any case fails."""
    import asyncio

    from sampan.config_loader import ConfigError
    from sampan.flows.testing import run_test_file

    failed = 0
    total = 0
    for file in files:
        try:
            results = asyncio.run(run_test_file(file))
        except ConfigError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        for result in results:
            total += 1
            mark = "PASS" if result.passed else "FAIL"
            typer.echo(f"{mark} {file}: {result.name} ({result.seconds:.2f}s)")
            for problem in result.problems:
                typer.echo(f"    {problem}")
            failed += not result.passed
    typer.echo(f"{total - failed} passed, {failed} failed")
    if failed or total == 0:
        raise typer.Exit(1)


def docs_asyncapi(
    config: Annotated[Path, typer.Argument(help="The sampan config.")] = Path("sampan.yaml"),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (.json or .yaml).")
    ] = None,
) -> None:
    """Write an AsyncAPI 3.0 document of the node's topics, flows and payload schemas."""
    import orjson
    import yaml

    from sampan.cli_config import load_or_exit
    from sampan.flows.asyncapi import asyncapi_document

    loaded = load_or_exit(config)
    document = asyncapi_document(loaded, Path(loaded.node.data_dir))
    if output is not None and output.suffix == ".json":
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}")
