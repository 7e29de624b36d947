"""The benchmarks still start and finish: each runs as the README says, on a tiny workload.

Not a measurement (numbers come from full runs, see docs/benchmarks.md): a benchmark that
fails at start — an import of something renamed, an option that no longer parses — is
caught here instead of by the next person who wants numbers. Results go to a temporary
directory, never over ``bench/results``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO  # type: ignore[import-not-found]

BENCH = REPO / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")


def run_bench(script: str, *args: str, results: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env={**os.environ, "SAMPAN_BENCH_RESULTS": str(results)},
    )
    command = " ".join((script, *args))
    assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_parses_its_options(script: str, tmp_path: Path) -> None:
    assert "usage:" in run_bench(script, "--help", results=tmp_path, timeout=60)


@pytest.mark.parametrize(
    ("script", "args", "result"),
    [
        ("bus_catchup.py", ["--quick"], "bus_catchup"),
        ("bus_busy_loop.py", ["--quick", "--publishes", "100"], "bus_busy_loop"),
        ("bus.py", ["--quick", "--only", "sqlite", "--no-normal", "--latency-seconds", "1"], "bus"),
        ("flows.py", ["--quick", "--only", "sqlite"], "flows"),
    ],
)
def test_bus_and_flow_benchmarks_run_end_to_end(
    script: str, args: list[str], result: str, tmp_path: Path
) -> None:
    out = run_bench(script, *args, results=tmp_path)
    assert "README table" in out
    written = json.loads((tmp_path / f"{result}.json").read_text())
    assert written["systems"], written
