"""Every flow test file shipped under ``examples/`` passes, run as a user runs it.

The examples are documentation people copy; their ``*.test.yaml`` files state what the flows
do. Running them here keeps the two from drifting apart: a change to a flow, a step or the
test runner that breaks an example's promise fails the suite, not a reader's first try.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_sampan  # type: ignore[import-not-found]

TEST_FILES = sorted((REPO / "examples").rglob("*.test.yaml"))


def test_the_examples_ship_flow_tests() -> None:
    assert TEST_FILES, "no examples/**/*.test.yaml found"


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_flow_tests_pass(path: Path) -> None:
    result = run_sampan("flow", "test", str(path), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"^(\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert summary is not None, result.stdout
    assert int(summary.group(1)) > 0, result.stdout
    assert int(summary.group(2)) == 0, result.stdout
