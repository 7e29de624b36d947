"""The node's young-generation GC threshold: set while it runs, put back afterwards, only the
youngest generation's, validated in config."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampan.config import ConfigError, parse_config_text
from sampan.gc_threshold import GcYoungThreshold
from sampan.node import Node

NODE = "node:\n  data_dir: data\n  admin:\n    port: 0\ngateway:\n  enabled: false\n"


@pytest.fixture
def python_default() -> Iterator[tuple[int, int, int]]:
    """Every test starts from, and leaves, Python's own thresholds (older ones unusual, to see
    that they are kept)."""
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    try:
        yield (700, 11, 12)
    finally:
        gc.set_threshold(*before)


def test_applies_to_the_youngest_generation_only_then_restores(
    python_default: tuple[int, int, int],
) -> None:
    held = GcYoungThreshold(5000)
    held.apply()
    assert gc.get_threshold() == (5000, 11, 12)
    held.apply()  # a second apply does not lose the value to restore
    held.restore()
    assert gc.get_threshold() == python_default


def test_none_leaves_python_alone(python_default: tuple[int, int, int]) -> None:
    held = GcYoungThreshold(None)
    held.apply()
    held.restore()
    assert gc.get_threshold() == python_default


def test_a_value_changed_by_someone_else_is_kept(python_default: tuple[int, int, int]) -> None:
    held = GcYoungThreshold(5000)
    held.apply()
    gc.set_threshold(900, 11, 12)
    held.restore()
    assert gc.get_threshold() == (900, 11, 12)


async def test_a_node_sets_it_while_running(
    tmp_path: Path, python_default: tuple[int, int, int]
) -> None:
    config = parse_config_text(
        NODE.replace("node:\n", "node:\n  gc_young_threshold: 5000\n"), base_dir=tmp_path
    )
    node = Node(config)
    await node.start()
    try:
        assert gc.get_threshold() == (5000, 11, 12)
    finally:
        await node.stop()
    assert gc.get_threshold() == python_default


async def test_by_default_pythons_threshold_is_kept(
    tmp_path: Path, python_default: tuple[int, int, int]
) -> None:
    config = parse_config_text(NODE, base_dir=tmp_path)
    assert config.node.gc_young_threshold is None
    node = Node(config)
    await node.start()
    try:
        assert gc.get_threshold() == python_default
    finally:
        await node.stop()


@pytest.mark.parametrize("bad", ["0", "99", "-5", "20000000", "lots"])
def test_out_of_range_is_a_located_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(f"node:\n  gc_young_threshold: {bad}\n", base_dir=tmp_path)
    text = str(caught.value)
    assert "node.gc_young_threshold" in text
    assert ":2:" in text
