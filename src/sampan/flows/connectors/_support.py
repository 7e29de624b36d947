"""Pieces the connectors share: retry pacing, SQL identifiers, paths from config."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator

log: Final = logging.getLogger("sampan.flows.connectors")

_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def _check_identifier(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER_RE.fullmatch(p) for p in parts):
        raise ValueError(
            f"{value!r} is not a SQL identifier: use letters, digits, '_' or '$' (not first), "
            "at most 63 characters, optionally qualified by a schema as 'schema.name'"
        )
    return value


SqlName = Annotated[str, AfterValidator(_check_identifier)]
"""A table (optionally ``schema.table``) or column name, checked so it can be quoted safely."""


def _check_column(value: str) -> str:
    if "." in value:
        raise ValueError(f"{value!r}: a column name cannot be qualified")
    return _check_identifier(value)


SqlColumn = Annotated[str, AfterValidator(_check_column)]


def quote_name(name: str) -> str:
    """``schema.table`` → ``"schema"."table"``. Names are validated before they get here, so
    quoting only keeps their case; the doubling of quotes is belt and braces."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def resolve(base_dir: Path, path: str | Path) -> Path:
    """A config path, relative to the config file's directory unless absolute."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


class Backoff:
    """Exponential pacing for reconnects and failed emits: 0.5 s doubling to ``maximum``;
    ``reset`` after a success. Not shared: each loop owns one."""

    __slots__ = ("_current", "_initial", "_maximum")

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self._initial = initial
        self._maximum = maximum
        self._current = initial

    def reset(self) -> None:
        self._current = self._initial

    def next_delay(self) -> float:
        delay = self._current
        self._current = min(self._current * 2, self._maximum)
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next delay, returning early when ``stop`` is set."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
        else:
            await wait_or_stop(stop, delay)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def cancel_task(task: asyncio.Task[None] | None) -> None:
    """Cancel and reap a background task, logging how it ended if it had failed."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    await asyncio.wait([task])  # a cancellation of the caller still propagates
    if not task.cancelled() and task.exception() is not None:
        log.error("connector task failed", exc_info=task.exception())
