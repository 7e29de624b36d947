"""The node hands its bus settings to the backend it opens: ``bus.lease`` is NATS' ack_wait."""

from __future__ import annotations

from pathlib import Path

from sampan.bus.nats import NatsBus
from sampan.config import parse_config_text
from sampan.node import Node


def test_the_nodes_lease_becomes_the_nats_consumers_ack_wait(tmp_path: Path) -> None:
    config = parse_config_text(
        "bus:\n  url: nats://127.0.0.1:4222\n  lease: 12s\n  max_in_flight_per_group: 77\n",
        base_dir=tmp_path,
    )
    node = Node(config)
    assert isinstance(node.bus, NatsBus)
    assert node.bus.options.ack_wait == 12.0
    assert node.bus.options.max_in_flight_per_group == 77
