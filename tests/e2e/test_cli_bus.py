"""The operator commands, run as a user would, against an embedded bus file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
from conftest import run_sampan  # type: ignore[import-not-found]

from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite import SqliteBus


def bus_args(tmp_path: Path) -> list[str]:
    return ["--url", f"sqlite:///{tmp_path}/bus.db"]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_publish_consume_lag_topics(tmp_path: Path) -> None:
    url = bus_args(tmp_path)
    one = run_sampan("bus", "publish", "orders", '{"id": 1}', "--key", "KH1", "-H", "src=pos", *url)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "orders@0"
    many = run_sampan("bus", "publish", "orders", *url, input='{"id": 2}\n{"id": 3}\n')
    assert many.stdout.split() == ["orders@1", "orders@2"]

    peek = run_sampan("bus", "consume", "orders", "-g", "audit", "--no-ack", "--json", *url)
    assert [row["value"] for row in json_lines(peek.stdout)] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert json_lines(peek.stdout)[0]["headers"] == {"src": "pos"}

    lag = json_lines(run_sampan("bus", "lag", "orders", "--json", *url).stdout)
    assert lag == [
        {"topic": "orders", "group": "audit", "lag": 3, "in_flight": 3, "next_offset": 3}
    ]

    taken = run_sampan("bus", "consume", "orders", "-g", "audit", "-n", "2", "--json", *url)
    assert [row["attempt"] for row in json_lines(taken.stdout)] == [1, 1]
    lag = json_lines(run_sampan("bus", "lag", "orders", "-g", "audit", "--json", *url).stdout)
    assert lag[0]["lag"] == 1

    topics = run_sampan("bus", "topics", *url)
    assert topics.returncode == 0
    assert "orders" in topics.stdout and "audit" in topics.stdout


def test_replay_by_offset_and_time(tmp_path: Path) -> None:
    url = bus_args(tmp_path)
    run_sampan("bus", "publish", "t", *url, input="a\nb\nc\n")
    run_sampan("bus", "consume", "t", "-g", "g", *url)
    replay = run_sampan("bus", "replay", "t", "-g", "g", "--offset", "1", *url)
    assert replay.stdout.strip() == "t/g will read from offset 1"
    again = json_lines(run_sampan("bus", "consume", "t", "-g", "g", "--json", *url).stdout)
    assert [row["value"] for row in again] == ["b", "c"]

    since = run_sampan("bus", "replay", "t", "-g", "g", "--since", "2000-01-01T00:00:00", *url)
    assert since.stdout.strip() == "t/g will read from offset 0"
    future = run_sampan("bus", "replay", "t", "-g", "g", "--since", str(time.time() + 3600), *url)
    assert future.stdout.strip() == "t/g will read from offset 3"

    neither = run_sampan("bus", "replay", "t", "-g", "g", *url)
    assert neither.returncode == 2
    assert "exactly one of --offset or --since" in neither.stderr


async def test_dlq_list_and_redrive(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    bus = SqliteBus(url)
    await bus.start()
    await bus.publish("payments", orjson.dumps({"order": "DH9"}), key="KH9")

    async def refuse(delivery: object) -> None:
        raise ValueError("card declined")

    consumer = Consumer(
        bus,
        "payments",
        "charge",
        refuse,
        ConsumerOptions(retry=RetryPolicy(max_attempts=2, initial_backoff=0.01), wait_seconds=0.05),
    )
    await consumer.start()
    deadline = time.monotonic() + 10
    while not await bus.dlq_list("payments"):
        assert time.monotonic() < deadline
        await consumer_pause()
    await consumer.stop()
    await bus.close()

    listed = json_lines(run_sampan("bus", "dlq", "list", "payments", "--json", "--url", url).stdout)
    assert len(listed) == 1
    assert listed[0]["error"] == "ValueError: card declined"
    assert listed[0]["attempts"] == 2
    assert listed[0]["group"] == "charge"
    assert listed[0]["value"] == {"order": "DH9"}

    redrive = run_sampan("bus", "dlq", "redrive", "payments", "--url", url)
    assert redrive.stdout.strip() == "re-drove 1 message(s) from payments.dlq"
    assert (
        json_lines(run_sampan("bus", "dlq", "list", "payments", "--json", "--url", url).stdout)
        == []
    )
    back = json_lines(
        run_sampan("bus", "consume", "payments", "-g", "charge", "--json", "--url", url).stdout
    )
    assert [row["value"] for row in back] == [{"order": "DH9"}]


async def consumer_pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


def test_bad_url_and_unknown_group_are_clear_errors(tmp_path: Path) -> None:
    bad = run_sampan("bus", "topics", "--url", "kafka://localhost")
    assert bad.returncode == 1
    assert "unknown scheme 'kafka'" in bad.stderr
    missing = run_sampan("bus", "replay", "nope", "-g", "g", "--offset", "0", *bus_args(tmp_path))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_validate_and_config_schema(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("bus:\n  retry:\n    max_attempts: 3\n")
    assert run_sampan("validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("bus:\n  retry:\n    max_attempts: 0\n  lease: soon\nnode:\n  colour: red\n")
    result = run_sampan("validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert f"{bad}:3:19 bus.retry.max_attempts: must be >= 1, got 0" in lines
    assert any(line.startswith(f"{bad}:4:10 bus.lease:") for line in lines), lines
    assert any(line.startswith(f"{bad}:6:3 node.colour: unknown key") for line in lines), lines
    schema = json.loads(run_sampan("config-schema").stdout)
    assert {"node", "bus", "subscriptions", "tasks"} <= set(schema["properties"])
