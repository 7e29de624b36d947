"""Helpers to drive sampan as a user would: the installed ``sampan`` command in subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SAMPAN = str(Path(sys.executable).with_name("sampan"))
REPO = Path(__file__).resolve().parents[2]


def run_sampan(
    *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAMPAN, *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
    )


class RunningNode:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never appeared; output:\n{self.output()}")

    @property
    def admin_url(self) -> str:
        return self.wait_for(r"admin (http://127\.0\.0\.1:\d+)").group(1)


@pytest.fixture
def start_sampan(tmp_path: Path) -> Iterator[object]:
    """Start any long-running ``sampan`` command; killed at the end of the test."""
    started: list[RunningNode] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunningNode:
        log = tmp_path / f"sampan-{len(started)}.log"
        handle = log.open("w")
        process = subprocess.Popen(
            [SAMPAN, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        node = RunningNode(process, log)
        started.append(node)
        return node

    yield start
    for node in started:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait()


@pytest.fixture
def start_node(start_sampan: Any) -> object:
    def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> RunningNode:
        return start_sampan("up", str(config), "--admin-port", "0", *extra, env=env)  # type: ignore[no-any-return]

    return start
