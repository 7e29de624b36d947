"""Fixed-bucket histogram math: bucket validation and Prometheus-style quantile estimation.

Kept apart from the instruments so the estimation can be tested against known
distributions on its own, and so the CLI/dashboard compute p50/p95/p99 exactly the way
``histogram_quantile()`` in PromQL would from the same ``/metrics`` output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

# 1-2-5 series from 50 µs to 30 s: the data plane answers in tens of µs, model calls take
# seconds. 0.2 s is a bound on purpose — it is the p99 target in the design, so
# "p99 < 200 ms" is read off a bucket edge rather than interpolated.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)


def check_buckets(bounds: Sequence[float]) -> tuple[float, ...]:
    """Validate upper bounds (finite, strictly increasing) and return them as floats.

    A trailing ``+Inf`` is accepted and dropped: the overflow bucket always exists.
    """
    out = [float(b) for b in bounds]
    if out and out[-1] == math.inf:
        out.pop()
    if not out:
        raise ValueError("latency_buckets needs at least one finite upper bound")
    for b in out:
        if not math.isfinite(b):
            raise ValueError(f"latency bucket bound {b!r} is not finite")
    for lo, hi in itertools.pairwise(out):
        if not lo < hi:
            raise ValueError(f"latency_buckets must be strictly increasing ({lo!r} then {hi!r})")
    return tuple(out)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Estimate the ``q`` quantile like PromQL's ``histogram_quantile``.

    ``bounds`` are the finite upper bounds; ``counts`` are the per-bucket (not cumulative)
    counts, one longer than ``bounds`` (the last one is the ``+Inf`` bucket). The value is
    interpolated linearly inside the bucket holding the rank; the first bucket starts at 0
    (unless its bound is <= 0); a rank in the ``+Inf`` bucket returns the largest finite
    bound, as Prometheus does. ``None`` when there are no observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q!r}")
    if len(counts) != len(bounds) + 1:
        raise ValueError("counts must have one entry per bound plus the +Inf bucket")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, bound in enumerate(bounds):
        in_bucket = counts[i]
        if below + in_bucket >= rank:
            if i == 0 and bound <= 0:
                return bound
            start = 0.0 if i == 0 else bounds[i - 1]
            if in_bucket == 0:  # only when rank == 0 and the first bucket is empty
                return start
            return start + (bound - start) * (rank - below) / in_bucket
        below += in_bucket
    return bounds[-1]
