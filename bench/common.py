"""Helpers shared by the benchmarks in ``bench/``: percentiles, tables, JSON results, machine info.

Every benchmark prints a table and writes its numbers to ``bench/results/<name>.json`` with the
parameters and the machine it ran on, so a result can be compared with another run later.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_DIR_ENV = "SAMPAN_BENCH_RESULTS"
"""Where results go instead of ``bench/results`` (the test suite's smoke runs set it)."""


# -- statistics -----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of an already sorted sequence; NaN if empty."""
    if not sorted_values:
        return math.nan
    if p <= 0:
        return float(sorted_values[0])
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(
    samples_ns: Iterable[int], percentiles: Sequence[float] = (50, 90, 99, 99.9)
) -> dict[str, float]:
    """Latency samples in nanoseconds → ``{"count", "p50_ms", ..., "max_ms", "mean_ms"}``."""
    values = sorted(samples_ns)
    summary: dict[str, float] = {"count": len(values)}
    for p in percentiles:
        label = f"p{p:g}".replace(".", "_")
        summary[f"{label}_ms"] = percentile(values, p) / 1e6
    summary["max_ms"] = values[-1] / 1e6 if values else math.nan
    summary["mean_ms"] = sum(values) / len(values) / 1e6 if values else math.nan
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


# -- formatting -----------------------------------------------------------------------------------


def fmt_rate(value: float | None) -> str:
    """Messages (or requests) per second, with a thousands separator."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.0f}/s"


def fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if value < 10:
        return f"{value:.2f} ms"
    return f"{value:,.1f} ms"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A plain aligned table for the terminal (the first ``left`` columns left-aligned, the
    others right-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i < left else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub-flavoured markdown table (the first ``left`` columns left-aligned, the others
    right-aligned)."""
    align = [":---" if i < left else "---:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)
    return "\n".join(out)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "N/A"
    return "PASS" if ok else "FAIL"


# -- results --------------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _scrub(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (pretty, keys in insertion order) and return its path."""
    directory = Path(os.environ.get(RESULTS_DIR_ENV) or RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_bytes(
        orjson.dumps(_scrub(data), option=orjson.OPT_INDENT_2, default=_json_default) + b"\n"
    )
    return path


def utc_timestamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- machine --------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        for raw in Path("/proc/cpuinfo").read_text().splitlines():
            if raw.startswith("model name"):
                return raw.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for raw in Path("/proc/meminfo").read_text().splitlines():
            if raw.startswith("MemTotal:"):
                return round(int(raw.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """What the numbers depend on: CPUs, Python, SQLite, OS, load, and package versions."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": _load_average(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "os": f"{platform.system()} {platform.release()}",
        "packages": {name: package_version(name) for name in packages},
    }
