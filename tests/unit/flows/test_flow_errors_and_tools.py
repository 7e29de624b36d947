"""Failure handling (retries, dead letters naming the step, on_error), route and connector
endpoints in tests, the aggregator's state across a restart, and the CLI tools."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import yaml
from flow_case import flows_config, run_flow_case

from sampan.bus.base import OutgoingMessage
from sampan.bus.factory import open_bus
from sampan.config import parse_config_text
from sampan.flows.service import FlowService
from sampan.observe.metrics import Metrics
from sampan.store.factory import open_store

FAILING = "tests_flow_failing_step"


async def test_failures_are_retried_then_dead_lettered_naming_the_step(tmp_path: Path) -> None:
    config = flows_config(
        "      - transform: {expression: '{n: data.n}'}\n"
        "      - enrich: {service: s, path: /x, into: x}\n"
        "      - to: {topic: out}\n",
        extra="services:\n  - {name: s, endpoints: [{url: 'http://127.0.0.1:9'}]}\n",
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "retry then dead letter",
            "services": {"s": [{"path": "/x", "fail": True}]},
            "input": [{"key": "k", "data": {"n": 1}}],
            "expect": {
                "dlq": [
                    {"data": {"n": 1}, "error_contains": "steps[1].enrich: ServiceUnavailable"}
                ],
                "service:s": [{}, {}],  # max_attempts 2
                "out": [],
            },
        },
    )
    assert result.passed, result.problems


async def test_on_error_skip_continue_dead_letter_and_to(tmp_path: Path) -> None:
    service = "services:\n  - {name: s, endpoints: [{url: 'http://127.0.0.1:9'}]}\n"
    enrich = "{service: s, path: /x, into: x}"
    config = (
        "bus: {retry: {max_attempts: 3}}\n" + service + "flows:\n"
        "  - {name: skip, from: {topic: in1}, steps: [{enrich: " + enrich + ", on_error: skip},"
        " {to: {topic: out1}}]}\n"
        "  - {name: cont, from: {topic: in2}, steps: [{enrich: " + enrich + ", on_error: continue},"
        " {to: {topic: out2}}]}\n"
        "  - {name: dead, from: {topic: in3}, steps: [{enrich: " + enrich + ","
        " on_error: {action: dead_letter, attempts: 2, backoff: 10ms}}, {to: {topic: out3}}]}\n"
        "  - {name: park, from: {topic: in4}, steps: [{enrich: " + enrich + ","
        " on_error: {to: {topic: errors}}}, {to: {topic: out4}}]}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "on_error",
            "services": {"s": [{"path": "/x", "status": 500}]},
            "input": [
                {"topic": "in1", "data": {"n": 1}},
                {"topic": "in2", "data": {"n": 2}},
                {"topic": "in3", "data": {"n": 3}},
                {"topic": "in4", "data": {"n": 4}},
            ],
            "expect": {
                "out1": [],
                "out2": [{"data": {"n": 2}}],
                "out3": [],
                "out4": [],
                "errors": [{"data": {"n": 4}, "headers": {"flow-error-step": "steps[0].enrich"}}],
                "service:s": [{}, {}, {}, {}, {}],  # dead_letter tries twice, the others once
            },
        },
    )
    assert result.passed, result.problems


async def test_route_source_and_recorded_connector_sinks(tmp_path: Path) -> None:
    config = (
        "routes:\n"
        "  - {name: orders-in, match: {path: /orders, methods: [POST]},"
        " target: {topic: {name: orders.http}}}\n"
        "flows:\n"
        "  - name: notify\n"
        "    from: {route: orders-in}\n"
        "    steps:\n"
        "      - to: {webhook: 'http://127.0.0.1:9/hook', secret: s3cret}\n"
        "      - to: {topic: done}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "route in, webhook out",
            "input": [{"data": {"id": "o1"}}],
            "expect": {"sink:webhook": [{"data": {"id": "o1"}}], "done": [{"data": {"id": "o1"}}]},
        },
    )
    assert result.passed, result.problems


async def test_aggregation_groups_survive_a_restart(tmp_path: Path) -> None:
    """Two of three parts are stored and acked, the node goes away; after the restart the
    third part completes the group with all three."""
    config = parse_config_text(
        flows_config(
            "      - aggregate: {correlation: data.order, size: 3}\n      - to: {topic: out}\n"
        ),
        base_dir=tmp_path,
    )
    bus = open_bus(f"sqlite:///{tmp_path}/bus.db", metrics=Metrics())
    await bus.start()
    await bus.create_group("out", "check")

    async def run_until(parts: list[int], want_lag_zero: bool = True) -> None:
        store = open_store(f"sqlite:///{tmp_path}/state.db", tmp_path)
        await store.start()
        flows = FlowService(
            config.flows,
            bus=bus,
            store=store,
            metrics=Metrics(),
            base_dir=tmp_path,
            data_dir=tmp_path,
            node="n",
            default_retry=config.bus.retry,
        )
        await flows.start()
        for part in parts:
            await bus.publish("in", orjson.dumps({"order": "A", "part": part}), key="A")
        for _ in range(200):
            await asyncio.sleep(0.02)
            if await bus.lag("in", "g") == 0:
                break
        await flows.stop(1.0)
        await store.close()

    try:
        await run_until([1, 2])
        assert await bus.fetch("out", "check", consumer="t", max_messages=10, lease_seconds=5) == []
        await run_until([3])
        [aggregate] = await bus.fetch(
            "out", "check", consumer="t", max_messages=10, lease_seconds=5
        )
        parts = [item["part"] for item in orjson.loads(aggregate.value)]
        assert sorted(parts) == [1, 2, 3]
    finally:
        await bus.close()


def test_flow_test_cli_passes_and_fails(tmp_path: Path) -> None:
    (tmp_path / "sampan.yaml").write_text(
        flows_config("      - filter: 'data.ok'\n      - to: {topic: out}\n")
    )
    good = {
        "config": "sampan.yaml",
        "tests": [
            {
                "name": "ok",
                "input": [{"data": {"ok": True}}],
                "expect": {"out": [{"data": {"ok": True}}]},
            }
        ],
    }
    bad = {
        "config": "sampan.yaml",
        "tests": [
            {
                "name": "nope",
                "input": [{"data": {"ok": False}}],
                "expect": {"out": [{"data": {"ok": False}}]},
            }
        ],
    }
    (tmp_path / "good.test.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "bad.test.yaml").write_text(yaml.safe_dump(bad))
    cli = [sys.executable, "-m", "sampan.cli", "flow", "test"]
    ok = subprocess.run(
        [*cli, str(tmp_path / "good.test.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and "1 passed, 0 failed" in ok.stdout
    failed = subprocess.run(
        [*cli, str(tmp_path / "bad.test.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert "FAIL" in failed.stdout and "out: expected 1 message(s), got 0" in failed.stdout


def test_docs_asyncapi_lists_topics_flows_and_schemas(tmp_path: Path) -> None:
    (tmp_path / "order.json").write_text('{"type": "object", "required": ["id"]}')
    (tmp_path / "sampan.yaml").write_text(
        flows_config("      - validate: {schema: order.json}\n      - to: {topic: out}\n")
    )
    out = tmp_path / "asyncapi.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sampan.cli",
            "docs",
            "asyncapi",
            str(tmp_path / "sampan.yaml"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = orjson.loads(out.read_bytes())
    assert document["asyncapi"] == "3.0.0"
    assert {"in", "out", "in.dlq"} <= set(document["channels"])
    assert document["channels"]["in"]["messages"]["message"]["payload"] == {
        "$ref": "#/components/schemas/order"
    }
    assert document["components"]["schemas"]["order"]["required"] == ["id"]
    actions = {op["action"] for op in document["operations"].values()}
    assert actions == {"send", "receive"}


async def test_python_steps_import_from_the_node_python_path(tmp_path: Path) -> None:
    module = f"flowsteps_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "def double(data):\n    return {'n': data['n'] * 2}\n\n"
        "def tag(message):\n    message.headers['x-tag'] = 'seen'\n"
    )
    config = "node: {python_path: ['.']}\n" + flows_config(
        f"      - transform: {{python: '{module}:double'}}\n"
        f"      - python: '{module}:tag'\n"
        "      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "python",
            "input": [{"data": {"n": 21}}],
            "expect": {"out": [{"data": {"n": 42}, "headers": {"x-tag": "seen"}}]},
        },
    )
    assert result.passed, result.problems


async def test_connector_messages_get_the_flow_key_on_the_ingress_topic(tmp_path: Path) -> None:
    config = parse_config_text(
        "flows:\n  - name: tick\n    from: {timer: 1h}\n    key: data.customer\n"
        "    steps: [{to: {topic: out}}]\n",
        base_dir=tmp_path,
    )
    bus = open_bus("memory://", metrics=Metrics())
    store = open_store("memory://", tmp_path)
    await bus.start()
    await store.start()
    try:
        flows = FlowService(
            config.flows,
            bus=bus,
            store=store,
            metrics=Metrics(),
            base_dir=tmp_path,
            data_dir=tmp_path,
            node="n",
            default_retry=config.bus.retry,
            start_sources=False,
        )
        [flow] = flows.flows
        assert flow.topic == "flows.tick.in"
        await bus.create_group(flow.topic, "check")
        await flow.emit([OutgoingMessage(b'{"customer": "KH1"}'), OutgoingMessage(b'"no key"')])
        got = await bus.fetch(flow.topic, "check", consumer="t", max_messages=10, lease_seconds=5)
        assert [d.key for d in got] == ["KH1", None]
    finally:
        await store.close()
        await bus.close()
