"""Stateful steps keep their state in the store: aggregator, idempotent receiver,
resequencer, throttler, claim check; and enrichment from services and topic tables."""

from __future__ import annotations

import time
from pathlib import Path

from flow_case import flows_config, run_flow_case


async def test_aggregate_completes_by_size_and_by_timeout(tmp_path: Path) -> None:
    config = flows_config(
        "      - aggregate: {correlation: data.order, size: 3, timeout: 300ms}\n"
        "      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "aggregate",
            "input": [
                {"key": "a", "data": {"order": "A", "n": 1}},
                {"key": "b", "data": {"order": "B", "n": 1}},
                {"key": "a", "data": {"order": "A", "n": 2}},
                {"key": "a", "data": {"order": "A", "n": 3}},
            ],
            "expect": {
                "out": [
                    {
                        "data": [{"n": 1}, {"n": 2}, {"n": 3}],
                        "headers": {"flow-correlation": "A", "flow-aggregate-completed-by": "size"},
                    },
                    {"data": [{"order": "B", "n": 1}], "headers": {"flow-aggregate-size": "1"}},
                ]
            },
        },
    )
    assert result.passed, result.problems


async def test_aggregate_complete_when_predicate(tmp_path: Path) -> None:
    config = flows_config(
        "      - aggregate: {correlation: data.order, complete_when: 'data[?last] | [0]'}\n"
        "      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "until the last part",
            "input": [
                {"key": "a", "data": {"order": "A", "part": 1}},
                {"key": "a", "data": {"order": "A", "part": 2, "last": True}},
            ],
            "expect": {"out": [{"data": [{"part": 1}, {"part": 2}]}]},
        },
    )
    assert result.passed, result.problems


async def test_dedupe_drops_repeats_within_ttl(tmp_path: Path) -> None:
    config = flows_config("      - dedupe: {key: data.id, ttl: 1h}\n      - to: {topic: out}\n")
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "dedupe",
            "input": [
                {"key": "k", "data": {"id": "1", "try": 1}},
                {"key": "k", "data": {"id": "1", "try": 2}},
                {"key": "k", "data": {"id": "2"}},
            ],
            "expect": {"out": [{"data": {"id": "1", "try": 1}}, {"data": {"id": "2"}}]},
        },
    )
    assert result.passed, result.problems


async def test_dedupe_forgets_a_key_whose_message_failed(tmp_path: Path) -> None:
    """A message that fails after the idempotent receiver must not make its own retry (or a
    later resend) look like a duplicate."""
    config = flows_config(
        "      - dedupe: {key: data.id}\n"
        "      - enrich: {service: s, path: /x, into: x}\n"
        "      - to: {topic: out}\n",
        extra="services:\n  - {name: s, endpoints: [{url: 'http://127.0.0.1:9'}]}\n",
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "failed then resent",
            "services": {"s": [{"path": "/x", "status": 503}]},
            "input": [{"key": "k", "data": {"id": "1"}}],
            "expect": {
                "out": [],
                "dlq": [{"error_contains": "steps[1].enrich: ServiceUnavailable: s answered 503"}],
                "service:s": [{}, {}],
            },
        },
    )
    assert result.passed, result.problems


async def test_resequence_restores_order_and_drops_late(tmp_path: Path) -> None:
    config = flows_config(
        "      - resequence: {sequence: data.seq, timeout: 5s}\n      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "reorder",
            "input": [
                {"key": "x", "data": {"seq": 3}},
                {"key": "y", "data": {"seq": 1}},
                {"key": "z", "data": {"seq": 2}},
                {"key": "w", "data": {"seq": 1}},
            ],
            "expect": {"out": [{"data": {"seq": 1}}, {"data": {"seq": 2}}, {"data": {"seq": 3}}]},
        },
    )
    assert result.passed, result.problems


async def test_resequence_skips_a_gap_after_timeout(tmp_path: Path) -> None:
    config = flows_config(
        "      - resequence: {sequence: data.seq, timeout: 200ms}\n      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "gap",
            "input": [{"key": "x", "data": {"seq": 3}}, {"key": "y", "data": {"seq": 4}}],
            "expect": {"out": [{"data": {"seq": 3}}, {"data": {"seq": 4}}]},
        },
    )
    assert result.passed, result.problems


async def test_throttle_spreads_messages_over_windows(tmp_path: Path) -> None:
    config = flows_config("      - throttle: {rate: 2, per: 300ms}\n      - to: {topic: out}\n")
    started = time.monotonic()
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "throttle",
            "input": [{"key": str(i), "data": {"n": i}} for i in range(6)],
            "expect": {"out": [{} for _ in range(6)]},
        },
    )
    assert result.passed, result.problems
    # 6 messages at 2 per 300 ms: three windows, the first maybe nearly over: one whole.
    assert time.monotonic() - started >= 0.3


async def test_claim_check_parks_large_payloads(tmp_path: Path) -> None:
    config = flows_config(
        "      - claim_check: {action: check_in, min_size: 100}\n"
        "      - to: {topic: parked}\n"
        "      - claim_check: {action: check_out}\n"
        "      - to: {topic: restored}\n"
    )
    big = "x" * 500
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "claim check",
            "input": [{"key": "k", "data": {"blob": big}}, {"key": "k", "data": {"small": 1}}],
            "expect": {
                "parked": [{"data": {"bytes": 511}}, {"data": {"small": 1}}],
                "restored": [{"data": {"blob": big}}, {"data": {"small": 1}}],
            },
        },
    )
    assert result.passed, result.problems


async def test_enrich_from_a_service_with_cache_and_missing_rows(tmp_path: Path) -> None:
    config = flows_config(
        "      - enrich:\n"
        "          service: customers\n"
        "          path: /customers/{data.customer}\n"
        "          into: customer\n"
        "          missing: 'null'\n"
        "          cache: {ttl: 60s}\n"
        "      - to: {topic: out}\n",
        extra="services:\n  - {name: customers, endpoints: [{url: 'http://127.0.0.1:9'}]}\n",
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "enrich",
            "services": {"customers": [{"path": "/customers/c%201", "json": {"tier": "gold"}}]},
            "input": [
                {"key": "k", "data": {"customer": "c 1"}},
                {"key": "k", "data": {"customer": "c 1"}},
                {"key": "k", "data": {"customer": "c2"}},
            ],
            "expect": {
                "out": [
                    {"data": {"customer": {"tier": "gold"}}},
                    {"data": {"customer": {"tier": "gold"}}},
                    {"data": {"customer": None}},
                ],
                "service:customers": [{}, {}],  # the second c 1 came from the cache
            },
        },
    )
    assert result.passed, result.problems


async def test_enrich_from_a_topic_table(tmp_path: Path) -> None:
    config = flows_config(
        "      - enrich: {table: customers, key: data.customer, into: customer}\n"
        "      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "table",
            "input": [
                {"topic": "customers", "key": "c1", "data": {"name": "An"}},
                {"topic": "customers", "key": "c1", "data": {"name": "An Nguyen"}},
                {"key": "c1", "data": {"customer": "c1"}},
            ],
            # The table loads concurrently: a row missing at first is retried, not dropped.
            "expect": {"out": [{"data": {"customer": {}}}], "dlq": []},
        },
    )
    assert result.passed, result.problems
