from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sampan.flows.connectors import cron, timer
from sampan.flows.connectors._schedule import HEADER_FIRED_AT, ScheduleSource, tick_message


@given(
    interval=st.floats(min_value=0.01, max_value=86400),
    after=st.floats(min_value=0, max_value=4e9),
)
def test_aligned_next_is_the_next_multiple(interval: float, after: float) -> None:
    tick = timer.aligned_next(interval, after)
    assert tick > after
    assert tick - after <= interval * (1 + 1e-9) + 1e-6
    assert math.isclose(round(tick / interval) * interval, tick, rel_tol=1e-12, abs_tol=1e-9)


def test_cron_reads_the_time_zone() -> None:
    zone = ZoneInfo("Asia/Ho_Chi_Minh")  # UTC+7, no DST
    after = datetime(2025, 3, 1, 0, 30, tzinfo=UTC).timestamp()
    fired = cron.cron_next("0 8 * * *", zone, after)
    assert datetime.fromtimestamp(fired, UTC) == datetime(2025, 3, 1, 1, 0, tzinfo=UTC)


def test_cron_across_a_dst_change() -> None:
    zone = ZoneInfo("Europe/Paris")  # 2025-03-30 02:00 -> 03:00
    after = datetime(2025, 3, 29, 0, 0, tzinfo=UTC).timestamp()
    first = cron.cron_next("0 9 * * *", zone, after)
    second = cron.cron_next("0 9 * * *", zone, first)
    assert datetime.fromtimestamp(first, UTC).hour == 8  # 09:00 CET
    assert datetime.fromtimestamp(second, UTC).hour == 7  # 09:00 CEST
    assert second - first == 23 * 3600


@pytest.mark.parametrize(
    "config",
    [
        {"cron": "* * *"},
        {"cron": "61 * * * *"},
        {"cron": "*/5 * * * * *"},
        {"cron": "*/5 * * * *", "timezone": "Mars/Olympus"},
        {"cron": "*/5 * * * *", "extra": 1},
    ],
)
def test_cron_config_errors(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        cron.CronConfig.model_validate(config)


def test_timer_config() -> None:
    assert timer.TimerConfig.model_validate({"timer": "5s"}).timer == 5.0
    with pytest.raises(ValidationError):
        timer.TimerConfig.model_validate({"timer": 0})
    with pytest.raises(ValidationError):
        timer.TimerConfig.model_validate({"timer": "soon"})


def test_tick_message_is_the_same_on_every_node() -> None:
    a = tick_message("f1", 1_700_000_000.0, None)
    b = tick_message("f1", 1_700_000_000.0, None)
    assert a == b
    assert a.dedupe_key == "f1:2023-11-14T22:13:20.000+00:00"
    assert orjson.loads(a.value) == {"fired_at": "2023-11-14T22:13:20.000+00:00"}
    assert a.headers == {HEADER_FIRED_AT: "2023-11-14T22:13:20.000+00:00"}
    custom = tick_message("f1", 1_700_000_000.0, {"job": "report"})
    assert orjson.loads(custom.value) == {"job": "report"}


async def test_two_nodes_fire_each_tick_once(ctx, emitter) -> None:
    config = timer.TimerConfig.model_validate({"timer": "100ms", "body": {"job": 1}})
    nodes = [timer.SOURCE.build(config, ctx), timer.SOURCE.build(config, ctx)]
    for node in nodes:
        await node.start(emitter)
    await asyncio.sleep(0.75)
    for node in nodes:
        await node.stop()
    published = await emitter.published()
    fired = {m.headers[HEADER_FIRED_AT] for m in emitter.messages if m.headers}
    assert 4 <= len(fired) <= 9
    assert len(published) == len(fired)  # one message per tick although both nodes fired
    assert emitter.calls >= 2 * len(fired) - 2
    assert all(orjson.loads(d.value) == {"job": 1} for d in published)


async def test_failed_emit_is_retried_within_the_tick(ctx, emitter) -> None:
    emitter.fail = 1
    source = ScheduleSource(ctx, lambda t: timer.aligned_next(2.0, t), None, "timer")
    await source.start(emitter)
    for _ in range(60):
        await asyncio.sleep(0.1)
        if await emitter.published():
            break
    await source.stop()
    published = await emitter.published()
    assert len(published) == 1
    assert emitter.calls == 2


def test_cron_build_gives_a_schedule_source(ctx) -> None:
    config = cron.CronConfig.model_validate({"cron": "*/5 * * * *", "timezone": "Asia/Ho_Chi_Minh"})
    assert isinstance(cron.SOURCE.build(config, ctx), ScheduleSource)
