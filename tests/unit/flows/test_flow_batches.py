"""A flow runs its messages in batches (see sampan.flows.outbox and Flow.handle_batch): the
outputs of a batch are published together, yet each message is settled on its own."""

from __future__ import annotations

from pathlib import Path

from flow_case import flows_config, run_flow_case


async def test_an_output_the_bus_refuses_fails_only_the_message_that_made_it(
    tmp_path: Path,
) -> None:
    """Three messages publish to one topic in one batch; the bus refuses one output (a
    reserved header): that message is dead-lettered, the other two are published."""
    config = flows_config(
        "      - choice:\n"
        "          - when: data.bad\n"
        "            steps: [{set_headers: {sampan-forged: \"'x'\"}}]\n"
        "      - to: {topic: out}\n"
    )
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "one refused output",
            "input": [
                {"key": "a", "data": {"n": 1}},
                {"key": "b", "data": {"n": 2, "bad": True}},
                {"key": "c", "data": {"n": 3}},
            ],
            "expect": {
                "out": [{"data": {"n": 1}}, {"data": {"n": 3}}],
                "dlq": [{"error_contains": "'sampan-' prefix is reserved"}],
            },
        },
    )
    assert result.passed, result.problems


async def test_a_message_that_waits_is_settled_after_its_batch(tmp_path: Path) -> None:
    """The first output is made before the wait (it goes out with the batch), the second
    after it (published directly: the batch is done by then); the retry of a message that
    fails after waiting still follows its own outcome."""
    config = flows_config(
        "      - to: {topic: before}\n"
        "      - delay: 50ms\n"
        "      - filter: 'data.n != `2`'\n"
        "      - validate: {schema: n.json}\n"
        "      - to: {topic: after}\n"
    )
    (tmp_path / "n.json").write_text('{"properties": {"n": {"maximum": 3}}}')
    result = await run_flow_case(
        tmp_path,
        config,
        {
            "name": "waits",
            "input": [
                {"key": "a", "data": {"n": 1}},
                {"key": "b", "data": {"n": 2}},
                {"key": "c", "data": {"n": 9}},
            ],
            "expect": {
                "before": [{"data": {"n": 1}}, {"data": {"n": 2}}, {"data": {"n": 9}}],
                "after": [{"data": {"n": 1}}],
                "dlq": [{"error_contains": "steps[3].validate"}],
            },
        },
    )
    assert result.passed, result.problems
