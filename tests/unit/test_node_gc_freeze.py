"""A running node moves its start-up heap out of the collector's way (``gc.freeze``)."""

from __future__ import annotations

import gc
from pathlib import Path

from sampan.config import parse_config_text
from sampan.node import Node


async def test_the_start_up_heap_is_frozen_while_the_node_runs(tmp_path: Path) -> None:
    config = parse_config_text(
        "node:\n  data_dir: data\n  admin:\n    port: 0\ngateway:\n  enabled: false\n",
        base_dir=tmp_path,
    )
    gc.unfreeze()
    try:
        await Node(config).run(run_for=0.2)
        assert gc.get_freeze_count() > 10_000  # modules, config models, the bus...
    finally:
        gc.unfreeze()
