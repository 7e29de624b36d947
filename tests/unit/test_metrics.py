"""The metrics quartet: quantile estimation, counters, gauges and the Prometheus exposition."""

from __future__ import annotations

import logging
import math
import re
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sampan.observe.histogram import DEFAULT_LATENCY_BUCKETS, check_buckets, histogram_quantile
from sampan.observe.metrics import KINDS, Counter, Metrics, TargetMetrics, TargetSnapshot

HOSTILE = 'ord\\ers"\n}{ ,le="x"'

# Line grammar of text format 0.0.4, stricter than prometheus_client's (lenient) parser.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?Inf|NaN|-?[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)"
_LINE = re.compile(
    rf"# HELP {_NAME} (?:[^\\\n]|\\[\\n])*"
    rf"|# TYPE {_NAME} (?:counter|gauge|histogram|summary|untyped)"
    rf"|{_NAME}(?:\{{{_LABEL}(?:,{_LABEL})*\}})? {_VALUE}"
)


def check_lines(text: str) -> None:
    assert text == "" or text.endswith("\n")
    for line in text.split("\n")[:-1]:  # not splitlines(): U+2028 is no line break here
        assert _LINE.fullmatch(line), f"not a valid exposition line: {line!r}"


def parse(metrics: Metrics) -> dict[str, Any]:
    """Render, check each line, and parse with prometheus_client's parser.

    Returns ``{family: samples}`` plus ``{"<family>:type": type}``.
    """
    text = metrics.render().decode("utf-8")
    check_lines(text)
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} emitted twice"
        families[family.name] = family
    return {name: fam.samples for name, fam in families.items()} | {
        f"{name}:type": fam.type for name, fam in families.items()
    }


def sample(samples: list[Sample], metric: str, /, **labels: str) -> float:
    found = [s.value for s in samples if s.name == metric and s.labels == labels]
    assert len(found) == 1, f"{metric}{labels} found {len(found)} times in {samples}"
    return found[0]


# --- quantile estimation -----------------------------------------------------------------


def test_quantile_interpolates_linearly_inside_the_bucket() -> None:
    bounds = [1.0, 2.0, 4.0]
    # 10 in (0,1], 10 in (1,2], 20 in (2,4], 0 in +Inf
    counts = [10, 10, 20, 0]
    assert histogram_quantile(0.25, bounds, counts) == pytest.approx(1.0)
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(2.0)
    # rank 30 of 40: 10 into the (2,4] bucket of 20 -> 2 + 2 * 10/20
    assert histogram_quantile(0.75, bounds, counts) == pytest.approx(3.0)
    # first bucket starts at 0: rank 4 of 10 in (0,1]
    assert histogram_quantile(0.1, bounds, counts) == pytest.approx(0.4)
    assert histogram_quantile(1.0, bounds, counts) == pytest.approx(4.0)


def test_quantile_in_the_overflow_bucket_returns_the_largest_finite_bound() -> None:
    assert histogram_quantile(0.99, [1.0, 2.0], [1, 0, 99]) == 2.0


def test_quantile_skips_empty_buckets_and_handles_no_data() -> None:
    assert histogram_quantile(0.5, [1.0, 2.0, 3.0], [0, 0, 4, 0]) == pytest.approx(2.5)
    assert histogram_quantile(0.5, [1.0], [0, 0]) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, [1.0], [1, 0])
    with pytest.raises(ValueError):
        histogram_quantile(0.5, [1.0], [1])


def _observe_all(values: list[float], buckets: list[float]) -> TargetSnapshot:
    metrics = Metrics(latency_buckets=buckets)
    target = metrics.target("route", "dist")
    for v in values:
        target.observe(v)
    return target.snapshot()


def test_quantiles_of_a_uniform_distribution() -> None:
    n = 10_000
    values = [(i + 0.5) / n for i in range(n)]  # uniform on (0, 1)
    snap = _observe_all(values, [i / 10 for i in range(1, 11)])
    # uniform within each bucket -> linear interpolation is exact up to discretisation
    assert snap.p50 == pytest.approx(0.50, abs=1e-3)
    assert snap.p95 == pytest.approx(0.95, abs=1e-3)
    assert snap.p99 == pytest.approx(0.99, abs=1e-3)


def test_quantiles_of_an_exponential_distribution_within_one_bucket_width() -> None:
    n, mean = 20_000, 0.010  # 10 ms mean latency
    values = [-mean * math.log(1 - (i + 0.5) / n) for i in range(n)]
    buckets = [0.0001 * 1.1**k for k in range(80)]  # geometric, 10 % wide
    snap = _observe_all(values, buckets)
    for q, got in ((0.5, snap.p50), (0.95, snap.p95), (0.99, snap.p99)):
        true = -mean * math.log(1 - q)
        assert got is not None
        assert got == pytest.approx(true, rel=0.10), q


def test_quantiles_of_a_normal_distribution() -> None:
    n = 20_000
    dist = NormalDist(mu=0.2, sigma=0.03)
    values = [dist.inv_cdf((i + 0.5) / n) for i in range(n)]
    buckets = [0.005 * k for k in range(1, 101)]  # 5 ms linear buckets to 0.5 s
    snap = _observe_all(values, buckets)
    for q, got in ((0.5, snap.p50), (0.95, snap.p95), (0.99, snap.p99)):
        assert got == pytest.approx(dist.inv_cdf(q), abs=0.005), q


def test_default_buckets_bracket_the_data_plane_and_the_slow_models() -> None:
    assert DEFAULT_LATENCY_BUCKETS[0] == pytest.approx(50e-6)
    assert DEFAULT_LATENCY_BUCKETS[-1] == pytest.approx(30.0)
    assert 0.2 in DEFAULT_LATENCY_BUCKETS  # the p99 target is a bucket edge


def test_observation_on_a_bound_counts_in_that_bucket() -> None:
    """Prometheus buckets are ``le`` (inclusive upper bound)."""
    metrics = Metrics(latency_buckets=[1.0, 2.0])
    metrics.target("route", "r").observe(1.0)
    samples = parse(metrics)["sampan_latency_seconds"]
    lid = {"kind": "route", "name": "r"}
    assert sample(samples, "sampan_latency_seconds_bucket", **lid, le="1.0") == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=200))
def test_quantiles_are_ordered_and_bounded(values: list[float]) -> None:
    snap = _observe_all(values, list(DEFAULT_LATENCY_BUCKETS))
    assert snap.p50 is not None and snap.p95 is not None and snap.p99 is not None
    assert 0 <= snap.p50 <= snap.p95 <= snap.p99 <= DEFAULT_LATENCY_BUCKETS[-1]
    assert snap.count == len(values)


def test_bucket_validation() -> None:
    assert check_buckets([1, 2, math.inf]) == (1.0, 2.0)
    for bad in ([], [math.inf], [2.0, 1.0], [1.0, 1.0], [math.nan], [1.0, -math.inf]):
        with pytest.raises(ValueError):
            Metrics(latency_buckets=bad)


# --- the quartet ---------------------------------------------------------------------------


def test_snapshot_of_an_unused_target_has_no_percentiles() -> None:
    snap = Metrics().target("model", "m").snapshot()
    assert snap == TargetSnapshot(
        kind="model",
        name="m",
        count=0,
        errors=0,
        error_rate=0.0,
        p50=None,
        p95=None,
        p99=None,
        cost_total=0.0,
        cost_per_transaction=None,
    )


def test_observe_count_and_cost_make_up_the_quartet() -> None:
    target = Metrics().target("route", "orders")
    for _ in range(8):
        target.observe(0.001)
    target.observe(0.001, error=True)
    target.observe(0.001, error=True)
    target.count(10, errors=1)  # e.g. a batch published without a per-message latency
    target.cost(300.0)
    target.cost(100)
    snap = target.snapshot()
    assert snap.count == 20
    assert snap.errors == 3
    assert snap.error_rate == pytest.approx(3 / 20)
    assert snap.cost_total == pytest.approx(400.0)
    assert snap.cost_per_transaction == pytest.approx(20.0)
    assert snap.p50 is not None and 0.0005 < snap.p50 <= 0.001
    assert target.requests == 20


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100, allow_nan=False),
            st.integers(0, 50),
            st.integers(0, 50),
        ),
        max_size=8,
    )
)
def test_observe_many_is_n_observations(batches: list[tuple[float, int, int]]) -> None:
    one_by_one = Metrics().target("flow", "a")
    together = Metrics().target("flow", "b")
    for seconds, n, wanted_errors in batches:
        errors = min(wanted_errors, n)
        for i in range(n):
            one_by_one.observe(seconds, error=i < errors)
        together.observe_many(seconds, n, errors=errors)
    a, b = one_by_one.snapshot(), together.snapshot()
    assert (a.count, a.errors, a.p50, a.p95, a.p99) == (b.count, b.errors, b.p50, b.p95, b.p99)
    assert one_by_one._buckets == together._buckets
    assert one_by_one._sum == pytest.approx(together._sum)


def test_count_only_target_has_throughput_but_no_latency() -> None:
    target = Metrics().target("topic", "t")
    target.count()
    target.count(4)
    snap = target.snapshot()
    assert (snap.count, snap.errors, snap.p99) == (5, 0, None)


@pytest.mark.parametrize(("n", "errors"), [(-1, 0), (1, -1), (2, 3)])
def test_count_rejects_impossible_numbers(n: int, errors: int) -> None:
    with pytest.raises(ValueError):
        Metrics().target("topic", "t").count(n, errors=errors)


@pytest.mark.parametrize("amount", [-1.0, math.nan])
def test_cost_and_counters_only_go_up(amount: float) -> None:
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.target("flow", "f").cost(amount)
    with pytest.raises(ValueError):
        metrics.counter("sampan_x", "x").inc(amount)


def test_target_is_cached_per_kind_and_name() -> None:
    metrics = Metrics()
    a = metrics.target("route", "a")
    assert metrics.target("route", "a") is a
    assert metrics.target("flow", "a") is not a
    assert metrics.target("route", "b") is not a
    assert isinstance(a, TargetMetrics)
    for kind in KINDS:
        assert metrics.target(kind, "x").kind == kind


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown metrics kind 'router'"):
        Metrics().target("router", "a")


def test_metrics_instances_share_nothing() -> None:
    a, b = Metrics(), Metrics()
    a.target("route", "r").observe(0.1)
    a.counter("sampan_c", "c").inc()
    assert b.snapshots() == []
    assert b.counter("sampan_c", "c").value == 0


def test_snapshots_are_sorted() -> None:
    metrics = Metrics()
    metrics.target("route", "b")
    metrics.target("model", "z")
    metrics.target("route", "a")
    assert [(s.kind, s.name) for s in metrics.snapshots()] == [
        ("model", "z"),
        ("route", "a"),
        ("route", "b"),
    ]


# --- counters and gauges ---------------------------------------------------------------------


def test_counter_is_cached_per_name_and_labels() -> None:
    metrics = Metrics()
    c = metrics.counter("sampan_bus_dead_lettered", "Messages dead-lettered.", topic="o", group="g")
    assert metrics.counter("sampan_bus_dead_lettered", "ignored", group="g", topic="o") is c
    other = metrics.counter("sampan_bus_dead_lettered", "x", topic="o", group="h")
    assert other is not c
    assert isinstance(c, Counter)
    c.inc()
    c.inc(2)
    assert c.value == 3
    assert other.value == 0


def test_counter_names_end_in_total_once() -> None:
    metrics = Metrics()
    metrics.counter("sampan_a_total", "a").inc()
    metrics.counter("sampan_b", "b").inc(2.5)
    parsed = parse(metrics)
    assert parsed["sampan_a:type"] == "counter"
    assert sample(parsed["sampan_a"], "sampan_a_total") == 1
    assert sample(parsed["sampan_b"], "sampan_b_total") == 2.5
    assert metrics.counter("sampan_a", "a").value == 1  # same family with or without _total


def test_gauge_is_sampled_at_render_time() -> None:
    metrics = Metrics()
    lag = {"value": 3.0}
    metrics.gauge("sampan_bus_consumer_lag", "Unacked messages.", lambda: lag["value"], group="g")
    assert (
        sample(parse(metrics)["sampan_bus_consumer_lag"], "sampan_bus_consumer_lag", group="g") == 3
    )
    lag["value"] = 7.0
    parsed = parse(metrics)
    assert parsed["sampan_bus_consumer_lag:type"] == "gauge"
    assert sample(parsed["sampan_bus_consumer_lag"], "sampan_bus_consumer_lag", group="g") == 7
    metrics.gauge("sampan_bus_consumer_lag", "Unacked messages.", lambda: 1, group="g")  # replaces
    assert (
        sample(parse(metrics)["sampan_bus_consumer_lag"], "sampan_bus_consumer_lag", group="g") == 1
    )


def test_failing_gauge_is_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    def broken() -> float:
        raise RuntimeError("db closed")

    metrics.gauge("sampan_g", "g", broken, which="broken")
    metrics.gauge("sampan_g", "g", lambda: 2.0, which="fine")
    with caplog.at_level(logging.ERROR):
        samples = parse(metrics)["sampan_g"]
    assert [s.labels["which"] for s in samples] == ["fine"]
    assert "sampan_g" in caplog.text and "db closed" in caplog.text


def test_special_float_values_render() -> None:
    metrics = Metrics()
    metrics.gauge("sampan_inf", "i", lambda: math.inf)
    metrics.gauge("sampan_nan", "n", lambda: math.nan)
    parsed = parse(metrics)
    assert parsed["sampan_inf"][0].value == math.inf
    assert math.isnan(parsed["sampan_nan"][0].value)


@pytest.mark.parametrize(
    "name",
    [
        "sampan_latency_seconds",
        "sampan_latency_seconds_bucket",
        "sampan_requests_total",
        "sampan_requests",
        "sampan_errors",
        "sampan_cost_total",
        "1bad",
        "has-dash",
    ],
)
def test_reserved_and_invalid_names_are_rejected(name: str) -> None:
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.counter(name, "x")
    with pytest.raises(ValueError):
        metrics.gauge(name, "x", lambda: 0)


def test_families_keep_one_type_and_one_label_set() -> None:
    metrics = Metrics()
    metrics.counter("sampan_c", "c", topic="t")
    with pytest.raises(ValueError, match="already registered as a counter"):
        metrics.gauge("sampan_c", "c", lambda: 0, topic="t")
    with pytest.raises(ValueError, match="collides"):
        metrics.gauge("sampan_c_total", "c", lambda: 0)
    with pytest.raises(ValueError, match="uses labels"):
        metrics.counter("sampan_c", "c", topic="t", group="g")
    with pytest.raises(ValueError, match="invalid label name"):
        metrics.counter("sampan_d", "d", **{"__reserved": "x"})


# --- exposition ------------------------------------------------------------------------------


def test_render_of_an_empty_registry_is_valid() -> None:
    parsed = parse(Metrics())
    assert parsed["sampan_latency_seconds:type"] == "histogram"
    assert parsed["sampan_requests:type"] == "counter"
    assert parsed["sampan_latency_seconds"] == []


def test_render_is_valid_prometheus_text_with_the_quartet() -> None:
    metrics = Metrics(latency_buckets=[0.001, 0.01, 0.1], currency="VND")
    route = metrics.target("route", "orders")
    route.observe(0.0005)
    route.observe(0.005, error=True)
    route.observe(5.0)  # overflow bucket
    route.count(2, errors=1)
    route.cost(1500.0)
    metrics.target("model", "sentiment").observe(0.05)
    metrics.counter("sampan_bus_dead_lettered", "Dead-lettered.", topic="orders", group="g").inc(4)

    text = metrics.render().decode()
    assert text.endswith("\n")
    assert "# HELP sampan_latency_seconds " in text
    assert "# TYPE sampan_requests_total counter" in text
    parsed = parse(metrics)
    assert parsed["sampan_latency_seconds:type"] == "histogram"
    for fam in ("sampan_requests", "sampan_errors", "sampan_cost", "sampan_bus_dead_lettered"):
        assert parsed[f"{fam}:type"] == "counter"

    lid = {"kind": "route", "name": "orders"}
    hist = parsed["sampan_latency_seconds"]
    le_values = [
        (s.labels["le"], s.value)
        for s in hist
        if s.name == "sampan_latency_seconds_bucket" and s.labels["name"] == "orders"
    ]
    assert le_values == [("0.001", 1), ("0.01", 2), ("0.1", 2), ("+Inf", 3)]  # cumulative
    assert sample(hist, "sampan_latency_seconds_count", **lid) == 3
    assert sample(hist, "sampan_latency_seconds_sum", **lid) == pytest.approx(5.0055)
    assert sample(parsed["sampan_requests"], "sampan_requests_total", **lid) == 5
    assert sample(parsed["sampan_errors"], "sampan_errors_total", **lid) == 2
    assert sample(parsed["sampan_cost"], "sampan_cost_total", **lid, currency="VND") == 1500
    assert (
        sample(
            parsed["sampan_bus_dead_lettered"],
            "sampan_bus_dead_lettered_total",
            topic="orders",
            group="g",
        )
        == 4
    )
    model = {"kind": "model", "name": "sentiment"}
    assert sample(parsed["sampan_requests"], "sampan_requests_total", **model) == 1


def test_hostile_label_values_are_escaped() -> None:
    metrics = Metrics(currency='V"N\\D')
    metrics.target("route", HOSTILE).observe(0.01, error=True)
    metrics.counter("sampan_c", "help with \\ and\nnewline", topic=HOSTILE).inc()
    metrics.gauge("sampan_g", "g", lambda: 1.0, topic=HOSTILE)

    text = metrics.render().decode()
    assert "\n}{" not in text  # the raw newline never reaches the output
    assert r"ord\\ers\"\n}{ ,le=\"x\"" in text
    assert "# HELP sampan_c_total help with \\\\ and\\nnewline\n" in text

    parsed = parse(metrics)
    lid = {"kind": "route", "name": HOSTILE}
    assert sample(parsed["sampan_errors"], "sampan_errors_total", **lid) == 1
    assert sample(parsed["sampan_cost"], "sampan_cost_total", **lid, currency='V"N\\D') == 0
    buckets = [s for s in parsed["sampan_latency_seconds"] if s.name.endswith("_bucket")]
    assert {s.labels["name"] for s in buckets} == {HOSTILE}
    assert len(buckets) == len(DEFAULT_LATENCY_BUCKETS) + 1
    assert sample(parsed["sampan_c"], "sampan_c_total", topic=HOSTILE) == 1
    assert sample(parsed["sampan_g"], "sampan_g", topic=HOSTILE) == 1


def test_render_is_utf8() -> None:
    metrics = Metrics()
    metrics.target("route", "đơn-hàng\u2028\r\t").observe(0.001)
    parsed = parse(metrics)
    lid = {"kind": "route", "name": "đơn-hàng\u2028\r\t"}
    assert sample(parsed["sampan_requests"], "sampan_requests_total", **lid) == 1
