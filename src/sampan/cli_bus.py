"""``sampan bus ...``: operate any bus by URL (topics, publish, consume, lag, replay, DLQ)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from sampan.bus.base import Bus, BusError, Delivery
from sampan.bus.factory import open_bus
from sampan.cli_config import load_or_exit

T = TypeVar("T")

DEFAULT_URL = "sqlite:///data/bus.db"

bus_app = typer.Typer(help="Operate a bus: topics, publish, consume, lag, replay, dead letters.")
dlq_app = typer.Typer(help="Dead-letter topics: list and re-drive.")
bus_app.add_typer(dlq_app, name="dlq")

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        "-u",
        help="Bus URL (sqlite:///path.db, memory://). Default: $SAMPAN_BUS_URL, the bus of "
        "--config, or sqlite:///data/bus.db.",
    ),
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Take the bus URL from this sampan.yaml.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON lines instead of text.")]


def resolve_url(url: str | None, config: Path | None) -> str:
    if url:
        return url
    if config is not None:
        loaded = load_or_exit(config)
        return loaded.bus.resolved_url(Path(loaded.node.data_dir))
    return os.environ.get("SAMPAN_BUS_URL", DEFAULT_URL)


def run_with_bus(url: str, action: Callable[[Bus], Awaitable[T]]) -> T:
    async def main() -> T:
        bus = open_bus(url)
        await bus.start()
        try:
            return await action(bus)
        finally:
            await bus.close()

    try:
        return asyncio.run(main())
    except BusError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def emit(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
        return
    if not rows:
        typer.echo("(none)")
        return
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        typer.echo(
            "  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
        )


def show_value(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "replace")


@bus_app.command("topics")
def topics_command(
    url: UrlOption = None, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """List topics with their size, offsets, retention and groups."""

    async def action(bus: Bus) -> list[dict[str, Any]]:
        return [
            {
                "topic": t.name,
                "messages": t.messages,
                "bytes": t.bytes,
                "first_offset": t.first_offset,
                "next_offset": t.next_offset,
                "max_age_s": t.retention.max_age_seconds,
                "max_bytes": t.retention.max_bytes,
                "groups": ",".join(t.groups),
            }
            for t in await bus.topics()
        ]

    rows = run_with_bus(resolve_url(url, config), action)
    emit(rows, json, ["topic", "messages", "bytes", "first_offset", "next_offset", "groups"])


@bus_app.command("publish")
def publish_command(
    topic: str,
    data: Annotated[
        str | None, typer.Argument(help="Message body; omitted: one message per stdin line.")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Partition key.")] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="name=value, repeatable.")
    ] = None,
    delay: Annotated[
        float | None, typer.Option("--delay", help="Deliver after this many seconds.")
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Publish messages; prints each offset once the message is durable."""
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            typer.echo(f"error: --header {item!r}: expected name=value", err=True)
            raise typer.Exit(2)
        headers[name] = value
    bodies = (
        [data] if data is not None else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    )
    deliver_at = None if delay is None else dt.datetime.now(dt.UTC).timestamp() + delay

    async def action(bus: Bus) -> list[int]:
        from sampan.bus.base import OutgoingMessage

        batch = [OutgoingMessage(b.encode(), key, headers or None, deliver_at) for b in bodies]
        return await bus.publish_batch(topic, batch)

    for offset in run_with_bus(resolve_url(url, config), action):
        typer.echo(f"{topic}@{offset}")


@bus_app.command("consume")
def consume_command(
    topic: str,
    group: Annotated[str, typer.Option("--group", "-g", help="Consumer group.")] = "sampan-cli",
    max_messages: Annotated[int, typer.Option("--max", "-n", help="Stop after N.")] = 10,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for messages.")] = 2.0,
    start: Annotated[str, typer.Option("--start", help="earliest|latest for a new group")] = (
        "earliest"
    ),
    no_ack: Annotated[bool, typer.Option("--no-ack", help="Peek: release instead of ack.")] = False,
    url: UrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Consume messages as a member of a group, print them and ack them."""
    if start not in ("earliest", "latest"):
        typer.echo("error: --start must be earliest or latest", err=True)
        raise typer.Exit(2)

    async def action(bus: Bus) -> list[Delivery]:
        await bus.create_group(topic, group, start=start)  # type: ignore[arg-type]
        taken: list[Delivery] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(taken) < max_messages and loop.time() < deadline:
            batch = await bus.fetch(
                topic,
                group,
                consumer="sampan-cli",
                max_messages=max_messages - len(taken),
                lease_seconds=30.0,
                wait_seconds=max(0.0, deadline - loop.time()),
            )
            if not no_ack:
                await bus.ack(batch)
            taken.extend(batch)
        if no_ack:  # held until now so that a peek never sees the same message twice
            await bus.release(taken)
        return taken

    rows = [
        {
            "offset": d.offset,
            "key": d.key,
            "attempt": d.attempt,
            "published_at": dt.datetime.fromtimestamp(d.published_at, dt.UTC).isoformat(),
            "headers": dict(d.headers),
            "value": show_value(d.value),
        }
        for d in run_with_bus(resolve_url(url, config), action)
    ]
    emit(rows, json, ["offset", "key", "attempt", "value"])


@bus_app.command("lag")
def lag_command(
    topic: str,
    group: Annotated[str | None, typer.Option("--group", "-g")] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Show each group's lag (messages not yet acked) and position."""

    async def action(bus: Bus) -> list[dict[str, Any]]:
        return [
            {
                "topic": g.topic,
                "group": g.group,
                "lag": g.lag,
                "in_flight": g.in_flight,
                "next_offset": g.next_offset,
            }
            for g in await bus.groups(topic)
            if group is None or g.group == group
        ]

    rows = run_with_bus(resolve_url(url, config), action)
    emit(rows, json, ["topic", "group", "lag", "in_flight", "next_offset"])


def parse_since(text: str) -> float:
    """An ISO 8601 time (naive = UTC) or a unix timestamp."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither ISO 8601 nor a unix timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@bus_app.command("replay")
def replay_command(
    topic: str,
    group: Annotated[str, typer.Option("--group", "-g", help="The group to move.")],
    offset: Annotated[int | None, typer.Option("--offset", help="Replay from this offset.")] = (
        None
    ),
    since: Annotated[
        str | None, typer.Option("--since", help="Replay from this time (ISO 8601 or unix).")
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Move a group back to an offset or a time; its messages from there are redelivered."""
    if (offset is None) == (since is None):
        typer.echo("error: give exactly one of --offset or --since", err=True)
        raise typer.Exit(2)
    timestamp = None if since is None else parse_since(since)

    async def action(bus: Bus) -> int:
        return await bus.replay(topic, group, offset=offset, timestamp=timestamp)

    position = run_with_bus(resolve_url(url, config), action)
    typer.echo(f"{topic}/{group} will read from offset {position}")


@dlq_app.command("list")
def dlq_list_command(
    topic: str,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 100,
    url: UrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List dead letters of a topic with the error that put them there."""

    async def action(bus: Bus) -> list[dict[str, Any]]:
        return [
            {
                "dlq_offset": d.dlq_offset,
                "group": d.group,
                "offset": d.original_offset,
                "key": d.key,
                "attempts": d.attempts,
                "failed_at": dt.datetime.fromtimestamp(d.failed_at, dt.UTC).isoformat(),
                "error": d.error,
                "value": show_value(d.value),
            }
            for d in await bus.dlq_list(topic, limit=limit)
        ]

    rows = run_with_bus(resolve_url(url, config), action)
    emit(rows, json, ["dlq_offset", "group", "offset", "key", "attempts", "error"])


@dlq_app.command("redrive")
def dlq_redrive_command(
    topic: str,
    offset: Annotated[
        list[int] | None, typer.Option("--offset", help="DLQ offsets to re-drive (default: all).")
    ] = None,
    url: UrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Send dead letters back to the group that failed them."""

    async def action(bus: Bus) -> int:
        return await bus.dlq_redrive(topic, offsets=offset)

    moved = run_with_bus(resolve_url(url, config), action)
    typer.echo(f"re-drove {moved} message(s) from {topic}.dlq")
