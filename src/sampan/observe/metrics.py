"""The metrics quartet (latency, errors, throughput, cost) for every route, topic, flow, model.

Every layer records into one :class:`Metrics` owned by the node (no module-level registry),
and the admin server exposes it as Prometheus text format 0.0.4 at ``/metrics``.

The instruments are our own rather than ``prometheus_client``'s because ``observe()`` sits on
a ~30 µs request path: a pre-resolved :class:`TargetMetrics` does one ``bisect`` and three
plain attribute updates (~0.1-0.2 µs), where ``prometheus_client``'s ``Histogram`` child
takes a lock per observation (~0.6 µs, more with ``.labels()``) — see ``docs/metrics.md`` and
``bench/metrics.py``. The exposition format is written here and checked in the tests with
``prometheus_client``'s own parser.

Thread safety: none, on purpose. The node is single-threaded asyncio; even the SQLite bus
hands results back with ``call_soon_threadsafe``, so every ``observe``/``count``/``cost``/
``inc`` and every ``render`` runs on the event-loop thread. Recording from another thread
can lose increments (``+=`` is not atomic) — hop to the loop first.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sampan.observe.histogram import DEFAULT_LATENCY_BUCKETS, check_buckets, histogram_quantile

__all__ = [
    "KINDS",
    "Counter",
    "Metrics",
    "TargetMetrics",
    "TargetSnapshot",
]

log = logging.getLogger(__name__)

KINDS = ("route", "topic", "flow", "model", "upstream", "group")

LATENCY = "sampan_latency_seconds"
REQUESTS = "sampan_requests"
ERRORS = "sampan_errors"
COST = "sampan_cost"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def escape_label_value(value: str) -> str:
    """Escape a label value per text format 0.0.4: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    """HELP lines escape only backslash and newline."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float) -> str:
    """Format a sample value the way Prometheus parses it (``+Inf``, ``-Inf``, ``NaN``)."""
    if isinstance(value, int):
        return str(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)


def _check_non_negative(what: str, amount: float) -> None:
    if not amount >= 0:  # also rejects NaN
        raise ValueError(f"{what} must be >= 0 (counters only go up), got {amount!r}")


@dataclass(frozen=True)
class TargetSnapshot:
    """The quartet for one target at one instant, in the units the SLOs are written in.

    ``count`` is units of work (``observe`` + ``count``); percentiles are estimated from the
    latency buckets (``None`` without latency observations); ``error_rate`` is
    ``errors / count`` (0.0 when ``count == 0``, so SLO arithmetic never sees ``None``).
    """

    kind: str
    name: str
    count: int
    errors: int
    error_rate: float
    p50: float | None
    p95: float | None
    p99: float | None
    cost_total: float
    cost_per_transaction: float | None


class TargetMetrics:
    """The quartet for one ``(kind, name)``; resolve it once, then record without lookups.

    Not thread-safe: record on the event-loop thread (see the module docstring).
    """

    __slots__ = ("_bounds", "_buckets", "_cost", "_counted", "_errors", "_sum", "kind", "name")

    def __init__(self, kind: str, name: str, bounds: tuple[float, ...]) -> None:
        self.kind = kind
        self.name = name
        self._bounds = bounds
        # Per-bucket counts, not cumulative (one increment per observation); the last slot is
        # the +Inf bucket. Their sum is the histogram count, so it is not stored twice.
        self._buckets = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._counted = 0  # units of work recorded without a latency (count())
        self._errors = 0
        self._cost = 0.0

    def observe(self, seconds: float, *, error: bool = False) -> None:
        """One unit of work done in ``seconds``: latency + throughput (+ an error)."""
        self._buckets[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        if error:
            self._errors += 1

    def observe_many(self, seconds: float, n: int, *, errors: int = 0) -> None:
        """``n`` units of work that each took ``seconds`` (a batch handled together), of
        which ``errors`` failed: the same as ``n`` calls of `observe`, in one."""
        if n <= 0:
            return
        self._buckets[bisect_left(self._bounds, seconds)] += n
        self._sum += seconds * n
        self._errors += errors

    @property
    def bounds(self) -> tuple[float, ...]:
        """The latency buckets' upper bounds (seconds); one more bucket counts the rest."""
        return self._bounds

    def merge(self, buckets: list[int], seconds: float, errors: int) -> None:
        """Add observations counted elsewhere with the same ``bounds`` (the gateway's compiled
        front counts per bucket): ``buckets[i]`` observations in bucket ``i``, their total
        latency ``seconds``, ``errors`` of them failed."""
        if len(buckets) != len(self._buckets):
            raise ValueError(f"need {len(self._buckets)} bucket counts, got {len(buckets)}")
        mine = self._buckets
        for i, n in enumerate(buckets):
            mine[i] += n
        self._sum += seconds
        self._errors += errors

    def count(self, n: int = 1, *, errors: int = 0) -> None:
        """``n`` units of work without a latency (e.g. a published batch); ``errors`` failed."""
        if n < 0 or errors < 0 or errors > n:
            raise ValueError(f"need 0 <= errors <= n, got n={n!r}, errors={errors!r}")
        self._counted += n
        self._errors += errors

    def cost(self, amount: float) -> None:
        """Add ``amount`` (in the node's currency unit) to this target's cost."""
        _check_non_negative("cost", amount)
        self._cost += amount

    @property
    def requests(self) -> int:
        """Units of work so far (latency observations + ``count``)."""
        return sum(self._buckets) + self._counted

    def snapshot(self) -> TargetSnapshot:
        """Derive the quartet now (O(buckets); meant for the admin API, not the hot path)."""
        buckets = list(self._buckets)
        count = sum(buckets) + self._counted
        errors = self._errors
        bounds = self._bounds
        return TargetSnapshot(
            kind=self.kind,
            name=self.name,
            count=count,
            errors=errors,
            error_rate=errors / count if count else 0.0,
            p50=histogram_quantile(0.50, bounds, buckets),
            p95=histogram_quantile(0.95, bounds, buckets),
            p99=histogram_quantile(0.99, bounds, buckets),
            cost_total=self._cost,
            cost_per_transaction=self._cost / count if count else None,
        )

    def __repr__(self) -> str:
        return f"TargetMetrics(kind={self.kind!r}, name={self.name!r})"


class Counter:
    """A monotonically increasing value (exposed as ``<name>_total``). Not thread-safe."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: float = 0

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (>= 0)."""
        _check_non_negative("counter increment", n)
        self._value += n

    @property
    def value(self) -> float:
        return self._value


@dataclass
class _Family:
    """One named metric family: its type, help, label names and its series."""

    type: str  # "counter" | "gauge"
    help: str
    label_names: tuple[str, ...]
    # label pairs -> Counter (counters) or sampling function (gauges)
    series: dict[tuple[tuple[str, str], ...], Counter | Callable[[], float]]


# Every sample name the quartet emits; named counters and gauges may not reuse them.
_RESERVED = frozenset(
    {LATENCY, f"{LATENCY}_bucket", f"{LATENCY}_sum", f"{LATENCY}_count"}
    | {n for base in (REQUESTS, ERRORS, COST) for n in (base, f"{base}_total")}
)


def _sample_names(name: str, type_: str) -> set[str]:
    """Names a family emits (and the family name itself), for collision checks."""
    return {name, f"{name}_total"} if type_ == "counter" else {name}


class Metrics:
    """All metrics of one node: the per-target quartet plus named counters and gauges.

    ``target()``/``counter()`` return the same object for the same key, so callers resolve
    their instruments once at setup and keep the reference on the hot path.
    """

    def __init__(
        self,
        *,
        latency_buckets: Sequence[float] | None = None,
        currency: str = "VND",
    ) -> None:
        self._bounds = check_buckets(
            DEFAULT_LATENCY_BUCKETS if latency_buckets is None else latency_buckets
        )
        self.currency = currency
        self._targets: dict[tuple[str, str], TargetMetrics] = {}
        self._families: dict[str, _Family] = {}
        # le="..." label text per bucket, formatted once
        self._le = [_fmt(b) for b in self._bounds] + ["+Inf"]

    @property
    def latency_buckets(self) -> tuple[float, ...]:
        return self._bounds

    def target(self, kind: str, name: str) -> TargetMetrics:
        """The quartet for ``(kind, name)``; created on first use. Unknown kind -> ValueError."""
        key = (kind, name)
        found = self._targets.get(key)
        if found is not None:
            return found
        if kind not in KINDS:
            raise ValueError(f"unknown metrics kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(name, str):
            raise TypeError(f"target name must be a str, got {type(name).__name__}")
        created = TargetMetrics(kind, name, self._bounds)
        self._targets[key] = created
        return created

    def counter(self, name: str, help: str, **labels: str) -> Counter:
        """A named counter (exposed as ``<name>_total``); same object for same name+labels.

        A trailing ``_total`` in ``name`` is accepted and not doubled. Every series of a
        family must use the same label names.
        """
        base = name.removesuffix("_total")
        family = self._family(base, "counter", help, labels)
        key = tuple(sorted(labels.items()))
        found = family.series.get(key)
        if isinstance(found, Counter):
            return found
        created = Counter()
        family.series[key] = created
        return created

    def gauge(self, name: str, help: str, fn: Callable[[], float], **labels: str) -> None:
        """Register a gauge sampled by calling ``fn`` at render time (e.g. consumer lag).

        Registering the same name+labels again replaces the function (the newest owner wins).
        ``fn`` runs on the event-loop thread and must be cheap; if it raises, the sample is
        left out of that render and the error is logged.
        """
        family = self._family(name, "gauge", help, labels)
        family.series[tuple(sorted(labels.items()))] = fn

    def _family(self, name: str, type_: str, help: str, labels: dict[str, str]) -> _Family:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if _sample_names(name, type_) & _RESERVED:
            raise ValueError(f"metric name {name!r} is reserved for the per-target quartet")
        for label, value in labels.items():
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
            if not isinstance(value, str):
                raise TypeError(f"label {label!r} of metric {name!r} must be a str")
        label_names = tuple(sorted(labels))
        family = self._families.get(name)
        if family is None:
            mine = _sample_names(name, type_)
            for other, fam in self._families.items():
                # e.g. a gauge "x_total" and a counter "x" would emit the same sample name
                if _sample_names(other, fam.type) & mine:
                    raise ValueError(f"metric name {name!r} collides with {fam.type} {other!r}")
            family = _Family(type_, help, label_names, {})
            self._families[name] = family
            return family
        if family.type != type_:
            raise ValueError(f"metric {name!r} is already registered as a {family.type}")
        if family.label_names != label_names:
            raise ValueError(
                f"metric {name!r} uses labels {list(family.label_names)}, got {list(label_names)}"
            )
        return family

    def snapshots(self) -> list[TargetSnapshot]:
        """Snapshots of every target, ordered by (kind, name)."""
        return [self._targets[key].snapshot() for key in sorted(self._targets)]

    def render(self) -> bytes:
        """Everything in Prometheus text exposition format 0.0.4 (UTF-8).

        Call it on the event-loop thread (the admin endpoint is ``async`` for that reason).
        """
        targets = [self._targets[key] for key in sorted(self._targets)]
        ids = [_labels((("kind", t.kind), ("name", t.name))) for t in targets]
        out: list[str] = []

        out.append(f"# HELP {LATENCY} Latency of one unit of work per target, in seconds.\n")
        out.append(f"# TYPE {LATENCY} histogram\n")
        le = self._le
        for t, lid in zip(targets, ids, strict=True):
            buckets = list(t._buckets)
            cumulative = 0
            for bound, n in zip(le, buckets, strict=True):
                cumulative += n
                out.append(f'{LATENCY}_bucket{{{lid},le="{bound}"}} {cumulative}\n')
            out.append(f"{LATENCY}_sum{{{lid}}} {_fmt(t._sum)}\n")
            out.append(f"{LATENCY}_count{{{lid}}} {cumulative}\n")

        out.append(f"# HELP {REQUESTS}_total Units of work done per target (requests, messages).\n")
        out.append(f"# TYPE {REQUESTS}_total counter\n")
        out.extend(
            f"{REQUESTS}_total{{{lid}}} {t.requests}\n" for t, lid in zip(targets, ids, strict=True)
        )

        out.append(f"# HELP {ERRORS}_total Units of work that failed per target.\n")
        out.append(f"# TYPE {ERRORS}_total counter\n")
        out.extend(
            f"{ERRORS}_total{{{lid}}} {t._errors}\n" for t, lid in zip(targets, ids, strict=True)
        )

        currency = escape_label_value(self.currency)
        out.append(f"# HELP {COST}_total Cost attributed per target, in the currency label.\n")
        out.append(f"# TYPE {COST}_total counter\n")
        out.extend(
            f'{COST}_total{{{lid},currency="{currency}"}} {_fmt(t._cost)}\n'
            for t, lid in zip(targets, ids, strict=True)
        )

        for name, family in self._families.items():
            exposed = f"{name}_total" if family.type == "counter" else name
            out.append(f"# HELP {exposed} {_escape_help(family.help)}\n")
            out.append(f"# TYPE {exposed} {family.type}\n")
            for pairs, instrument in family.series.items():
                if isinstance(instrument, Counter):
                    value: float = instrument.value
                else:
                    try:
                        value = float(instrument())
                    except Exception:
                        log.exception("gauge %s%s failed; sample left out", name, dict(pairs))
                        continue
                series = f"{{{_labels(pairs)}}}" if pairs else ""
                out.append(f"{exposed}{series} {_fmt(value)}\n")
        return "".join(out).encode()
