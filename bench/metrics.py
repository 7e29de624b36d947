"""Per-observation cost of the metrics quartet vs prometheus_client, against a 30 µs request.

Run: ``.venv/bin/python bench/metrics.py`` (about 10 s). Prints a table and writes
``bench/results/metrics.json``. Every number is the best of several repeats of a loop over
pre-generated log-normal latencies (so observations spread over the buckets as real ones
do); ``ns/op`` includes the Python call the caller pays, and the empty-call row shows how
much of that is the call itself (rows marked [lambda]/[fn] pay it twice).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from sampan.observe.histogram import DEFAULT_LATENCY_BUCKETS
from sampan.observe.metrics import Metrics

REQUEST_PATH_BUDGET_S = 30e-6
RESULTS = Path(__file__).parent / "results" / "metrics.json"


def _time_loop(fn: Callable[[float], object], values: list[float], repeats: int) -> list[float]:
    """Seconds per call for each repeat of ``for v in values: fn(v)``."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for v in values:
            fn(v)
        out.append((time.perf_counter() - start) / len(values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="observations per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rng = random.Random(42)
    # median ~1 ms, long tail: exercises every part of the bucket range
    values = [rng.lognormvariate(-7.0, 1.5) for _ in range(args.n)]

    metrics = Metrics()
    target = metrics.target("route", "orders")
    registry = CollectorRegistry()
    prom_hist = PromHistogram(
        "bench_latency_seconds",
        "latency",
        ["kind", "name"],
        registry=registry,
        buckets=DEFAULT_LATENCY_BUCKETS,
    )
    prom_requests = PromCounter("bench_requests", "requests", ["kind", "name"], registry=registry)
    prom_child = prom_hist.labels("route", "orders")
    prom_req_child = prom_requests.labels("route", "orders")

    def empty_call(v: float) -> None:
        return None

    def prom_quartet(v: float) -> None:
        # what the quartet needs from prometheus_client: histogram + requests counter
        prom_child.observe(v)
        prom_req_child.inc()

    cases: list[tuple[str, str, Callable[[float], object]]] = [
        ("baseline", "empty Python call (loop + call overhead)", empty_call),
        ("sampan", "TargetMetrics.observe(v)  [pre-resolved]", target.observe),
        (
            "sampan",
            "TargetMetrics.observe(v, error=True)  [lambda]",
            lambda v: target.observe(v, error=True),
        ),
        (
            "sampan",
            "Metrics.target(k, n).observe(v)  [lambda]",
            lambda v: metrics.target("route", "orders").observe(v),
        ),
        ("sampan", "TargetMetrics.count()  [lambda]", lambda v: target.count()),
        ("prometheus_client", "Histogram child .observe(v)  [reference]", prom_child.observe),
        (
            "prometheus_client",
            "Histogram.labels(k, n).observe(v)  [lambda]",
            lambda v: prom_hist.labels("route", "orders").observe(v),
        ),
        ("prometheus_client", "Histogram + Counter child (quartet eq.) [fn]", prom_quartet),
    ]

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for impl, name, fn in cases:
        _time_loop(fn, values[:10_000], 1)  # warm-up
        runs = _time_loop(fn, values, args.repeats)
        rows.append(
            {
                "impl": impl,
                "case": name,
                "ns_per_op": min(runs) * 1e9,
                "ns_per_op_median": statistics.median(runs) * 1e9,
                "pct_of_30us_request": min(runs) / REQUEST_PATH_BUDGET_S * 100,
            }
        )

    reference = next(r for r in rows if r["case"].endswith("[reference]"))["ns_per_op"]
    for r in rows:
        r["ratio_vs_prometheus_child"] = r["ns_per_op"] / reference

    # Render cost: not on the request path, but a scrape must stay cheap.
    many = Metrics()
    for i in range(1000):
        t = many.target("route", f"route-{i}")
        for v in values[:50]:
            t.observe(v)
    render_runs = []
    for _ in range(5):
        start = time.perf_counter()
        body = many.render()
        render_runs.append(time.perf_counter() - start)
    render = {"targets": 1000, "ms": min(render_runs) * 1e3, "bytes": len(body)}

    print(f"metrics observe cost (n={args.n}, best of {args.repeats}; budget = 30 µs request)")
    print(f"{'impl':<18} {'case':<46} {'ns/op':>8} {'median':>8} {'% of 30µs':>9} {'vs ref':>7}")
    for r in rows:
        print(
            f"{r['impl']:<18} {r['case']:<46} {r['ns_per_op']:>8.0f} "
            f"{r['ns_per_op_median']:>8.0f} {r['pct_of_30us_request']:>8.2f}% "
            f"{r['ratio_vs_prometheus_child']:>6.2f}x"
        )
    print(
        f"render: {render['targets']} targets -> {render['bytes']} bytes in {render['ms']:.1f} ms"
    )

    result = {
        "benchmark": "metrics",
        "budget_request_path_us": REQUEST_PATH_BUDGET_S * 1e6,
        "observations_per_repeat": args.n,
        "repeats": args.repeats,
        "reference": "prometheus_client Histogram child .observe",
        "results": rows,
        "render": render,
        "env": {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "prometheus_client": getattr(prometheus_client, "__version__", "unknown"),
        },
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
