"""cron: fire on a five-field cron schedule in a time zone (croniter), DST included."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sampan.flows.connectors._schedule import ScheduleSource
from sampan.flows.endpoint import EndpointContext, EndpointKind, Source


class CronConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(
        description="Cron expression: minute hour day-of-month month day-of-week, e.g. "
        "`*/5 * * * *` or `0 8 * * MON-FRI`.",
    )
    timezone: str = Field(
        "UTC",
        description="IANA time zone the expression is read in, e.g. `Asia/Ho_Chi_Minh`.",
    )
    body: Any = Field(
        None,
        description='Payload of every tick (any JSON). Default: `{"fired_at": <ISO 8601>}`.',
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a five-field cron expression "
                "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as 'Asia/Ho_Chi_Minh')"
            ) from None
        return value


def cron_next(expression: str, zone: ZoneInfo, after: float) -> float:
    """The first instant of the schedule strictly after ``after`` (unix seconds)."""
    start = datetime.fromtimestamp(after, zone)
    following: datetime = croniter(expression, start).get_next(datetime)
    return following.timestamp()


def build(config: CronConfig, ctx: EndpointContext) -> Source:
    expression = config.cron
    zone = ZoneInfo(config.timezone)
    return ScheduleSource(ctx, lambda t: cron_next(expression, zone, t), config.body, "cron")


SOURCE: EndpointKind[CronConfig, Source] = EndpointKind(
    key="cron",
    config=CronConfig,
    build=build,
    summary="Fires on a cron schedule in a time zone; one message per tick across nodes.",
)
