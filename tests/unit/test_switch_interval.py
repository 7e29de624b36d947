"""The node's GIL switch interval: set while it runs, put back afterwards, validated in config."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampan.config import ConfigError, parse_config_text
from sampan.node import Node
from sampan.switch_interval import DEFAULT_SWITCH_INTERVAL, SwitchInterval

NODE = "node:\n  data_dir: data\n  admin:\n    port: 0\ngateway:\n  enabled: false\n"


@pytest.fixture
def python_default() -> Iterator[float]:
    """Every test starts from, and leaves, Python's own setting."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        yield 0.005
    finally:
        sys.setswitchinterval(before)


def test_applies_then_restores(python_default: float) -> None:
    held = SwitchInterval(0.0002)
    held.apply()
    assert sys.getswitchinterval() == pytest.approx(0.0002)
    held.apply()  # a second apply does not lose the value to restore
    held.restore()
    assert sys.getswitchinterval() == pytest.approx(python_default)


def test_none_leaves_python_alone(python_default: float) -> None:
    held = SwitchInterval(None)
    held.apply()
    assert sys.getswitchinterval() == pytest.approx(python_default)
    held.restore()
    assert sys.getswitchinterval() == pytest.approx(python_default)


def test_a_value_changed_by_someone_else_is_kept(python_default: float) -> None:
    held = SwitchInterval(0.0002)
    held.apply()
    sys.setswitchinterval(0.003)
    held.restore()
    assert sys.getswitchinterval() == pytest.approx(0.003)


async def test_a_node_sets_it_while_running(tmp_path: Path, python_default: float) -> None:
    config = parse_config_text(NODE, base_dir=tmp_path)
    assert config.node.gil_switch_interval == DEFAULT_SWITCH_INTERVAL
    node = Node(config)
    await node.start()
    try:
        assert sys.getswitchinterval() == pytest.approx(DEFAULT_SWITCH_INTERVAL)
    finally:
        await node.stop()
    assert sys.getswitchinterval() == pytest.approx(python_default)


async def test_null_keeps_pythons_interval(tmp_path: Path, python_default: float) -> None:
    config = parse_config_text(
        NODE.replace("node:\n", "node:\n  gil_switch_interval: null\n"), base_dir=tmp_path
    )
    node = Node(config)
    await node.start()
    try:
        assert sys.getswitchinterval() == pytest.approx(python_default)
    finally:
        await node.stop()


def test_config_accepts_durations(tmp_path: Path) -> None:
    config = parse_config_text("node:\n  gil_switch_interval: 0.5ms\n", base_dir=tmp_path)
    assert config.node.gil_switch_interval == pytest.approx(0.0005)


@pytest.mark.parametrize("value", ["0", "0ms", "2s", "-1"])
def test_config_refuses_out_of_range(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(f"node:\n  gil_switch_interval: {value}\n", base_dir=tmp_path)
    message = str(caught.value)
    assert "node.gil_switch_interval" in message
    assert "at most 1s" in message or "must be >= 0" in message
    assert message.startswith("sampan.yaml:2:")
