"""Connectors other than bus topics and services: schedules, files, MQTT, PostgreSQL, webhooks.

Each module exports ``SOURCE`` and/or ``SINK`` (an `EndpointKind`); the flow config picks a
kind by which of its keys is present in a ``from``/``to`` entry.
"""

from __future__ import annotations

from typing import Any

from sampan.flows.connectors import (
    cron,
    files,
    mqtt,
    postgres_outbox,
    postgres_table,
    timer,
    webhook,
)
from sampan.flows.endpoint import EndpointKind, Sink, Source

__all__ = ["SINK_KINDS", "SOURCE_KINDS"]

SOURCE_KINDS: tuple[EndpointKind[Any, Source], ...] = (
    timer.SOURCE,
    cron.SOURCE,
    files.SOURCE,
    mqtt.SOURCE,
    postgres_outbox.SOURCE,
)

SINK_KINDS: tuple[EndpointKind[Any, Sink], ...] = (
    files.SINK,
    mqtt.SINK,
    postgres_table.SINK,
    webhook.SINK,
)
