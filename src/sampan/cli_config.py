"""Loading a config for a command: every problem printed with its location, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sampan.config import SampanConfig


def load_or_exit(file: Path) -> SampanConfig:
    from sampan.config import ConfigError, load_config

    try:
        return load_config(file)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
