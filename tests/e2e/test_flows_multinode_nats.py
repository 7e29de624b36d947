"""Two ``sampan up`` nodes share one flow's consumer group on NATS JetStream; one is SIGKILLed.

This is the scale-out promise of DESIGN.md ("any number of nodes run the same config") under
the worst failure a node can have: no shutdown, no release of leases, acks still batched in
memory. The surviving node must carry on, and JetStream must hand it what the dead node held
once its ``ack_wait`` (30 s) has passed, so every message reaches the output topic. Delivery
is at-least-once: a message the dead node had already sent on but not yet acked comes out
twice; the consumer never holds more than two fetch batches, which bounds those duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from sampan.bus.base import Delivery, OutgoingMessage
from sampan.bus.nats import NatsBus

pytestmark = [pytest.mark.nats, pytest.mark.slow]

NATS_URL = "nats://127.0.0.1:4222"
MESSAGES = 5_000
KEYS = 250
FETCH_BATCH = 64
RATE_PER_NODE = 400  # messages per second and node, so the kill lands mid-stream
KILL_AFTER = 1_000  # outputs seen before node A is killed
ACK_WAIT = 30.0  # NATS consumers' ack_wait (not configurable from sampan.yaml)


def write_config(tmp_path: Path, topic_in: str, topic_out: str) -> Path:
    config = tmp_path / "sampan.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            node:
              name: multinode-${{NODE_LABEL}}
              data_dir: ${{SAMPAN_DATA_DIR}}
              shutdown_grace: 5s
            bus:
              url: {NATS_URL}
              fetch_batch: {FETCH_BATCH}
            flows:
              - name: relay
                from: {{topic: {topic_in}, group: shared}}
                concurrency: 32
                steps:
                  - transform: {{expression: "{{id: data.id, n: data.n, relayed_by: 'relay'}}"}}
                  - set_headers: {{x-node: "'${{NODE_LABEL}}'"}}
                  - throttle: {{rate: {RATE_PER_NODE}, per: 1s}}
                  - to: {{topic: {topic_out}}}
            """
        )
    )
    return config


async def drain(
    bus: NatsBus, topic: str, group: str, into: list[Delivery], arrived: list[float]
) -> None:
    """Fetch and ack what is on ``topic`` for ``group`` right now, noting when it came."""
    while True:
        got = await bus.fetch(
            topic, group, consumer="verifier", max_messages=500, lease_seconds=60.0
        )
        if not got:
            return
        into.extend(got)
        arrived.extend([time.monotonic()] * len(got))
        await bus.ack(got)


async def test_sigkill_one_of_two_nodes_loses_no_message(tmp_path: Path, start_node: Any) -> None:
    run = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"e2e.multinode.{run}.in", f"e2e.multinode.{run}.out"
    config = write_config(tmp_path, topic_in, topic_out)
    bus = NatsBus(NATS_URL)
    await bus.start()
    outputs: list[Delivery] = []
    arrived: list[float] = []
    try:
        await bus.create_topic(topic_in)
        await bus.create_group(topic_out, "verifier", start="earliest")
        nodes = {
            label: start_node(
                config,
                env={"NODE_LABEL": label, "SAMPAN_DATA_DIR": str(tmp_path / f"data-{label}")},
            )
            for label in ("a", "b")
        }
        for node in nodes.values():
            await asyncio.to_thread(node.wait_for, r"node multinode-\w up", 30)

        for start in range(0, MESSAGES, 1_000):
            await bus.publish_batch(
                topic_in,
                [
                    OutgoingMessage(
                        orjson.dumps({"id": f"m{i:05d}", "n": i}), key=f"customer-{i % KEYS}"
                    )
                    for i in range(start, start + 1_000)
                ],
            )

        deadline = time.monotonic() + 30
        while len(outputs) < KILL_AFTER:
            assert time.monotonic() < deadline, f"no progress: {len(outputs)} outputs"
            await drain(bus, topic_out, "verifier", outputs, arrived)
            await asyncio.sleep(0.05)
        os.kill(nodes["a"].process.pid, signal.SIGKILL)
        nodes["a"].process.wait()
        killed_at = time.monotonic()
        at_kill = len(outputs)
        by_node_at_kill = collections.Counter(d.headers.get("x-node") for d in outputs)
        assert at_kill < MESSAGES, "the kill came too late to test anything"
        assert by_node_at_kill["a"] > 0, "node A processed nothing before it was killed"

        # Node B finishes the stream; what A held comes back after ack_wait.
        deadline = killed_at + ACK_WAIT + 45
        wanted = {f"m{i:05d}" for i in range(MESSAGES)}
        while True:
            await drain(bus, topic_out, "verifier", outputs, arrived)
            seen = {orjson.loads(d.value)["id"] for d in outputs}
            if seen >= wanted and await bus.lag(topic_in, "shared") == 0:
                break
            assert nodes["b"].process.poll() is None, nodes["b"].output()
            assert time.monotonic() < deadline, (
                f"{len(wanted - seen)} message(s) missing after {time.monotonic() - killed_at:.0f}"
                f" s, e.g. {sorted(wanted - seen)[:10]}"
            )
            await asyncio.sleep(0.2)
        recovered_after = time.monotonic() - killed_at
        await asyncio.sleep(1.0)  # late duplicates, if any, would show up now
        await drain(bus, topic_out, "verifier", outputs, arrived)

        nodes["b"].process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(nodes["b"].process.wait, 20) == 0, nodes["b"].output()

        ids = [orjson.loads(d.value)["id"] for d in outputs]
        counts = collections.Counter(ids)
        duplicated = {i for i, c in counts.items() if c > 1}
        nodes_of: dict[str, list[str]] = collections.defaultdict(list)
        for d in outputs:
            nodes_of[orjson.loads(d.value)["id"]].append(d.headers.get("x-node", "?"))
        by_node = collections.Counter(d.headers.get("x-node") for d in outputs)
        # What A held (leased or pulled) when it died reaches B only after ack_wait.
        held_by_a = sum(1 for t in arrived if t >= killed_at + ACK_WAIT - 5)
        print(
            f"\noutputs at kill: {at_kill} ({dict(by_node_at_kill)}); total outputs: {len(ids)}"
            f" ({dict(by_node)}); distinct: {len(counts)}; duplicates: {len(ids) - len(counts)}"
            f" over {len(duplicated)} id(s); {held_by_a} came back after ack_wait;"
            f" all seen {recovered_after:.1f} s after the kill"
        )
        assert set(counts) == wanted
        assert all(orjson.loads(d.value)["relayed_by"] == "relay" for d in outputs)
        # Only what node A held when it died (at most two fetch batches) can come out twice:
        # once from A before the kill, once more from B after ack_wait.
        assert len(ids) - len(counts) <= 2 * FETCH_BATCH
        assert max(counts.values()) <= 2
        for message_id in duplicated:
            assert sorted(nodes_of[message_id]) == ["a", "b"], (message_id, nodes_of[message_id])
    finally:
        for topic in (topic_in, topic_out, f"{topic_in}.dlq", f"{topic_out}.dlq"):
            try:
                await bus.delete_topic(topic)
            except Exception as exc:  # cleanup must not hide the test's own failure
                print(f"could not delete {topic}: {exc}")
        await bus.close()
