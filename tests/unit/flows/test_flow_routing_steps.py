"""Stateless steps: validate, filter, transform, headers, choice, split, recipient list,
multicast, scatter-gather, wire tap, delay, log — each through a real flow run."""

from __future__ import annotations

import time
from pathlib import Path

from flow_case import flows_config, run_flow_case

ORDER_SCHEMA = (
    '{"type": "object", "required": ["id", "amount"],'
    ' "properties": {"id": {"type": "string"}, "amount": {"type": "integer"}}}'
)


async def test_validate_choice_and_headers_route_each_order(tmp_path: Path) -> None:
    (tmp_path / "order.json").write_text(ORDER_SCHEMA)
    config = flows_config(
        "      - validate: {schema: order.json}\n"
        "      - set_headers: {x-id: data.id, x-big: 'data.amount > `100`'}\n"
        "      - choice:\n"
        "          - when: 'data.amount > `100`'\n"
        "            steps: [{to: {topic: review}}]\n"
        "          - otherwise: [{to: {topic: accepted}}]\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "route",
            "input": [
                {"key": "a", "data": {"id": "o1", "amount": 500}},
                {"key": "b", "data": {"id": "o2", "amount": 5}},
                {"key": "c", "data": {"id": "o3"}},
            ],
            "expect": {
                "review": [{"data": {"id": "o1"}, "headers": {"x-id": "o1", "x-big": "true"}}],
                "accepted": [{"data": {"id": "o2"}, "headers": {"x-big": "false"}}],
                "dlq": [{"error_contains": "steps[0].validate: InvalidMessage: fails order.json"}],
            },
        },
    )
    assert result.passed, result.problems


async def test_a_wrong_expectation_is_reported(tmp_path: Path) -> None:
    """The runner must be able to fail: a missing message and a wrong payload are named."""
    config = flows_config("      - to: {topic: out}\n")
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "wrong",
            "input": [{"data": {"n": 1}}],
            "expect": {"out": [{"data": {"n": 2}}, {"data": {"n": 3}}]},
        },
    )
    assert not result.passed
    assert any("expected 2 message(s), got 1" in p for p in result.problems)
    assert any("does not match" in p for p in result.problems)


async def test_filter_transform_and_remove_headers(tmp_path: Path) -> None:
    config = flows_config(
        "      - filter: 'data.ok'\n"
        "      - transform: {expression: '{id: data.id, total: data.qty}'}\n"
        "      - transform:\n"
        '          template: \'{"id": "{{ data.id }}", "vnd": {{ data.total * 1000 }}}\'\n'
        "      - remove_headers: [x-secret]\n"
        "      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "translate",
            "input": [
                {"data": {"ok": False, "id": "x"}},
                {"data": {"ok": True, "id": "y", "qty": 3}, "headers": {"x-secret": "s"}},
            ],
            "expect": {"out": [{"data": {"id": "y", "vnd": 3000}}]},
        },
    )
    assert result.passed, result.problems


async def test_split_gives_one_message_per_item_in_order(tmp_path: Path) -> None:
    config = flows_config("      - split: data.items\n      - to: {topic: out}\n")
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "split",
            "input": [{"key": "k", "data": {"items": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]}}],
            "expect": {
                "out": [
                    {"data": {"sku": "a"}, "key": "k", "headers": {"flow-split-index": "0"}},
                    {"data": {"sku": "b"}, "headers": {"flow-split-size": "3"}},
                    {"data": {"sku": "c"}, "headers": {"flow-split-index": "2"}},
                ]
            },
        },
    )
    assert result.passed, result.problems


async def test_recipient_list_multicast_and_wire_tap(tmp_path: Path) -> None:
    config = flows_config(
        "      - wire_tap: {topic: audit}\n"
        "      - recipient_list: {recipients: data.notify, allowed: [sms, email]}\n"
        "      - multicast:\n"
        "          - [{transform: {expression: '{a: data.id}'}}, {to: {topic: left}}]\n"
        "          - [{to: {topic: right}}]\n"
        "      - to: {topic: after}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "fan out",
            "input": [
                {"data": {"id": "1", "notify": ["sms", "email"]}},
                {"data": {"id": "2", "notify": ["fax"]}},
            ],
            "expect": {
                "audit": [{"data": {"id": "1"}}, {"data": {"id": "2"}}],
                "sms": [{"data": {"id": "1"}}],
                "email": [{"data": {"id": "1"}}],
                "left": [{"data": {"a": "1"}}],
                "right": [{"data": {"id": "1"}}],
                "after": [{"data": {"id": "1"}}],
                "dlq": [{"error_contains": "not in this recipient list's `allowed`"}],
            },
        },
    )
    assert result.passed, result.problems


async def test_scatter_gather_collects_every_branch(tmp_path: Path) -> None:
    config = flows_config(
        "      - scatter_gather:\n"
        "          into: quotes\n"
        "          branches:\n"
        "            - [{enrich: {service: ship-a, path: '/q/{data.id}', into: q}},"
        " {transform: {expression: data.q.price}}]\n"
        "            - [{enrich: {service: ship-b, path: '/q/{data.id}', into: q}},"
        " {transform: {expression: data.q.price}}]\n"
        "      - to: {topic: out}\n",
        extra="services:\n"
        "  - {name: ship-a, endpoints: [{url: 'http://127.0.0.1:9'}]}\n"
        "  - {name: ship-b, endpoints: [{url: 'http://127.0.0.1:9'}]}\n",
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "quotes",
            "services": {
                "ship-a": [{"path": "/q/7", "json": {"price": 30000}}],
                "ship-b": [{"path": "/q/7", "json": {"price": 25000}}],
            },
            "input": [{"data": {"id": "7"}}],
            "expect": {"out": [{"data": {"id": "7", "quotes": [30000, 25000]}}]},
        },
    )
    assert result.passed, result.problems


async def test_delay_holds_messages(tmp_path: Path) -> None:
    config = flows_config(
        "      - delay: 300ms\n      - log: 'late {{ data.n }}'\n      - to: {topic: out}\n"
    )
    started = time.monotonic()
    result = await run_flow_case(
        tmp_path,
        config,
        {"name": "delay", "input": [{"data": {"n": 1}}], "expect": {"out": [{"data": {"n": 1}}]}},
    )
    assert result.passed, result.problems
    assert time.monotonic() - started >= 0.3
