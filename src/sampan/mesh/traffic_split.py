"""Traffic split between endpoint versions by weight (canary releases).

Per request, ``choose`` draws one version with probability proportional to its weight,
among the configured versions that have at least one endpoint in the given (available)
set — the weights are renormalised over those versions, so a version with no available
endpoint hands its share to the others instead of failing its requests. The balancer then
picks within the chosen version's endpoints.

Endpoints of a version that is not listed, or listed with weight 0, receive no traffic
while a split is configured; when no listed version with weight > 0 has an endpoint,
``choose`` returns an empty sequence (the caller answers 503 as for no available endpoint).
With no split configured, ``choose`` returns the endpoints as given.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sampan.mesh.config import SplitEntry
from sampan.mesh.endpoint import EndpointState


class TrafficSplit:
    __slots__ = ("_random", "_total", "_versions", "_weights", "configured")

    def __init__(self, entries: Sequence[SplitEntry], rng: random.Random | None = None) -> None:
        merged: dict[str, int] = {}
        for entry in entries:  # a version listed twice gets the sum of its weights
            merged[entry.version] = merged.get(entry.version, 0) + entry.weight
        live = {version: weight for version, weight in merged.items() if weight > 0}
        self._versions: tuple[str, ...] = tuple(live)
        self._weights: tuple[int, ...] = tuple(live.values())
        self._total = sum(self._weights)
        self._random = rng if rng is not None else random.Random()
        self.configured = bool(entries)
        """False when no split is configured (``choose`` is then the identity)."""

    @property
    def versions(self) -> dict[str, int]:
        """Versions that may receive traffic, with their weights."""
        return dict(zip(self._versions, self._weights, strict=True))

    def choose(self, endpoints: Sequence[EndpointState]) -> Sequence[EndpointState]:
        """The endpoints of one version drawn by weight (see the module docstring)."""
        if not self.configured:
            return endpoints
        versions = self._versions
        if not versions or not endpoints:
            return ()
        present = {endpoint.version for endpoint in endpoints}
        weights = self._weights
        total = self._total
        if not present.issuperset(versions):
            pairs = [(v, w) for v, w in zip(versions, weights, strict=True) if v in present]
            if not pairs:
                return ()
            versions = tuple(v for v, _ in pairs)
            weights = tuple(w for _, w in pairs)
            total = sum(weights)
        if len(versions) == 1:
            chosen = versions[0]
        else:
            x = self._random.random() * total
            chosen = versions[-1]
            for version, weight in zip(versions, weights, strict=True):
                x -= weight
                if x < 0:
                    chosen = version
                    break
        if len(present) == 1:  # every endpoint is of the chosen version
            return endpoints
        return [endpoint for endpoint in endpoints if endpoint.version == chosen]
