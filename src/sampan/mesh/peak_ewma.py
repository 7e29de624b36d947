"""Peak-EWMA latency estimate of one endpoint (the ``p2c-peak-ewma`` balancer's load metric).

The estimate lives on ``EndpointState.ewma`` / ``ewma_at`` so every policy sees the same
number. It is *peak-sensitive*: a response slower than the estimate replaces it at once,
while faster responses pull it down only gradually, weighted by how much time has passed
(``decay`` seconds is the time constant). Reading the cost decays the estimate towards zero
by the time since the last observation, so an endpoint that stopped getting traffic because
it was slow is eventually tried again, and a recovered endpoint wins its traffic back.
"""

from __future__ import annotations

from math import exp

from sampan.mesh.endpoint import EndpointState


def observe(state: EndpointState, rtt: float, now: float, decay: float) -> None:
    """Fold one measured round-trip time (seconds) into ``state``'s estimate.

    A peak (``rtt`` above the current estimate, or the first measurement) replaces it;
    otherwise ``ewma = ewma * w + rtt * (1 - w)`` with ``w = exp(-(now - ewma_at) / decay)``.
    """
    rtt = max(rtt, 0.0)
    current = state.ewma
    if rtt > current:
        state.ewma = rtt
    else:
        elapsed = now - state.ewma_at
        if elapsed > 0.0:
            w = exp(-elapsed / decay)
            state.ewma = current * w + rtt * (1.0 - w)
    state.ewma_at = max(state.ewma_at, now)


def decayed(state: EndpointState, now: float, decay: float, default_rtt: float) -> float:
    """The latency estimate as of ``now``: the stored one decayed towards zero by the time
    since it was last updated, or ``default_rtt`` while the endpoint is unmeasured."""
    ewma = state.ewma
    if ewma <= 0.0:
        return default_rtt
    elapsed = now - state.ewma_at
    if elapsed > 0.0:
        ewma *= exp(-elapsed / decay)
    return ewma


def cost(state: EndpointState, now: float, decay: float, default_rtt: float) -> float:
    """Expected cost of sending one more request: latency estimate x (in_flight + 1) / weight.

    Lower is better. Non-decreasing in ``in_flight``; inversely proportional to ``weight``
    (weights are >= 1, as the config guarantees)."""
    ewma = state.ewma
    if ewma <= 0.0:
        ewma = default_rtt
    else:
        elapsed = now - state.ewma_at
        if elapsed > 0.0:
            ewma *= exp(-elapsed / decay)
    return ewma * (state.in_flight + 1) / state.weight
